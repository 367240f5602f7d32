#!/usr/bin/env bash
# Create the project's virtual environment (.venv) and install requirements.txt into it.
# Idempotent: installs again only when requirements.txt changed. Source it or run it.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PYTHON=${PYTHON:-python3}
if ! "$PYTHON" -c 'import sys; sys.exit(not ((3, 10) <= sys.version_info[:2] <= (3, 13)))'; then
  echo "setup: Python 3.10-3.13 is needed (TensorFlow); found $("$PYTHON" --version 2>&1). Set PYTHON=/path/to/python3.x" >&2
  exit 1
fi
if [ ! -x .venv/bin/python ]; then
  echo "[setup] creating virtual environment .venv"
  "$PYTHON" -m venv .venv
fi
want=$(sha256sum requirements.txt | cut -d' ' -f1)
if [ "$(cat .venv/.requirements.sha256 2>/dev/null || true)" != "$want" ]; then
  echo "[setup] installing requirements.txt into .venv (first time: a few minutes)"
  .venv/bin/python -m pip install --disable-pip-version-check -q -r requirements.txt
  echo "$want" > .venv/.requirements.sha256
else
  echo "[setup] .venv is up to date"
fi
# The browser test of report.html (tests/test_report.py) needs Chromium and its driver. As root on
# Debian they are installed with apt when missing (quietly; CAE_BROWSER=0 skips this, the demo
# does); when they cannot be installed the setup goes on and only that test is skipped.
if [ "${CAE_BROWSER:-1}" != 0 ] && ! { command -v chromium && command -v chromedriver; } > /dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get > /dev/null 2>&1 && grep -qs '^ID=debian' /etc/os-release; then
    echo "[setup] installing chromium and chromium-driver with apt (for the browser test of report.html)"
    log=$(mktemp)
    export DEBIAN_FRONTEND=noninteractive
    if ! { apt-get install -y -qq chromium chromium-driver || { apt-get update -qq && apt-get install -y -qq chromium chromium-driver; }; } > "$log" 2>&1; then
      echo "[setup] could not install chromium (apt: $(tail -n 1 "$log")): the browser test of report.html will be skipped"
    fi
    rm -f "$log"
  fi
fi
