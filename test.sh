#!/usr/bin/env bash
# Set up (first run, including Debian chromium for the browser tests) and run the whole test suite.
set -euo pipefail
cd "$(dirname "$0")"
scripts/setup.sh --browser
exec .venv/bin/python -m pytest "$@"
