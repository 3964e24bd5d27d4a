"""The golden set: a few memes stored inside the bundle with the outputs this bundle computed for them.

A hot reload recomputes them through the serving runtime before swapping a bundle in, so a bundle whose
files, preprocessing or runtime disagree with what the exporter saw is refused.
"""

import json
import shutil
from pathlib import Path

from PIL import Image

from consumer.core.runtime import BundleRuntime
from exporters.memes import Meme
from schemas.manifest import GoldenSet

GOLDEN_DIR = "golden"
# Tolerances for recomputing recorded outputs on another machine or provider: CUDA/TensorRT use other
# kernels (TF32 on fp32, fp16 accumulation); int8 dynamic quantisation differs by CPU instruction set.
GOLDEN_ATOL = {"fp32": 2e-3, "fp16": 2e-2, "int8": 5e-2}


def _store_image(meme: Meme, folder: Path, index: int) -> str:
    if meme.source is not None:  # original bytes: the reload check then covers decoding too
        name = f"{index:02d}{meme.source.suffix or '.img'}"
        shutil.copyfile(meme.source, folder / name)
    else:
        name = f"{index:02d}.png"
        meme.image.save(folder / name, format="PNG")
    return f"{GOLDEN_DIR}/{name}"


def write_golden(runtime: BundleRuntime, memes: list[Meme], precision: str) -> GoldenSet:
    """Store `memes` in the bundle runtime's root and record its outputs on them, read back from disk."""
    root = runtime.bundle.root
    (root / GOLDEN_DIR).mkdir(exist_ok=True)
    stored = [_store_image(m, root / GOLDEN_DIR, i) for i, m in enumerate(memes)]
    images = []
    for rel in stored:
        with Image.open(root / rel) as im:
            images.append(im.convert("RGB"))
    pred = runtime.predict(images, [m.text for m in memes])
    records = []
    for i, (meme, rel) in enumerate(zip(memes, stored, strict=True)):
        records.append({
            "id": meme.id, "image": rel, "text": meme.text,
            "technique_probs": [float(p) for p in pred.technique_probs[i]],
            "harmful_prob": None if pred.harmful_probs is None else float(pred.harmful_probs[i]),
        })
    golden = GoldenSet(file=f"{GOLDEN_DIR}/golden.json", count=len(records), atol=GOLDEN_ATOL[precision])
    doc = {"provider": runtime.provider, "precision": precision, "records": records}
    (root / golden.file).write_text(json.dumps(doc, indent=1, ensure_ascii=False))
    return golden
