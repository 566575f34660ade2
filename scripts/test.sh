#!/usr/bin/env bash
# One command: set up .venv, install the browser for the demo's browser test, run the default test
# suite (slow tests excluded; add -m slow for those). Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# Debian's Chromium for tests/test_demo_browser.py (needs root or sudo; without it that test is
# reported as skipped, with the reason).
bash scripts/install_browser.sh || echo "==> Chromium not installed: the demo's browser test will be skipped."
.venv/bin/python -m pytest -q "$@"
