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
# compat: a plain .pth with the checkout on sys.path, which type checkers and IDEs read (the default
# editable mode installs an import hook that they cannot follow); cocoedit/<part> links resolve the rest.
uv pip install --quiet --python .venv/bin/python --no-deps --config-settings editable_mode=compat -e .
.venv/bin/python -m cocoedit.protos.build --check
