#!/usr/bin/env bash
# One command: set up .venv and run the default test suite (slow tests excluded; add -m slow for those).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/python -m pytest -q "$@"
