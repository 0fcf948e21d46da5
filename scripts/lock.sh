#!/usr/bin/env bash
# Regenerate constraints.txt from the working virtualenv (after a deliberate upgrade + a green test run).
# scripts/setup.sh installs with `-c constraints.txt`, so every machine gets the versions CI tested.
# PyTorch is left out on purpose: its build depends on the machine (CPU here, CUDA on a GPU host) and
# setup.sh / the Dockerfile pin it separately.
set -euo pipefail
cd "$(dirname "$0")/.."
{
  echo "# Versions the test suite passed with; regenerate with scripts/lock.sh. torch is pinned separately."
  .venv/bin/python -m pip freeze --exclude-editable --disable-pip-version-check \
    | grep -v -i -E '^(torch|torchvision|torchaudio|triton|nvidia-[a-z0-9-]+|ai-influencer)(==| @)' \
    | LC_ALL=C sort -f
} > constraints.txt.tmp
mv constraints.txt.tmp constraints.txt
echo "wrote constraints.txt ($(grep -c '==' constraints.txt) pins)"
