#!/usr/bin/env bash
# Create .venv with everything cocoedit needs on a CPU machine (tiny mode, tests, vLLM-on-CPU).
# Usage: bash scripts/setup.sh        (idempotent; a second run only checks the pins)
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v uv >/dev/null 2>&1; then
  python3 -m pip install --quiet "uv>=0.5"
fi
[ -x .venv/bin/python ] || uv venv --quiet --python 3.11 .venv
# requirements/cpu.txt is `uv pip compile pyproject.toml --extra cpu --extra dev --extra trackers --override
# requirements/overrides.txt`: every version pinned, no registry addresses.
# --compile-bytecode: without .pyc files (uv writes none by default) every new process, each Ray
# worker and vLLM engine included, compiles torch/diffusers from source again: tens of seconds each.
uv pip install --quiet --compile-bytecode --python .venv/bin/python --override requirements/overrides.txt -r requirements/cpu.txt
uv pip install --quiet --python .venv/bin/python --no-deps -e .
.venv/bin/python -m cocoedit.protos.build --check
