"""`python -m exporters.cli export RUN_DIR --out BUNDLE` and `build-default --out bundles/default`.

Both run in the training environment (torch); `memeguard export` / `memeguard bundle` forward here.
"""

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from consumer.errors import MemeguardError
from exporters.bundle_writer import export_bundle
from exporters.contract import Loader
from exporters.errors import ExportError
from exporters.memes import DEFAULT_DATA, load_memes
from models.errors import ModelsError

DEFAULT_LOADER = "models.inference:load_for_export"
REPO = Path(__file__).resolve().parents[1]
GOLDEN_COUNT = 8


def resolve_loader(spec: str) -> Loader:
    module, _, attr = spec.partition(":")
    try:
        return getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as e:
        raise ExportError(f"Cannot import the model loader {spec!r} ({e}); is the training environment "
                          "installed (`pip install -e .[train]`)?") from e


def export_run(
    run_dir: Path, out: Path, precision: str = "fp32", loader: str = DEFAULT_LOADER,
    parity_data: Path | None = DEFAULT_DATA / "dev.json", parity_images: Path | None = None,
    parity_limit: int | None = None, version: str = "0.1.0", progress: bool = True,
) -> Path:
    if not run_dir.is_dir():
        raise ExportError(f"Run directory {run_dir} does not exist; train one with "
                          "`python -m models.cli train configs/default.yaml --out runs`.")
    model = resolve_loader(loader)(str(run_dir))
    memes = load_memes(parity_data, parity_images, parity_limit) if parity_data is not None else []
    split = f"{parity_data.parent.name}/{parity_data.name} ({len(memes)} memes)" if parity_data else "none"
    manifest = export_bundle(
        model, run_dir, out, precision=precision,  # type: ignore[arg-type]
        parity_memes=memes or None, golden_memes=memes[:GOLDEN_COUNT] or None, version=version,
        parity_split=split, show_progress=progress,
    )
    if manifest.parity is not None:
        p = manifest.parity
        f1 = "" if p.micro_f1_change is None else (
            f", micro-F1 {p.micro_f1_onnx:.4f} ({p.micro_f1_change:+.4f} vs PyTorch)"
        )
        print(f"parity {precision} on {p.split}: max |diff| {p.max_abs_diff:.2e}, "
              f"flag agreement {p.flag_agreement:.4f}{f1}")
    print(f"bundle: {out.resolve()}")
    return out


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="memeguard", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    e = sub.add_parser("export", help="export a training run to a model bundle (with parity check)")
    e.add_argument("run_dir", type=Path)
    e.add_argument("--out", type=Path, required=True)
    e.add_argument("--precision", choices=["fp32", "fp16", "int8"], default="fp32")
    e.add_argument("--version", default="0.1.0", help="semantic version written into the manifest")
    e.add_argument("--parity-data", type=Path, default=DEFAULT_DATA / "dev.json",
                   help="SemEval-format memes for parity and the golden set (default: the dev split)")
    e.add_argument("--parity-images", type=Path, default=None, help="default: images/ beside --parity-data")
    e.add_argument("--parity-limit", type=int, default=None, help="use only the first N memes")
    e.add_argument("--no-parity", action="store_true", help="skip parity and the golden set")
    e.add_argument("--loader", default=DEFAULT_LOADER, help="module:function returning the model")
    e.add_argument("--no-progress", action="store_true")
    d = sub.add_parser("build-default", help="train the offline default model if needed, export it (fp32)")
    d.add_argument("--out", type=Path, default=Path("bundles/default"))
    d.add_argument("--config", type=Path, default=REPO / "configs" / "default.yaml")
    d.add_argument("--runs", type=Path, default=REPO / "runs", help="runs folder (default: <repo>/runs)")
    d.add_argument("--force", action="store_true", help="rebuild the bundle even if it exists")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        if args.command == "export":
            export_run(
                args.run_dir, args.out, args.precision, args.loader,
                None if args.no_parity else args.parity_data, args.parity_images, args.parity_limit,
                args.version, not args.no_progress,
            )
        else:
            from exporters.default import build_default

            build_default(args.out, args.config, args.runs, args.force)
    except (MemeguardError, ModelsError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
