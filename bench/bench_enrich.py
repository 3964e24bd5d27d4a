"""Enrichment cost per stage per image on this CPU, and OCR character error rate on synthetic memes.

    python bench/bench_enrich.py [--memes 24] [--phrases 10] [--sizes 8 10 12 16 24 40 72]
                                 [--default-ocr 4] [--jpeg-quality 35] [--out bench/results/enrich_cpu.json]

Stage costs are measured on real SemEval-2021 task 6 memes (the first `--memes` of dev, OCR forced as
for an event without text), all stages in one process, one image at a time as the worker calls it,
after a warm-up; ratios to the OCR stage come from the same run. OCR CER uses memes rendered with
known all-caps captions (white, black outline) at several font sizes on a 640×480 busy background,
as PNG and re-encoded as JPEG;
the font is DejaVu Sans Bold when installed (closest free match to Impact here), else Pillow's default.
"""

import argparse
import io
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from consumer.enrich import EnrichmentPipeline, remove_text  # noqa: E402
from consumer.enrich.faces import FacesStage  # noqa: E402
from consumer.enrich.ocr import OcrStage  # noqa: E402
from models.features.synthetic import cer, render_meme  # noqa: E402
from models.paths import semeval_dir  # noqa: E402

PHRASES = [
    ("ONE DOES NOT SIMPLY", "WALK INTO MORDOR"),
    ("WHEN THE TESTS PASS", "ON THE FIRST TRY"),
    ("THEY SAID IT COULD NOT BE DONE", "SO WE DID IT TWICE"),
    ("VOTE FOR FREEDOM", "NOT FOR FEAR"),
    ("IF YOU CAN READ THIS", "YOU ARE TOO CLOSE"),
    ("MAKE MEMES GREAT AGAIN", ""),
    ("NOBODY:", "ABSOLUTELY NOBODY: ME AT 3 AM"),
    ("THE ECONOMY IS BOOMING", "SAYS THE MAN WITH 7 HOUSES"),
    ("TRUST THE EXPERTS", "UNLESS THEY DISAGREE WITH YOU"),
    ("KEEP CALM AND", "CARRY ON CODING"),
    ("I HAVE 125 GENDERS", "AND 3 BATHROOMS"),
    ("SHE TOLD ME TO WATCH MY STEP", "SO I BOUGHT A CAMERA"),
]


def cpu_name() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        return next(line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name"))
    except (OSError, subprocess.CalledProcessError, StopIteration):
        return platform.processor() or "unknown"


def stage_costs(n_memes: int) -> dict:
    dev = json.loads((semeval_dir() / "dev.json").read_text())[:n_memes]
    images = [Image.open(semeval_dir() / "images" / m["image"]).convert("RGB") for m in dev]
    pipe = EnrichmentPipeline.from_names(["ocr", "faces", "objects", "attributes"], {})
    pipe.warmup()
    pipe.enrich(images[0], None)
    per_stage: dict[str, list[float]] = {}
    totals, inpaint_ms = [], []
    for img in images:
        t0 = time.perf_counter()
        e = pipe.enrich(img, None)
        totals.append((time.perf_counter() - t0) * 1000)
        for name, ms in e.timings_ms.items():
            per_stage.setdefault(name, []).append(ms)
        t0 = time.perf_counter()
        remove_text(np.asarray(img), e.ocr.lines if e.ocr else [])
        inpaint_ms.append((time.perf_counter() - t0) * 1000)
    per_stage["text_removal (inpaint)"] = inpaint_ms
    # The alternative face backend, same images.
    nudenet_faces = FacesStage.from_options({"backend": "nudenet"})
    arrays = [np.asarray(i) for i in images]
    nudenet_faces.detect(arrays[:1])
    ms = []
    for a in arrays:
        t0 = time.perf_counter()
        nudenet_faces.detect([a])
        ms.append((time.perf_counter() - t0) * 1000)
    per_stage["faces (nudenet backend)"] = ms
    ocr_mean = statistics.mean(per_stage["ocr"])
    table = {
        name: {
            "images": len(v),
            "mean_ms": round(statistics.mean(v), 2),
            "median_ms": round(statistics.median(v), 2),
            "ratio_to_ocr": round(statistics.mean(v) / ocr_mean, 4),
        }
        for name, v in per_stage.items()
    }
    sizes = [f"{i.width}x{i.height}" for i in images]
    return {
        "memes": len(images),
        "image_sizes": sizes,
        "stages": table,
        "enrich_total_mean_ms": round(statistics.mean(totals), 1),
        "note": "attributes are timed only on memes where faces were found",
    }


def jpeg(img: Image.Image, quality: int) -> Image.Image:
    """Re-encode as memes travel: shared memes are usually recompressed JPEGs."""
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality)
    buf.seek(0)
    return Image.open(buf).convert("RGB")


def ocr_cer(sizes: list[int], n_phrases: int, default_ocr: int, quality: int) -> dict:
    ocr = OcrStage.from_options({})
    phrases = PHRASES[:n_phrases]
    result: dict = {"by_size": {}, "jpeg_quality": quality}
    font_name = ""
    for size in sizes:
        errs, errs_jpeg, ms = [], [], []
        for k, (top, bottom) in enumerate(phrases):
            img, font_name = render_meme(top, bottom, size=size, seed=k)
            truth = f"{top} {bottom}"
            t0 = time.perf_counter()
            read = ocr.read([np.asarray(img)])[0]
            ms.append((time.perf_counter() - t0) * 1000)
            errs.append(cer(truth, read.text.replace("\n", " ")))
            read_jpeg = ocr.read([np.asarray(jpeg(img, quality))])[0]
            errs_jpeg.append(cer(truth, read_jpeg.text.replace("\n", " ")))
        result["by_size"][str(size)] = {
            "memes": len(phrases),
            "cer_mean": round(statistics.mean(errs), 4),
            "cer_max": round(max(errs), 4),
            f"cer_mean_jpeg_q{quality}": round(statistics.mean(errs_jpeg), 4),
            "ocr_mean_ms": round(statistics.mean(ms), 1),
        }
        print(
            f"  font {size:3d}px  CER {statistics.mean(errs):.3f}  JPEG q{quality} {statistics.mean(errs_jpeg):.3f}",
            flush=True,
        )
    result["font"] = font_name
    if default_ocr:
        # rapidocr's own defaults (no long-side cap) on a few real memes, interleaved with ours.
        from rapidocr import RapidOCR

        default_engine = RapidOCR(params={"Global.log_level": "error"})
        dev = json.loads((semeval_dir() / "dev.json").read_text())[:default_ocr]
        ours, theirs = [], []
        for m in dev:
            arr = np.asarray(Image.open(semeval_dir() / "images" / m["image"]).convert("RGB"))
            default_engine(arr)  # warm both for this size
            ocr.read([arr])
            t0 = time.perf_counter()
            default_engine(arr)
            theirs.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            ocr.read([arr])
            ours.append(time.perf_counter() - t0)
        result["capped_vs_default_ocr"] = {
            "memes": len(dev),
            "capped_mean_ms": round(1000 * statistics.mean(ours), 1),
            "default_mean_ms": round(1000 * statistics.mean(theirs), 1),
            "speedup": round(statistics.mean(theirs) / statistics.mean(ours), 2),
        }
    return result


def real_ocr_cer(features: Path) -> dict | None:
    """OCR against the SemEval transcriptions on all 750 real memes, from the extractor's cache
    (`python -m consumer.enrich.extract`); None when that cache is absent. Transcriptions order lines
    as a reader would and omit watermarks, so this overstates OCR's own errors somewhat."""
    if not features.is_file():
        return None
    gold = {
        str(r["id"]): r["text"]
        for split in ("train", "dev")
        for r in json.loads((semeval_dir() / f"{split}.json").read_text())
    }
    errs, ms = [], []
    for line in features.read_text().splitlines():
        row = json.loads(line)
        ocr = row["ocr"].get("ocr") or {}
        errs.append(min(1.0, cer(gold[row["id"]], str(ocr.get("text", "")).replace("\n", " "))))
        ms.append(row["ocr"]["timings_ms"].get("ocr", 0.0))
    return {
        "memes": len(errs),
        "cer_mean_capped_at_1": round(statistics.mean(errs), 4),
        "cer_median": round(statistics.median(errs), 4),
        "share_below_0.1": round(sum(e < 0.1 for e in errs) / len(errs), 4),
        "ocr_median_ms_during_extraction": round(statistics.median(ms), 1),
        "source": str(features),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--memes", type=int, default=24)
    ap.add_argument("--phrases", type=int, default=10)
    ap.add_argument("--sizes", type=int, nargs="+", default=[8, 10, 12, 16, 24, 40, 72])
    ap.add_argument("--default-ocr", type=int, default=4, help="memes to time rapidocr's defaults on (0: skip)")
    ap.add_argument("--jpeg-quality", type=int, default=35)
    ap.add_argument("--features", type=Path, default=REPO / ".cache" / "enrich" / "semeval_features.jsonl")
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "enrich_cpu.json")
    args = ap.parse_args(argv)
    machine = {
        "cpu": cpu_name(),
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "note": "2 shared cores; other jobs may have run beside this one",
    }
    print(f"machine: {machine['cpu']}, {machine['cores']} cores", flush=True)
    print("stage costs on real memes ...", flush=True)
    costs = stage_costs(args.memes)
    for name, row in costs["stages"].items():
        print(f"  {name:26s} {row['mean_ms']:8.1f} ms/image  (×{row['ratio_to_ocr']:.3f} of OCR)", flush=True)
    print("OCR CER on synthetic memes ...", flush=True)
    cer_report = ocr_cer(args.sizes, args.phrases, args.default_ocr, args.jpeg_quality)
    real = real_ocr_cer(args.features)
    if real:
        print(f"  real memes: CER mean {real['cer_mean_capped_at_1']:.3f}, median {real['cer_median']:.3f}", flush=True)
    report = {
        "command": "python bench/bench_enrich.py " + shlex.join(sys.argv[1:] if argv is None else argv),
        "machine": machine,
        "stage_costs": costs,
        "ocr_cer": cer_report,
        "real_ocr_cer_vs_transcription": real,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
