"""What the kept local Prefect server costs and saves: `influencer run` start-up, temporary vs kept server.

    .venv/bin/python -m bench.local_server [--runs 3]

`influencer run` with every stage skipped (the preflight, Prefect's start, an empty hybrid flow, the run
log), each in a fresh workspace and Prefect home, run ``--runs`` times in a row:

* temporary: ``INFLUENCER_PREFECT_LOCAL_SERVER=false``, Prefect's temporary server per run (the old default:
  started detached by ``shared_limits.prefect_compat.start_embedded_server``, gone with the run);
* kept: the default, the workspace's ``prefect server start`` (interfaces/local_server.py): the first run
  starts it, the later ones reuse it.

Prints wall seconds per run and the ratio kept / temporary per position (baseline measured in the same
run). The kept server is stopped at the end.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
INFLUENCER = str(Path(sys.executable).with_name("influencer"))
SKIP_ALL = [f"--skip={s}" for s in ("prepare", "plan", "generate", "qc", "augment", "train", "evaluate")]


def timed_runs(folder: Path, runs: int, **extra: str) -> list[float]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_API_", "INFLUENCER_", "OPENROUTER_"))}
    env.update(
        PREFECT_HOME=str(folder / "prefect-home"),
        INFLUENCER_DATA_ROOT=str(folder / "data"),
        INFLUENCER_MODELS_ROOT=str(folder / "models"),
        INFLUENCER_PROMPT_BANK=str(ROOT / "prompt_bank" / "default.yaml"),
        **extra,
    )
    out = []
    for _ in range(runs):
        t0 = time.perf_counter()
        res = subprocess.run([INFLUENCER, "run", *SKIP_ALL], env=env, cwd=folder, capture_output=True, text=True)
        out.append(time.perf_counter() - t0)
        if res.returncode != 0:
            raise SystemExit(f"influencer run failed:\n{res.stderr[-3000:]}")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    from interfaces import local_server

    with tempfile.TemporaryDirectory() as tmp:
        temp_dir, kept_dir = Path(tmp) / "temporary", Path(tmp) / "kept"
        temp_dir.mkdir()
        kept_dir.mkdir()
        temporary = timed_runs(temp_dir, args.runs, INFLUENCER_PREFECT_LOCAL_SERVER="false")
        try:
            kept = timed_runs(kept_dir, args.runs)
        finally:
            local_server.stop(kept_dir / "data")
    load = os.getloadavg()
    print(f"`influencer run` (every stage skipped), wall seconds; load average {load[0]:.2f} {load[1]:.2f}")
    print(f"{'run':>4} | {'temporary server':>16} | {'kept server':>11} | {'kept / temporary':>16}")
    print(f"{'-' * 4}-+-{'-' * 16}-+-{'-' * 11}-+-{'-' * 16}")
    for i, (t, k) in enumerate(zip(temporary, kept, strict=True), 1):
        note = " (starts it)" if i == 1 else ""
        print(f"{i:>4} | {t:>16.1f} | {k:>11.1f} | {k / t:>16.2f}{note}")
    if args.runs > 2:
        t, k = statistics.median(temporary[1:]), statistics.median(kept[1:])
        print(f"{'2..':>4} | {t:>16.1f} | {k:>11.1f} | {k / t:>16.2f} (medians)")


if __name__ == "__main__":
    main()
