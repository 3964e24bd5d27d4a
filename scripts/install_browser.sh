#!/usr/bin/env bash
# Debian's chromium + chromium-driver for the review page's real-browser test (Selenium drives the
# system binaries; nothing is downloaded by the test tool itself). A no-op once both are present.
set -euo pipefail
if command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; then
  exit 0
fi
SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium chromium-driver >/dev/null
echo "chromium $(chromium --version 2>/dev/null | awk '{print $2}') installed for the browser test"
