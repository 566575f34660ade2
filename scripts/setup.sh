#!/usr/bin/env bash
# Create .venv and install shine-hf with its dev extras, torch pinned to the CPU build (constraints.txt).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
# The Python version the package needs is stated once, in pyproject.toml (requires-python = ">=X.Y").
REQUIRED=$(sed -n 's/^requires-python = ">=\([0-9.]*\)".*/\1/p' pyproject.toml)
if ! "$PYTHON" -c "import sys; sys.exit(sys.version_info < tuple(map(int, '$REQUIRED'.split('.'))))"; then
  echo "shine-hf needs Python >= $REQUIRED; $PYTHON is $("$PYTHON" --version 2>&1). Run: PYTHON=python$REQUIRED bash $0" >&2
  exit 1
fi
# The "+cpu" torch wheels live on the PyTorch CPU index. Only torch is looked up there (--no-deps):
# every other package, torch's dependencies included, comes from the usual index in step 4, so an
# index that is slow or unreachable costs one lookup, not one per package.
TORCH_CPU_INDEX="https://download.pytorch.org/whl/cpu"
if [ ! -x .venv/bin/python ]; then
  echo "==> [1/4] Creating .venv with $("$PYTHON" --version)"
  "$PYTHON" -m venv .venv
else
  echo "==> [1/4] Using the existing .venv ($(.venv/bin/python --version))"
fi
echo "==> [2/4] Upgrading pip"
.venv/bin/python -m pip install --upgrade pip
echo "==> [3/4] Installing the CPU build of torch (constraints.txt)"
.venv/bin/python -m pip install --no-deps --retries 1 --extra-index-url "$TORCH_CPU_INDEX" -c constraints.txt torch
echo "==> [4/4] Installing shine-hf[dev] and its dependencies (a few minutes on a fresh machine)"
.venv/bin/python -m pip install -c constraints.txt -e ".[dev]"
echo "==> Done: $(.venv/bin/shine --version), torch $(.venv/bin/python -c 'import torch; print(torch.__version__)')"
