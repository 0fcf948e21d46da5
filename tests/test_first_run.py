"""A new user's first commands: fast answers, checks before Prefect starts, one line per failure."""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import REPO

HEAVY = ("prefect", "torch", "cv2", "dlib", "albumentations", "diffusers", "onnxruntime", "scipy")


def test_importing_the_cli_loads_no_heavy_library() -> None:
    """`influencer --help` took 2.5-4.9 s because every command's libraries were imported up front."""
    code = f"import sys, interfaces.cli\nprint(','.join(m for m in {HEAVY!r} if m in sys.modules))"
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "", f"imported at start-up: {res.stdout.strip()}"


def test_usecases_stay_functions_once_their_modules_are_imported() -> None:
    """The package loads its stages lazily; a stage's module must never shadow the function of its name."""
    code = (
        "from ai_influencer import usecases\n"
        "from ai_influencer.usecases.prepare import MIN_REFERENCES\n"
        "import ai_influencer.usecases.report\n"
        "assert callable(usecases.prepare) and callable(usecases.report), (usecases.prepare, usecases.report)\n"
        "assert usecases.MIN_REFERENCES == MIN_REFERENCES and callable(usecases.qc)\n"
        "assert set(usecases.__all__) == set(usecases._EXPORTS) and set(usecases.__all__) <= set(dir(usecases))\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert res.returncode == 0, res.stderr
