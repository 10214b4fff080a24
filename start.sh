#!/usr/bin/env bash
# Set up (first run) and start the app on http://127.0.0.1:7860. Extra args go to app.py.
set -euo pipefail
cd "$(dirname "$0")"
scripts/setup.sh
exec .venv/bin/python app.py "$@"
