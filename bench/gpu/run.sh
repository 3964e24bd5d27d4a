#!/usr/bin/env bash
# GPU proof (issue 30): one command on a bare GPU machine with no network -> one JSON result.
#
#   bash bench/gpu/run.sh [--stash-only] [measure.py options: --e2e --bundle DIR --fp16-bundle DIR --out FILE ...]
#   bash bench/gpu/run.sh --dry-run --bundle DIR     # the CPU dry run (tests/test_bench_gpu_dryrun.py)
#
# 1. Copies what this run carried in bench/gpu/wheels/ (wheels, pieces, memes) into the stash
#    ($MEMEGUARD_GPU_STASH, default ~/.cache/memeguard-gpu: it outlives a run while the machine stays warm),
#    joins every complete set of pieces (sha256-checked) and unpacks carried bundles. --stash-only stops here.
# 2. Installs every wheel in the stash, offline, into <stash>/site (`pip --no-index --no-deps --target`), put
#    ahead of the system's packages: onnxruntime-gpu there shadows the machine's CPU-only onnxruntime.
# 3. Runs bench/gpu/measure.py (providers, decode, and with --e2e end to end); writes the JSON (default
#    bench/results/gpu.json when nvidia-smi lists a GPU, else a temporary file) and prints its path.
# Python: $PYTHON, else the project's .venv when there is one, else python3 (the GPU machine's, with torch).
set -euo pipefail
cd "$(dirname "$0")/../.."
STASH="${MEMEGUARD_GPU_STASH:-$HOME/.cache/memeguard-gpu}"
export MEMEGUARD_GPU_STASH="$STASH" HF_HUB_OFFLINE=1
if [[ -z "${PYTHON:-}" ]]; then
  if [[ -x .venv/bin/python ]]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
command_line="bash bench/gpu/run.sh $*"

CARRY="${MEMEGUARD_GPU_CARRY:-bench/gpu/wheels}"
mkdir -p "$STASH"
"$PYTHON" bench/gpu/carry.py --carry "$CARRY" stash "$STASH" >"$STASH/report.json" 2>&1 \
  || { cat "$STASH/report.json"; exit 1; }
if [[ "${1:-}" == "--stash-only" ]]; then
  cat "$STASH/report.json"
  exit 0
fi

shopt -s nullglob
wheels=("$STASH"/wheels/*.whl)
if (( ${#wheels[@]} )); then
  stamp="$(ls -l "${wheels[@]}" | sha256sum | cut -c1-16)"
  if [[ ! -f "$STASH/site/.installed-$stamp" ]]; then
    rm -rf "$STASH/site"
    "$PYTHON" -m pip install --quiet --no-index --no-deps --disable-pip-version-check --target "$STASH/site" \
      "${wheels[@]}"
    touch "$STASH/site/.installed-$stamp"
  fi
  export PYTHONPATH="$STASH/site${PYTHONPATH:+:$PYTHONPATH}"
fi
# onnxruntime-gpu finds CUDA/cuDNN through the nvidia-* wheels PyTorch ships with (ort.preload_dlls()).
exec "$PYTHON" bench/gpu/measure.py --command-line "$command_line" "$@"
