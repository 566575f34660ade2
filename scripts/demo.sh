#!/usr/bin/env bash
# One command: set up .venv and run the offline demo.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/python examples/demo.py
