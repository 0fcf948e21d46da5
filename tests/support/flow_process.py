"""Run ``generate_flow`` in a separate Python process, the way a second worker would.

    proc = spawn_generate(params, paths, env, log)     # env: a ServerEnv + the OpenRouter variables
    result = wait_result(proc, log)                    # the flow's return value (a dict)

Several such processes against one started server are several workers sharing the server's global
concurrency limits; each has its own client, dispatcher and leases, which an in-process flow run
inside the test process would not have.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

from flows.params import GenerateParams, Paths

REPO = Path(__file__).resolve().parents[2]
RESULT_MARK = "GENERATE-RESULT "

GENERATE_SCRIPT = f"""
import sys
from flows.generate import generate_flow
from flows.params import GenerateParams, Paths
result = generate_flow(GenerateParams.model_validate_json(sys.argv[1]), Paths.model_validate_json(sys.argv[2]))
print({RESULT_MARK!r} + result.model_dump_json(), flush=True)
"""


def spawn_generate(params: GenerateParams, paths: Paths, env: Mapping[str, str], log: Path) -> subprocess.Popen:
    """Start the flow in a new process (its own session, so ``os.killpg`` stops it and its children)."""
    out = log.open("w")
    try:
        return subprocess.Popen(
            [sys.executable, "-c", GENERATE_SCRIPT, params.model_dump_json(), paths.model_dump_json()],
            cwd=REPO,
            env={**env, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1"},
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    finally:
        out.close()  # the child has its own descriptor


def wait_result(proc: subprocess.Popen, log: Path, timeout: float = 300) -> dict:
    """The flow's result; an AssertionError with the log's tail if the process failed."""
    code = proc.wait(timeout)
    text = log.read_text(errors="replace")
    lines = [ln for ln in text.splitlines() if ln.startswith(RESULT_MARK)]
    assert code == 0 and lines, f"generate_flow process exited with {code}:\n{text[-4000:]}"
    return json.loads(lines[-1][len(RESULT_MARK) :])
