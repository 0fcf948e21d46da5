"""What every ``influencer`` command shares: the Typer app, consoles, one-line errors, settings and
the OpenRouter client (key from the Prefect block, else the environment).

Each command is a thin shell over a use case (``ai_influencer.usecases``) or a flow; flag names
keep the manual's spellings (``--per_scene``, ``--prompt_bank``) next to dashed ones. Expected
failures (bad prompt bank, missing key, OpenRouter refusals, an unreachable Prefect server) print
one clear line and exit non-zero instead of a traceback.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import annotated_types as at
import typer
from pydantic import BaseModel
from rich.console import Console

from ai_influencer.dataset.workspace import Workspace
from ai_influencer.options.fields import default_of, help_of
from ai_influencer.settings import MissingApiKeyError, Settings, get_settings
from interfaces.prefect_env import set_by_user

if TYPE_CHECKING:
    from ai_influencer.openrouter import OpenRouterClient

app = typer.Typer(
    name="influencer",
    help="Persona dataset + SDXL LoRA pipeline: prepare -> plan -> generate -> qc -> augment -> train -> evaluate.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)
console = Console(stderr=True, soft_wrap=True)
out = Console(soft_wrap=True)

# Prefect's embedded server gets 20 s to start by default; on a busy 2-core machine the first
# `influencer run` on a fresh PREFECT_HOME missed it twice in a row (measured). Set before Prefect starts.
EPHEMERAL_STARTUP_TIMEOUT_S = "180"

NONCOMMERCIAL = (
    "Face backends: dlib (the default; public-domain models, offline) or, only when chosen by name, insightface "
    "buffalo_l, whose pretrained models are licensed for NON-COMMERCIAL research only."
)
_FIELD_DEFAULT: Any = object()


def option(
    model: type[BaseModel],
    name: str,
    *decls: str,
    bounds: bool = True,
    help: str | None = None,
    default: Any = _FIELD_DEFAULT,
    **extra: Any,
) -> Any:
    """A ``typer.Option`` for an options model's field: its default, bounds and help, written nowhere else.

    ``bounds=False`` leaves the range to a callback that says more than Click would (``--minsim 34``: a percent).
    ``help`` and ``default=None`` are for a flag whose absence means something else than the field's default
    (``qc --minsim``: the persona's calibration); the help then says so.
    """
    limits: dict[str, Any] = {}  # Click checks the inclusive bounds; a strict one (gt/lt) is the model's to check
    for m in model.model_fields[name].metadata if bounds else ():
        if isinstance(m, at.Ge):
            limits["min"] = m.ge
        elif isinstance(m, at.Le):
            limits["max"] = m.le
    value = default_of(model, name) if default is _FIELD_DEFAULT else default
    return typer.Option(value, *decls, help=help or help_of(model, name), **limits, **extra)


BankOpt = Annotated[
    Path | None,
    typer.Option("--prompt-bank", "--prompt_bank", help="Prompt bank YAML (default: settings.prompt_bank)."),
]


# Exit codes: 0 done; 1 an error (one line on stderr); 2 some images failed (or a usage error, Click's
# own code); 3 a triggered run did not complete (`trigger --wait`); 4 the budget refused images
# (everything within it is saved; raise --budget or run again to continue); 128+N stopped by signal N.
EXIT_ERROR = 1
EXIT_FAILED = 2
EXIT_RUN_FAILED = 3
EXIT_BUDGET = 4


class CliError(Exception):
    """An expected failure reported as one line."""


# Prefect settings this CLI changes by default, each only where the user has not set it anywhere
# Prefect reads settings from. Analytics: the embedded server's telemetry service phones home at every
# start, and on an offline machine each run printed "ERROR | prefect.server.services.telemetry - Failed
# to send telemetry"; the SDK's own events follow the same setting when no PREFECT_API_URL is set.
PREFECT_DEFAULTS = {
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": (
        ("server", "ephemeral", "startup_timeout_seconds"),
        EPHEMERAL_STARTUP_TIMEOUT_S,
    ),
    "PREFECT_SERVER_ANALYTICS_ENABLED": (("server", "analytics_enabled"), "false"),
}


def prefect_defaults() -> None:
    """This CLI's defaults for Prefect (see ``PREFECT_DEFAULTS``), set before Prefect is imported."""
    for env_name, (toml_keys, value) in PREFECT_DEFAULTS.items():
        if not set_by_user(env_name, toml_keys):
            os.environ[env_name] = value


class _ConsoleLog(logging.Handler):
    """The project's own log lines (e.g. ``retrying in 4 s: ...``) on the console, above any progress bar."""

    def emit(self, record: logging.LogRecord) -> None:
        from rich.markup import escape

        style = "yellow" if record.levelno < logging.ERROR else "bold red"
        console.print(f"[{style}]{record.levelname.lower()}:[/] {escape(record.getMessage())}", highlight=False)


CONSOLE_LOG = _ConsoleLog(logging.WARNING)


@app.callback()
def _startup() -> None:
    prefect_defaults()
    try:  # before Prefect is imported: the workspace's kept server, or its database (interfaces.local_server)
        from interfaces.local_server import use_local_defaults

        if settings().prefect_local_server:
            use_local_defaults(workspace().data_root)
    except Exception:  # bad settings are reported by the command that reads them
        pass
    project = logging.getLogger("ai_influencer")
    if CONSOLE_LOG not in project.handlers:
        project.addHandler(CONSOLE_LOG)


def one_line(exc: BaseException, *, first_line_only: bool = False) -> str:
    """An exception as the line(s) a user needs; HTTP failures name the server and what to do.

    Our own errors are written to be read (a prompt bank lists each problem on its own line) and
    are kept whole unless ``first_line_only``.
    """
    import httpx

    request = getattr(exc, "request", None) if isinstance(exc, httpx.HTTPError) else None
    if request is None and type(exc).__name__ == "PrefectHTTPStatusError":
        request = getattr(exc, "request", None)
    if request is not None:
        where = f"{request.url.scheme}://{request.url.netloc.decode()}"
        status = getattr(getattr(exc, "response", None), "status_code", None)
        what = f"HTTP {status}" if status else (str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
        hint = (
            "check the user:password in PREFECT_API_AUTH_STRING"
            if status == 401
            else "is the Prefect server running (`prefect server start`)? check PREFECT_API_URL, or unset it to "
            "use the embedded server"
        )
        return f"Prefect API at {where}: {what}; {hint}"
    if isinstance(exc, TimeoutError) and "ephemeral" in str(exc).lower():
        return (
            f"{str(exc).splitlines()[0]} (raise PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS, or start "
            "`prefect server start` and set PREFECT_API_URL)"
        )
    text = str(exc).strip()
    if not text:
        return type(exc).__name__
    return text.splitlines()[0] if first_line_only else text


def expected_errors() -> tuple[type[BaseException], ...]:
    """The failures a command reports as one line. Prefect's HTTP error only when Prefect is loaded:
    importing it costs a second, and a command that never loaded it cannot have raised it."""
    import httpx

    from ai_influencer.openrouter.errors import OpenRouterError
    from ai_influencer.prompt_bank import PromptBankError
    from interfaces.local_server import LocalServerError

    found: tuple[type[BaseException], ...] = (
        CliError, MissingApiKeyError, PromptBankError, OpenRouterError, ValueError, FileNotFoundError,
        httpx.HTTPError, LocalServerError,
    )  # fmt: skip
    if "prefect.exceptions" in sys.modules:
        found += (sys.modules["prefect.exceptions"].PrefectHTTPStatusError,)
    if "flows.review" in sys.modules:  # `run --review` left unanswered: its message says what to do
        found += (sys.modules["flows.review"].ReviewTimedOut,)
    return found


@contextmanager
def friendly_errors() -> Iterator[None]:
    try:
        yield
    except Exception as exc:
        if not isinstance(exc, expected_errors()):
            raise
        console.print(f"[bold red]error:[/] {one_line(exc)}", highlight=False, markup=True, soft_wrap=True)
        raise typer.Exit(code=EXIT_ERROR) from None


def settings() -> Settings:
    return get_settings()


def workspace() -> Workspace:
    return Workspace.from_settings(settings())


def client(s: Settings | None = None) -> OpenRouterClient:
    """The OpenRouter client with the key from the Prefect block, else the environment (one resolver)."""
    from ai_influencer.openrouter import OpenRouterClient
    from blocks.openrouter import resolve_settings

    return OpenRouterClient.from_settings(resolve_settings(s or settings())[0])


def bank_path(given: Path | None) -> Path:
    return Path(given or settings().prompt_bank)


def fmt(value: float | None, spec: str = ".3f") -> str:
    return "n/a" if value is None else format(value, spec)
