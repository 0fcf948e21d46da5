"""How long the ``influencer`` command takes to answer: ``--help``, a no-op ``generate``, and how fast
``influencer run`` fails on a wrong key, an unreachable base URL and no key.

    .venv/bin/python -m bench.cli_start [--checkout PATH ...] [--repeat 5] [--cases help,generate-noop,...]

Each checkout's code is run as ``python -m interfaces.cli`` with ``PYTHONPATH=<checkout>`` by this
interpreter (same dependencies, only the project's code differs); the default is this checkout. To
compare with another commit, export it first, e.g. ``git archive main | tar -x -C /tmp/main`` and pass
``--checkout /tmp/main --checkout .``: the table then shows both, with the ratio of the last to the first.

Every case starts the real command in a fresh process against the project's OpenRouter stub (127.0.0.1)
in a workspace with two real reference photos; the no-op ``generate`` is a re-run after one that made
every image, so it only plans, finds everything done and exits. Goals: ``--help`` and the no-op
``generate`` <= 1 s; every ``run`` failure <= 10 s, one line, no traceback.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tests.support.assets import face
from tests.support.openrouter_stub import StubOpenRouter

ROOT = Path(__file__).resolve().parents[1]

KEY = "sk-or-bench"
SKIP_AFTER_GENERATE = ("--skip", "qc", "--skip", "augment", "--skip", "train", "--skip", "evaluate")
CASES: dict[str, tuple[list[str], dict[str, str | None]]] = {
    "help": (["--help"], {}),
    "generate-noop": (["generate", "--per_scene", "1"], {}),
    "run-wrong-key": (["run", "--per-scene", "1", *SKIP_AFTER_GENERATE], {"OPENROUTER_API_KEY": "sk-or-wrong"}),
    "run-unreachable": (
        ["run", "--per-scene", "1", *SKIP_AFTER_GENERATE],
        {"OPENROUTER_BASE_URL": "http://127.0.0.1:9/api/v1"},  # port 9 (discard): connection refused
    ),
    "run-no-key": (["run", "--per-scene", "1", *SKIP_AFTER_GENERATE], {"OPENROUTER_API_KEY": None}),
}


def _environment(stub: StubOpenRouter, folder: Path, checkout: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENROUTER_", "INFLUENCER_", "PREFECT_"))}
    env.update(
        OPENROUTER_API_KEY=KEY,
        OPENROUTER_BASE_URL=stub.base_url,
        INFLUENCER_DATA_ROOT=str(folder / "data"),
        INFLUENCER_MODELS_ROOT=str(folder / "models"),
        INFLUENCER_PROMPT_BANK=str(checkout / "prompt_bank" / "default.yaml"),
        PREFECT_HOME=str(folder / "prefect-home"),
        PYTHONPATH=str(checkout),
    )
    return env


def _workspace(folder: Path) -> None:
    raw = folder / "data" / "input_raw"
    raw.mkdir(parents=True)
    for name in ("obama.jpg", "obama3.jpg"):
        shutil.copy(face(name), raw / name)


def _once(python: str, args: list[str], env: dict[str, str], cwd: Path) -> tuple[float, subprocess.CompletedProcess]:
    start = time.perf_counter()
    res = subprocess.run(
        [python, "-m", "interfaces.cli", *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=600
    )
    return time.perf_counter() - start, res


def measure(checkout: Path, cases: list[str], repeat: int, python: str) -> dict[str, tuple[float, str]]:
    """Median seconds and a note (exit code, lines of output, traceback or not) per case."""
    results: dict[str, tuple[float, str]] = {}
    with StubOpenRouter(valid_keys=[KEY]) as stub, tempfile.TemporaryDirectory(prefix="cli-start-") as tmp:
        folder = Path(tmp)
        _workspace(folder)
        base = _environment(stub, folder, checkout)
        if "generate-noop" in cases:  # make every image once; the measured runs find them all done
            _, res = _once(python, CASES["generate-noop"][0], base, folder)
            if res.returncode != 0:
                raise SystemExit(f"{checkout}: the first generate failed: {res.stderr[-2000:]}")
        for case in cases:
            args, extra = CASES[case]
            env = {k: v for k, v in {**base, **extra}.items() if v is not None}
            times, res = [], None
            for _ in range(repeat if not case.startswith("run-") else max(1, repeat // 2)):
                shutil.rmtree(folder / "prefect-home", ignore_errors=True)  # a new user's first run
                seconds, res = _once(python, args, env, folder)
                times.append(seconds)
            assert res is not None
            lines = len((res.stdout + res.stderr).strip().splitlines()) if case != "help" else 0
            note = f"exit {res.returncode}" + (f", {lines} lines" if lines else "")
            note += ", traceback" if "Traceback" in res.stderr else ""
            results[case] = (statistics.median(times), note)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkout", action="append", type=Path, help="A checkout to measure (repeatable).")
    parser.add_argument("--repeat", type=int, default=5, help="Runs per case (half for the run-* cases).")
    parser.add_argument("--cases", default=",".join(CASES), help=f"Comma-separated, of: {', '.join(CASES)}.")
    parser.add_argument("--python", default=sys.executable, help="Interpreter (default: this one).")
    ns = parser.parse_args()
    checkouts = [c.resolve() for c in (ns.checkout or [ROOT])]
    cases = [c for c in ns.cases.split(",") if c]
    unknown = set(cases) - set(CASES)
    if unknown:
        raise SystemExit(f"unknown case(s): {sorted(unknown)}")
    load = os.getloadavg()
    print(f"# cli_start: {os.cpu_count()} cores, load {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}, repeat {ns.repeat}")
    measured = [measure(c, cases, ns.repeat, ns.python) for c in checkouts]
    header = ["case"]
    for c in checkouts:
        header += [f"{c.name} (s)", f"{c.name}: outcome"]
    if len(checkouts) > 1:
        header.append(f"{checkouts[-1].name}/{checkouts[0].name}")
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for case in cases:
        row = [case]
        for m in measured:
            row += [f"{m[case][0]:.2f}", m[case][1]]
        if len(checkouts) > 1:
            row.append(f"{measured[-1][case][0] / measured[0][case][0]:.2f}x")
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
