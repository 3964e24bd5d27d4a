"""`python -m models.cli train CONFIG.yaml` and `python -m models.cli evaluate RUN_DIR` (also `memeguard train`)."""

import argparse
import os
import sys
from pathlib import Path

from models.errors import ModelsError
from models.paths import REPO_ROOT


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="memeguard", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help="train a config, write runs/<name>/")
    t.add_argument("config", type=Path)
    t.add_argument("--out", type=Path, default=REPO_ROOT / "runs", help="runs folder (default: <repo>/runs)")
    t.add_argument("--epochs", type=int, default=None, help="override training.epochs")
    t.add_argument("--limit", type=int, default=None, help="use only the first N memes of each split (smoke runs)")
    t.add_argument("--extra-data", type=Path, action="append", default=[], metavar="DIR",
                   help="add a SemEval-format dataset (a `memeguard dataset build` folder or its dataset.json) to "
                        "the config's data pool; repeatable. Recorded in the run's config and training_pool.json")
    e = sub.add_parser("evaluate", help="score a run folder, write report.json and PNG plots")
    e.add_argument("run_dir", type=Path)
    e.add_argument("--data", default=None, help="dataset file or split name (default: the config's dev split)")
    e.add_argument("--out", type=Path, default=None, help="report folder (default: RUN_DIR/eval-<data>)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    # Hub weights can never be fetched here; fail fast instead of retrying a network that is not there.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("MPLCONFIGDIR", str(REPO_ROOT / ".cache" / "matplotlib"))
    try:
        if args.command == "train":
            from models.config import load_config
            from models.report import print_train_summary
            from models.train import train

            cfg = load_config(args.config)
            for extra in args.extra_data:  # reviewed memes join the pool: CV, threshold tuning and the final fit
                records = extra / "dataset.json" if extra.is_dir() else extra
                if not records.is_file():
                    raise ModelsError(f"--extra-data {extra}: no dataset.json there (`memeguard dataset build`).")
                cfg.data.pool.append(str(records.resolve()))
                cfg.harm_head.extra.append(str(records.resolve()))  # moderators' block/allow + severity
            if cfg.text_encoder.kind == "tfidf":
                from models.tfidf_svm import train_tfidf_svm

                run_dir = train_tfidf_svm(cfg, args.out, args.limit)
            else:
                run_dir = train(cfg, args.out, epochs=args.epochs, limit=args.limit)
            print_train_summary(run_dir)
            return 0
        from models.evaluate import evaluate

        evaluate(args.run_dir, args.data, args.out)
        return 0
    except ModelsError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
