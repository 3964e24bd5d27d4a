"""Peak memory of the decode stage on a batch of 32 max-size hostile images, before and after bounding it.

The batch: 28 decompression bombs *at* the pixel cap (6324 x 6324 = 39.99 MP declared, solid colours, so the
files are small and every one passes the header check): PNG RGB, PNG RGBA, PNG palette + transparency,
JPEG, GIF, WebP (lossless), 16-bit PNG; plus 4 bombs over the cap (PNG 20000 x 20000, JPEG 8000 x 8000,
WebP 7000 x 7000, a GIF whose first frame is 7000 x 7000 on a 10 x 10 screen), refused on the header.

Each configuration runs in its own fresh subprocess, which reads the files, builds the pipeline's decode
stage and records `resource.getrusage(RUSAGE_SELF).ru_maxrss` (peak RSS) after the stage:

- `old`: the decode of the previous main (every Pillow format, `Image.MAX_IMAGE_PIXELS = None`, full decode,
  `convert("RGB")`), one `asyncio.to_thread` per image as the old `_decode` gather did;
- `new`: `ModerationPipeline._decode` with the default settings and a 224 px model (no enrichment);
- `new-enrichment`: the same with an enrichment stage configured (pictures kept at >= 2 x 1024 px);
- `new-full-size`: `ImageDecoder` without a target (text-only bundle): the budget bounds the decode, but
  every picture is kept at full size.

Run: `.venv/bin/python -m bench.bench_hostile_images` (about two minutes on 2 cores; needs ~6 GB free for
`old`). Writes `bench/results/hostile_images_rss.json`.
"""

import argparse
import asyncio
import io
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULT = REPO / "bench" / "results" / "hostile_images_rss.json"
SIDE = 6324  # 6324^2 = 39,992,976 pixels: just under the 40 MP default cap
CAP = 40_000_000
MODES = ["old", "new", "new-enrichment", "new-full-size"]


def _rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def generate(folder: Path) -> list[dict]:
    """Write the 32 files (in this process: generating costs memory the measured children must not see)."""
    import numpy as np
    from PIL import Image

    specs = []

    def save(name: str, image, fmt: str, kind: str, **kw) -> None:
        path = folder / name
        image.save(path, fmt, **kw)
        specs.append({"file": name, "format": fmt, "kind": kind, "declared": f"{image.width}x{image.height}",
                      "bytes": path.stat().st_size})

    n = 0
    for fmt, mode, count in (("PNG", "RGB", 6), ("PNG", "RGBA", 4), ("PNG", "P+t", 4), ("JPEG", "RGB", 4),
                             ("GIF", "P+t", 4), ("WEBP", "RGB", 4), ("PNG", "I;16", 2)):
        for _ in range(count):
            n += 1
            colour = (n * 37 % 256, n * 91 % 256, n * 53 % 256)
            kw = {}
            if mode == "RGBA":
                im = Image.new("RGBA", (SIDE, SIDE), (*colour, 128))
            elif mode == "P+t":
                im = Image.new("P", (SIDE, SIDE), n % 200)
                im.putpalette([v for i in range(256) for v in ((i * 7) % 256, (i * 13) % 256, (i * 29) % 256)])
                kw["transparency"] = n % 200
            elif mode == "I;16":
                im = Image.frombytes("I;16", (SIDE, SIDE), np.full((SIDE, SIDE), n * 1000, "<u2").tobytes())
            else:
                im = Image.new("RGB", (SIDE, SIDE), colour)
            if fmt == "WEBP":
                kw.update(lossless=True, quality=0, method=0)
            save(f"{n:02d}_at_cap.{fmt.lower()}", im, fmt, f"at cap, {mode}", **kw)
            del im
    save("29_over_cap.png", Image.new("1", (20000, 20000)), "PNG", "over cap")
    save("30_over_cap.jpeg", Image.new("L", (8000, 8000)), "JPEG", "over cap")
    save("31_over_cap.webp", Image.new("L", (7000, 7000)), "WEBP", "over cap", lossless=True, quality=0, method=0)
    gif = io.BytesIO()
    Image.new("P", (10, 10)).save(gif, "GIF")
    b = bytearray(gif.getvalue())
    at = b.index(b"\x2c", 13 + (3 * 2 ** ((b[10] & 7) + 1) if b[10] & 0x80 else 0))
    b[at + 5:at + 9] = (7000).to_bytes(2, "little") * 2  # first frame 7000 x 7000 on a 10 x 10 screen
    (folder / "32_over_cap.gif").write_bytes(bytes(b))
    specs.append({"file": "32_over_cap.gif", "format": "GIF", "kind": "over cap (frame larger than screen)",
                  "declared": "10x10 screen, 7000x7000 frame", "bytes": len(b)})
    return specs


def _old_decode(data: bytes, max_pixels: int):
    """consumer/core/images.py as it was before issue 11 (verbatim logic)."""
    import warnings

    from PIL import Image, UnidentifiedImageError

    from consumer.errors import InputError
    from schemas import ErrorKind

    Image.MAX_IMAGE_PIXELS = None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            image = Image.open(io.BytesIO(data))
            width, height = image.size
            if width * height > max_pixels:
                raise InputError(f"{width}x{height} over the cap", ErrorKind.PIXEL_BOMB)
            image.load()
            return image.convert("RGB")
    except InputError:
        raise
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
        raise InputError(str(e), ErrorKind.IMAGE_UNDECODABLE) from e


def child(mode: str, folder: Path) -> dict:
    from types import SimpleNamespace

    from consumer.core.fetch import FetchPolicy, ImageFetcher
    from consumer.core.images import ImageDecoder
    from consumer.core.pipeline import ModerationPipeline, RawRecord, _Item
    from consumer.errors import InputError
    from consumer.settings import WorkerSettings
    from schemas import ImagePreprocessing

    blobs = [p.read_bytes() for p in sorted(folder.iterdir())]
    settings = WorkerSettings()
    fetcher = ImageFetcher(FetchPolicy.from_settings(settings))
    decoder = ImageDecoder(fetcher.policy.decode)
    baseline = _rss_mb()
    t0 = time.perf_counter()
    outcomes: dict[str, int] = {}
    kept_pixels = 0

    def count(result) -> None:
        nonlocal kept_pixels
        if isinstance(result, InputError):
            outcomes[result.kind.value] = outcomes.get(result.kind.value, 0) + 1
        else:
            outcomes["decoded"] = outcomes.get("decoded", 0) + 1
            kept_pixels += result.width * result.height

    if mode == "old":
        async def old_stage():
            async def one(data):
                try:
                    return await asyncio.to_thread(_old_decode, data, settings.max_image_pixels)
                except InputError as e:
                    return e
            return await asyncio.gather(*(one(b) for b in blobs))

        results = asyncio.run(old_stage())
    elif mode == "new-full-size":
        results = asyncio.run(decoder.decode_many(blobs, settings.max_image_pixels, None))
    else:
        runtime = SimpleNamespace(manifest=SimpleNamespace(image=ImagePreprocessing(size=224)))
        pipe = ModerationPipeline(runtime=runtime, cache=None, fetcher=fetcher, decoder=decoder, policy=None,
                                  max_event_bytes=settings.max_event_bytes, max_image_pixels=settings.max_image_pixels,
                                  enricher=(lambda image, text: None) if mode == "new-enrichment" else None)
        items = [_Item(RawRecord(None, b"{}", "bench", 0, n)) for n in range(len(blobs))]
        for item, data in zip(items, blobs, strict=True):
            item.image_bytes = data
        asyncio.run(pipe._decode(items))
        results = [i.image if i.outcome is None else InputError(i.outcome.dead_letter.message,
                                                                  i.outcome.dead_letter.error_kind) for i in items]
    wall = time.perf_counter() - t0
    for r in results:
        count(r)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"mode": mode, "peak_rss_mb": round(peak), "rss_before_decode_mb": round(baseline),
            "decode_added_mb": round(peak - baseline), "kept_pixels": kept_pixels, "wall_s": round(wall, 1),
            "outcomes": outcomes,
            "budget_peak_pixels": decoder.budget.peak if mode != "old" else None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--modes", nargs="+", default=MODES, choices=MODES)
    parser.add_argument("--child", choices=MODES, help=argparse.SUPPRESS)
    parser.add_argument("--dir", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.dir)))
        return
    from bench.common import machine

    with tempfile.TemporaryDirectory(prefix="mg-hostile-") as tmp:
        folder = Path(tmp)
        print(f"generating 32 hostile images in {folder} ...", flush=True)
        specs = generate(folder)
        runs = []
        for mode in args.modes:
            out = subprocess.run([sys.executable, "-m", "bench.bench_hostile_images", "--child", mode, "--dir", tmp],
                                 cwd=REPO, capture_output=True, text=True, check=True)
            runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
            print(json.dumps(runs[-1]), flush=True)
    from PIL import __version__ as pillow

    theory = {"old_kept_rgb_bytes": 28 * SIDE * SIDE * 4,
              "note": "Pillow stores RGB at 4 bytes per pixel: 28 at-cap images kept at once = 4.48 GB "
                      "(the issue's 3.8 GB counted 32 x 40 MP x 3 bytes)"}
    payload = {
        "command": ".venv/bin/python -m bench.bench_hostile_images " + " ".join(sys.argv[1:]),
        "machine": {**machine(), "pillow": pillow, "platform": platform.platform()},
        "settings": {"max_image_pixels": CAP, "decode_concurrency": 4, "batch_pixel_budget": 64_000_000,
                     "model_input_side": 224, "enrichment_side": 1024},
        "batch": specs, "theory": theory, "runs": runs,
    }
    RESULT.parent.mkdir(parents=True, exist_ok=True)
    RESULT.write_text(json.dumps(payload, indent=2) + "\n")
    print(f"wrote {RESULT.relative_to(REPO)}")


if __name__ == "__main__":
    os.environ.setdefault("MEMEGUARD_LOG_FORMAT", "text")
    main()
