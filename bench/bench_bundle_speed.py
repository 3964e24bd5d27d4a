"""CPU serving speed of exported bundles, side by side: memes/s of `BundleRuntime.predict` on real dev memes.

    python -m bench.bench_bundle_speed BUNDLE [BUNDLE ...] [--batch 16] [--threads 2] [--rounds 3]
                                       [--out bench/results/bundle_speed_cpu.json]

Times the serving runtime's own path (preprocessing of decoded images + tokenisation + ONNX Runtime), not
decoding: the 63 dev memes are decoded once up front. Bundles are timed round-robin, round by round, so the
ratios come from the same minutes of a shared machine; the figure per bundle is the median round.
"""

import argparse
import json
import os
import shlex
import statistics
import sys
import time
from pathlib import Path

from bench.common import machine
from consumer.core.runtime import BundleRuntime
from exporters.memes import DEFAULT_DATA, load_memes
from models.paths import REPO_ROOT


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("bundles", type=Path, nargs="+")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--threads", type=int, default=2, help="ONNX Runtime intra-op threads (the worker's setting)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--out", type=Path, default=REPO_ROOT / "bench" / "results" / "bundle_speed_cpu.json")
    args = p.parse_args(argv)
    memes = load_memes(DEFAULT_DATA / "dev.json")
    images, texts = [m.image for m in memes], [m.text for m in memes]
    runtimes = [BundleRuntime.load(b, providers="cpu", intra_op_threads=args.threads) for b in args.bundles]
    for rt in runtimes:
        rt.predict(images[: args.batch], texts[: args.batch])  # warm-up: ORT allocates on the first call
    seconds: list[list[float]] = [[] for _ in runtimes]
    load_before = list(os.getloadavg())
    for _ in range(args.rounds):
        for k, rt in enumerate(runtimes):
            started = time.perf_counter()
            for s in range(0, len(memes), args.batch):
                rt.predict(images[s : s + args.batch], texts[s : s + args.batch])
            seconds[k].append(time.perf_counter() - started)
    rows = []
    for b, rt, secs in zip(args.bundles, runtimes, seconds, strict=True):
        m = rt.manifest
        rows.append({"bundle": str(b), "model": rt.version, "precision": m.precision,
                     "max_length": m.text.max_length if m.text else None,
                     "onnx_mb": round((b / m.onnx_file).stat().st_size / 1e6, 1),
                     "memes_per_s": round(len(memes) / statistics.median(secs), 2),
                     "round_seconds": [round(s, 2) for s in secs],
                     "cv_micro_f1": m.metrics.get("cv_micro_f1"), "cv_macro_f1": m.metrics.get("cv_macro_f1")})
        print(json.dumps(rows[-1]), flush=True)
    base = rows[0]["memes_per_s"]
    for r in rows:
        r["speed_vs_first"] = round(r["memes_per_s"] / base, 3)
    doc = {"command": "python -m bench.bench_bundle_speed " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:])),
           "data": f"semeval2021_task6/dev.json ({len(memes)} memes, decoded once before timing)",
           "batch": args.batch, "threads": args.threads, "machine": machine(),
           "load_avg_before": load_before, "load_avg_after": list(os.getloadavg()), "results": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
