#!/usr/bin/env bash
# Set up a fresh machine: virtualenv, project with extras, test photos.
# Idempotent: re-running only installs what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3}
EXTRAS=${INFLUENCER_EXTRAS:-train,hub,dev}
# PyTorch is pinned and installed first, so the `train` extra never pulls a different (multi-GB CUDA) build.
# On this project's CI machine torch==2.13.0 resolves to the local CPU wheel; on a GPU host set
# INFLUENCER_TORCH="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128" (or "skip").
TORCH=${INFLUENCER_TORCH:-torch==2.13.0}

if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
VPIP=(.venv/bin/python -m pip --disable-pip-version-check)
"${VPIP[@]}" install -q --upgrade pip setuptools wheel
if [[ "$EXTRAS" == *train* && "$TORCH" != skip ]] && ! .venv/bin/python -c "import torch" 2>/dev/null; then
  # shellcheck disable=SC2086 # TORCH may carry pip options
  "${VPIP[@]}" install -q $TORCH
fi
# constraints.txt: the exact versions CI ran with (scripts/lock.sh), so installs are reproducible.
"${VPIP[@]}" install -q -c constraints.txt -e ".[${EXTRAS}]"

# insightface depends on the GUI build `opencv-python`, which writes the same cv2/ package as
# `opencv-python-headless` (ours; no libGL needed). Keep exactly one: the headless build.
if .venv/bin/python -m pip show -q opencv-python >/dev/null 2>&1; then
  "${VPIP[@]}" uninstall -q -y opencv-python
  headless=$(.venv/bin/python -m pip show opencv-python-headless | awk '/^Version:/{print $2}')
  "${VPIP[@]}" install -q --force-reinstall --no-deps "opencv-python-headless==${headless}"
fi
.venv/bin/python -c "import cv2, dlib, insightface, rembg, prefect" >/dev/null

# Offline test photos (from the face_recognition 1.3.0 sdist on PyPI and the insightface wheel).
.venv/bin/python -m tests.support.assets fetch >/dev/null
echo "setup complete: $(.venv/bin/python --version), $(.venv/bin/influencer --help >/dev/null && echo 'influencer CLI ok')"
