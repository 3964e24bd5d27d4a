"""The learning-loop commands, registered on `memeguard` by consumer/cli.py: dataset, calibrate, shadow, compare,
promote. Kafka settings come from the same MEMEGUARD_* variables as the worker."""

import argparse
import json
import sys
from pathlib import Path

from rich.console import Console

out = Console()
err = Console(stderr=True)


def _policy(path: str | None):
    """The override policy (`--policy`, else MEMEGUARD_POLICY_FILE), or None: each bundle's own policy decides."""
    from consumer.core.policy import load_policy_file
    from consumer.settings import WorkerSettings

    return load_policy_file(Path(path) if path else WorkerSettings().policy_file)


def cmd_dataset(args: argparse.Namespace) -> int:
    import os

    from consumer.learning.dataset import Sources, build_dataset, fetch_policy_from_env
    from consumer.review.settings import ReviewSettings
    from consumer.settings import KafkaSettings

    s = KafkaSettings()  # not ReviewSettings: building a dataset needs none of the page's sign-in settings
    reviews = (args.reviews_topic or os.environ.get("MEMEGUARD_REVIEWS_TOPIC")
               or ReviewSettings.model_fields["reviews_topic"].default)
    sources = Sources(reviews, args.verdict_topic or s.output_topic, args.input_topic or s.input_topic)
    manifest = build_dataset(s.kafka_bootstrap, sources, Path(args.out), fetch_policy_from_env(),
                             progress=not args.no_progress)
    out.print(f"dataset: {manifest['records']} records {manifest['decisions']} in {args.out} "
              f"({len(manifest['disagreements'])} disagreements, {len(manifest['skipped'])} skipped)")
    return 0


def cmd_calibrate(args: argparse.Namespace) -> int:
    import os

    from consumer.core.policy import load_policy_file
    from consumer.learning.calibrate import before_after_table, calibrate

    start = load_policy_file(Path(args.policy)) if args.policy else None  # default: the bundle's own policy
    bundle, report = calibrate(
        Path(args.bundle), Path(args.data), Path(args.out), args.target_review_rate, args.target_precision,
        start, images=Path(args.images) if args.images else None, base_rate=args.base_rate,
        holdout=args.holdout, seed=args.seed, min_blocked=args.min_blocked, version=args.version,
        progress=not args.no_progress)
    c = bundle.manifest.calibration
    origin = "--base-rate" if c.base_rate_from == "flag" else "the fitting part's harmful share"
    p = f"{c.base_rate:.3g} ({origin})"
    out.print(f"calibrated on {c.data}; base rate {p}; target {c.target} "
              f"{'met' if c.target_met else '[bold red]NOT met[/] on the fitting part (closest policy written)'}",
              markup=not any(ch in c.data for ch in "[]"), soft_wrap=True)
    for note in report["notes"]:
        out.print(f"  {note}", markup=False)
    out.print(before_after_table(report), markup=False, soft_wrap=True)
    out.print(f"new bundle {bundle.manifest.name}@{bundle.manifest.version} (policy {bundle.manifest.policy.id}) "
              f"-> {args.out}; technique thresholds unchanged")
    if os.environ.get("MEMEGUARD_POLICY_FILE"):
        err.print("[yellow]note:[/] MEMEGUARD_POLICY_FILE is set: where it is, it overrides every bundle's policy, "
                  "this one's included")
    return 0 if c.target_met else 1


def cmd_shadow(args: argparse.Namespace) -> int:
    from consumer.learning.shadow import ShadowOptions, run_shadow
    from consumer.ops.logs import configure_logging
    from consumer.settings import WorkerSettings

    settings = WorkerSettings()
    configure_logging(settings.log_format, settings.log_level)
    opts = ShadowOptions(bundle=Path(args.bundle), sample=args.sample, shadow_topic=args.shadow_topic,
                         group_id=args.group, idle_exit_s=args.idle_exit, max_records=args.max_records)
    stats = run_shadow(settings, opts)
    err.print(f"shadow: read {stats.read}, sampled {stats.sampled}, verdicts {stats.verdicts}, "
              f"dead letters {dict(stats.dead_letters)}")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from consumer.learning.compare import compare_topics, format_comparison
    from consumer.settings import KafkaSettings

    s = KafkaSettings()
    report = compare_topics(s.kafka_bootstrap, args.production_topic or s.output_topic, args.shadow_topic)
    out.print(format_comparison(report), markup=False)
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=1, sort_keys=True))
    return 0


def cmd_promote(args: argparse.Namespace) -> int:
    from consumer.learning.promote import Gate, evaluate_gate, roll_out
    from consumer.settings import WorkerSettings

    s = WorkerSettings()
    gate = Gate(args.max_f1_drop, args.min_support, args.max_precision_drop, args.review_budget,
                args.max_recall_drop)
    checks, details = evaluate_gate(Path(args.current or s.bundle_path), Path(args.candidate), Path(args.data),
                                    Path(args.images) if args.images else None, gate, _policy(args.policy),
                                    progress=not args.no_progress)
    for c in checks:
        out.print(f"{'PASS' if c.passed else 'FAIL'}  {c.name}: {c.detail}", markup=False)
    passed = all(c.passed for c in checks)
    if args.report:
        Path(args.report).write_text(json.dumps({"passed": passed, "checks": [c.__dict__ for c in checks],
                                                 **details}, indent=1, sort_keys=True, default=str))
    if not passed:
        err.print("[bold red]gate failed:[/] nothing rolled out")
        return 1
    if args.dry_run:
        out.print("gate passed; --dry-run: nothing rolled out")
        return 0
    command = roll_out(s, Path(args.candidate), Path(args.link) if args.link else None)
    out.print(f"gate passed; fleet revision {command.revision} ({command.bundle_uri}) published on {s.control_topic}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    ds = sub.add_parser("dataset", help="build a labelled SemEval-format dataset from moderator reviews")
    ds.add_argument("action", choices=["build"])
    ds.add_argument("--reviews-topic", help="default: MEMEGUARD_REVIEWS_TOPIC (memes.reviews)")
    ds.add_argument("--verdict-topic", help="default: MEMEGUARD_OUTPUT_TOPIC")
    ds.add_argument("--input-topic", help="default: MEMEGUARD_INPUT_TOPIC")
    ds.add_argument("--out", required=True)
    ds.add_argument("--no-progress", action="store_true")
    ds.set_defaults(func=cmd_dataset)

    cal = sub.add_parser("calibrate", help="fit a bundle's decision policy to a review budget on labelled data; "
                                           "write a new bundle version (technique thresholds unchanged)")
    cal.add_argument("--bundle", required=True, help="the bundle to start from (its graph and thresholds are kept)")
    cal.add_argument("--data", required=True,
                     help="a `dataset build` folder, a SemEval-format file with images, or a HarMeme .jsonl")
    cal.add_argument("--images", help="images folder (default: images/ beside the records)")
    cal.add_argument("--target-review-rate", type=float,
                     help="largest expected share of review + block decisions at the base rate")
    cal.add_argument("--target-precision", type=float, help="smallest block precision at the base rate")
    cal.add_argument("--base-rate", type=float,
                     help="expected share of harmful memes on the feed (default: the data's own share)")
    cal.add_argument("--holdout", type=float, default=0.3, help="share of the data held back from the fit")
    cal.add_argument("--seed", type=int, default=0, help="seed of the held-back split")
    cal.add_argument("--min-blocked", type=int, default=10,
                     help="fewest memes of the fitting part a precision-fitted block rule must block")
    cal.add_argument("--out", required=True, help="the new bundle's folder")
    cal.add_argument("--policy", help="policy YAML to start from (default: the bundle's own policy)")
    cal.add_argument("--version", help="the new bundle's version (default: the patch number + 1)")
    cal.add_argument("--no-progress", action="store_true", help="no progress bar")
    cal.set_defaults(func=cmd_calibrate)

    sh = sub.add_parser("shadow", help="run a candidate bundle on a sample of live traffic into a shadow topic")
    sh.add_argument("--bundle", required=True)
    sh.add_argument("--sample", type=float, default=0.1, help="share of traffic (deterministic, by content)")
    sh.add_argument("--shadow-topic", default="memes.shadow")
    sh.add_argument("--group", default="memeguard-shadow", help="its own consumer group")
    sh.add_argument("--idle-exit", type=float, help="stop after this many seconds without records")
    sh.add_argument("--max-records", type=int)
    sh.set_defaults(func=cmd_shadow)

    cmp_ = sub.add_parser("compare", help="production vs shadow verdicts on the same events")
    cmp_.add_argument("--production-topic", help="default: MEMEGUARD_OUTPUT_TOPIC")
    cmp_.add_argument("--shadow-topic", default="memes.shadow")
    cmp_.add_argument("--out", help="also write the report as JSON here")
    cmp_.set_defaults(func=cmd_compare)

    pr = sub.add_parser("promote", help="gate a candidate on labelled data, then hot-reload it fleet-wide")
    pr.add_argument("--candidate", required=True)
    pr.add_argument("--data", required=True)
    pr.add_argument("--images")
    pr.add_argument("--current", help="the bundle serving now (default: MEMEGUARD_BUNDLE_PATH)")
    pr.add_argument("--max-f1-drop", type=float, default=0.02)
    pr.add_argument("--min-support", type=int, default=5, help="positives a technique needs to be gated on")
    pr.add_argument("--max-precision-drop", type=float, default=0.02)
    pr.add_argument("--review-budget", type=float,
                    help="the deployment's review budget (default: the serving bundle's calibrated target; never "
                         "the candidate's own)")
    pr.add_argument("--max-recall-drop", type=float, default=0.05,
                    help="largest allowed fall of block recall and of the share of blocked memes caught")
    pr.add_argument("--policy", help="decision policy YAML (default: MEMEGUARD_POLICY_FILE)")
    pr.add_argument("--link", help="also re-point this symlink (the workers' MEMEGUARD_BUNDLE_PATH) at it")
    pr.add_argument("--dry-run", action="store_true", help="run the gate only")
    pr.add_argument("--report", help="write the gate's figures as JSON here")
    pr.add_argument("--no-progress", action="store_true")
    pr.set_defaults(func=cmd_promote)


if __name__ == "__main__":  # pragma: no cover - `memeguard` is the entry point
    sys.exit("use `memeguard dataset|calibrate|shadow|compare|promote`")
