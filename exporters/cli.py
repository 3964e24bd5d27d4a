"""`python -m exporters.cli export RUN_DIR --out BUNDLE` and `build-default` (into `.cache/bundles/default` unless `--out`).

Both run in the training environment (torch); `memeguard export` / `memeguard bundle` forward here.
"""

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from consumer.errors import MemeguardError
from consumer.paths import default_bundle_dir

# exporters.run and exporters.default import torch (seconds): only once a command runs, so --help is instant.
from exporters.memes import DEFAULT_DATA, DEFAULT_LOADER

REPO = Path(__file__).resolve().parents[1]


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
    d.add_argument("--out", type=Path, default=default_bundle_dir(),
                   help="bundle folder (default: the one the worker serves, .cache/bundles/default)")
    d.add_argument("--config", type=Path, default=REPO / "configs" / "default.yaml")
    d.add_argument("--runs", type=Path, default=REPO / "runs", help="runs folder (default: <repo>/runs)")
    d.add_argument("--force", action="store_true", help="rebuild the bundle even if it exists")
    d.add_argument("--precision", choices=["fp32", "fp16", "int8"], default="fp32",
                   help="fp32 (default) / int8 (about 1.6x faster on CPU; -0.008 dev micro-F1, docs/models.md) / fp16")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        if args.command == "export":
            from exporters.run import export_run

            export_run(
                args.run_dir, args.out, args.precision, args.loader,
                None if args.no_parity else args.parity_data, args.parity_images, args.parity_limit,
                args.version, not args.no_progress,
            )
        else:
            from exporters.default import build_default

            build_default(args.out, args.config, args.runs, args.force, args.precision)
    except MemeguardError as e:  # models.errors.ModelsError is one too
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
