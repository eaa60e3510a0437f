#!/usr/bin/env bash
# Install Debian's headless-capable `chromium` for the HTML report test (tests/test_report_html.py).
# Idempotent: does nothing when `chromium` is on PATH. Needs root and Debian's package registry;
# prints why and exits non-zero when it cannot (the test then skips, saying so).
set -euo pipefail

if command -v chromium >/dev/null 2>&1; then
  echo "chromium-up: $(chromium --version 2>/dev/null || echo chromium) already installed"; exit 0
fi
if [ "$(id -u)" != 0 ]; then
  echo "chromium-up: needs root to install Debian's chromium" >&2; exit 1
fi
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium fonts-dejavu-core >/dev/null
command -v chromium >/dev/null && echo "chromium-up: $(chromium --version 2>/dev/null) installed"
