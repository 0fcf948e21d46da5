"""The ``influencer`` command line (Typer), one module per concern.

``base``: the app, errors, settings, client; ``stages``: prepare, plan, generate, qc, augment, run;
``video``: video;
``review``: qc calibrate; ``training``: train, sample, evaluate, lora inspect; ``reports``: models, bank,
report, history;
``ops``: init, doctor, blocks, set-key, stack, trigger, hub, gui. Importing this package registers
every command on ``app``.
"""

# Importing registers the commands; the import order is the order of the panels in --help.
from interfaces.cli import stages  # noqa: I001, F401
from interfaces.cli import video  # noqa: F401  (influencer video, in the stages' panel)
from interfaces.cli import review  # noqa: F401  (qc calibrate, on stages' qc group)
from interfaces.cli import training  # noqa: F401
from interfaces.cli import reports  # noqa: F401
from interfaces.cli import ops  # noqa: F401
from interfaces.cli.base import app


def main() -> None:  # pragma: no cover - console entry for python -m interfaces.cli
    app(prog_name="influencer")


__all__ = ["app", "main"]
