#!/usr/bin/env bash
# Install Debian's Chromium for the browser test of `shine demo` (tests/test_demo_browser.py).
# Playwright drives this system browser (executable_path=/usr/bin/chromium); its own browser
# download is never used. Needs root (or sudo) on Debian/Ubuntu; does nothing when Chromium is there.
set -euo pipefail
CHROMIUM=/usr/bin/chromium
if [ -x "$CHROMIUM" ]; then
  echo "install_browser: $CHROMIUM is already installed; nothing to do."
  exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "install_browser: $CHROMIUM is missing and apt-get is not available; install Chromium by hand." >&2
  exit 1
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  if ! command -v sudo >/dev/null 2>&1; then
    echo "install_browser: installing Chromium needs root (or sudo)." >&2
    exit 1
  fi
  SUDO="sudo"
fi
# A font package too: on a minimal image the screenshot would otherwise show boxes instead of text.
echo "install_browser: installing Debian's chromium and fonts-dejavu-core packages (apt-get install -y)..."
$SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -qq
$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium fonts-dejavu-core >/dev/null
echo "install_browser: installed $("$CHROMIUM" --version 2>/dev/null)."
