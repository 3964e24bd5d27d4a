"""The `memeguard` command: moderation worker, tools around it, and (in the training environment) training
and export. Training and export run in their own modules (models.cli, exporters.cli, in a child process) so the
serving side never imports torch."""

import argparse
import subprocess
import sys
from pathlib import Path

from pydantic import ValidationError
from rich.console import Console
from rich.markup import escape

from consumer.errors import MemeguardError

err = Console(stderr=True)

# Commands that need the training environment; forwarded untouched.
TRAINING_COMMANDS = {
    "train": ("models.cli", "train"),
    "evaluate-run": ("models.cli", "evaluate"),
    "export": ("exporters.cli", "export"),
    "bundle": ("exporters.cli", "build-default"),
}
TRAINING_HELP = {
    "train": "train a model config: memeguard train CONFIG",
    "evaluate-run": "evaluate a training run: memeguard evaluate-run RUN",
    "export": "export a run to a bundle: memeguard export RUN --out BUNDLE",
    "bundle": "train and export the default bundle: memeguard bundle --out BUNDLE",
}


def _forward(module: str, command: str, rest: list[str]) -> int:
    return subprocess.call([sys.executable, "-m", module, command, *rest])


def cmd_worker(args: argparse.Namespace) -> int:
    from consumer.settings import WorkerSettings
    from consumer.worker.service import run_worker, run_worker_processes

    if args.processes > 1:
        return run_worker_processes(args.processes, args.cuda_devices.split(",") if args.cuda_devices else None)
    run_worker(WorkerSettings())
    return 0


def cmd_dev(args: argparse.Namespace) -> int:
    from consumer import paths
    from consumer.devinfra.stack import DevStack

    stack = DevStack.at(paths.cache_dir() / "dev", args.kafka_port, args.redis_port, broker=args.broker)
    if args.action == "up":
        stack.up()
        print(f"broker: {stack.broker} (logs in {stack.kafka.state_dir})", file=sys.stderr)
        print(f"MEMEGUARD_KAFKA_BOOTSTRAP={stack.bootstrap}\nMEMEGUARD_REDIS_URL={stack.redis_url}")
    elif args.action == "down":
        stack.down()
        print("broker and redis stopped")
    else:
        for svc in (stack.kafka, stack.redis):
            print(f"{svc.name}: {'running' if svc.running() else 'stopped'} on 127.0.0.1:{svc.port} (log {svc.log_file})")
    return 0


def cmd_produce(args: argparse.Namespace) -> int:
    from consumer import paths
    from consumer.demo.produce import check_images, new_run_id, produce_events, read_folder, read_semeval, to_events
    from consumer.settings import KafkaSettings

    s = KafkaSettings()
    if args.folder:
        sources = read_folder(Path(args.folder))
    else:
        sources = read_semeval(Path(args.data or paths.semeval_dir() / "dev.json"),
                               Path(args.images) if args.images else None)
    sources = sources[: args.limit]
    check_images(sources)
    events = list(to_events(sources, args.run_id or new_run_id(), args.inline, args.labels))
    n = produce_events(s.kafka_bootstrap, args.topic or s.input_topic, events, rate=args.rate)
    print(f"{n} events acknowledged by {s.kafka_bootstrap}")
    if n == 0:  # a script chaining `produce && …` must not go on as if memes were sent
        err.print("[bold red]error:[/] nothing was published (no memes selected)")
        return 1
    return 0


def cmd_tail(args: argparse.Namespace) -> int:
    from rich.live import Live

    from consumer.display import add_outcome, outcome_table
    from consumer.kafka.outputs import read_outputs
    from consumer.settings import KafkaSettings

    s = KafkaSettings()
    # --follow: like `tail -f`, from the newest record on, until Ctrl-C (or --max / --deadline).
    table = outcome_table(f"{s.output_topic} + {s.dlq_topic}" + (" (following)" if args.follow else ""))
    with Live(table, console=Console(), refresh_per_second=4):
        for n, out in enumerate(read_outputs(s.kafka_bootstrap, s.output_topic, s.dlq_topic,
                                             idle_timeout_s=None if args.follow else args.idle,
                                             deadline_s=args.deadline, from_end=args.follow), 1):
            add_outcome(table, out)
            if args.max and n >= args.max:
                break
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from consumer.demo.run import run_demo

    return run_demo(limit=args.limit)


def cmd_replay(args: argparse.Namespace) -> int:
    import asyncio

    from consumer.ops.logs import configure_logging
    from consumer.replay.run import ReplayOptions, replay
    from consumer.settings import WorkerSettings

    s = WorkerSettings()
    configure_logging("text" if args.log_format is None else args.log_format, s.log_level)
    opts = ReplayOptions(
        topic=args.topic, out_dir=Path(args.out), bundle=Path(args.bundle) if args.bundle else None,
        compare_bundle=Path(args.compare_bundle) if args.compare_bundle else None,
        labels_file=Path(args.labels_file) if args.labels_file else None, verdicts_topic=args.verdicts_topic,
        batch_size=args.batch_size, use_cache=not args.no_cache, progress=not args.no_progress,
        metrics_port=args.metrics_port, idle_timeout_s=args.idle_timeout)
    doc = asyncio.run(replay(s, opts))
    for name, r in ([("", doc)] if "a" not in doc else [("A ", doc["a"]), ("B ", doc["b"])]):
        f1 = (f"micro-F1 {r['micro_f1']:.4f}  macro-F1 {r['macro_f1']:.4f}  " if "micro_f1" in r
              else "no labelled events  ")
        if "in_training_data" in r:
            f1 += f"in training data: {r['in_training_data']}  "
        print(f"{name}{r['model']}: {r['n_verdicts']} verdicts, {r['n_dead_letters']} dead letters, {f1}"
              f"cache hit rate {r['cache_hit_rate']}")
    if "comparison" in doc:
        print(f"{doc['comparison']['n_disagreements']} disagreements")
    print(f"report: {Path(args.out) / 'report.json'}  page: {Path(args.out) / 'report.html'}")
    return 0


def cmd_alert(args: argparse.Namespace) -> int:
    from consumer.alert.run import run_alerter
    from consumer.ops.logs import configure_logging
    from consumer.settings import AlertSettings

    overrides = {"alert_rules_file": Path(args.rules)} if args.rules else {}
    s = AlertSettings(**overrides)
    configure_logging(s.log_format, s.log_level)
    run_alerter(s, exit_when_idle_s=args.exit_when_idle)
    return 0


def cmd_review(args: argparse.Namespace) -> int:
    import uvicorn

    from consumer.kafka.topics import prepare_topics, wait_for_broker
    from consumer.ops.logs import configure_logging, logging_config
    from consumer.review.app import create_app
    from consumer.review.ingest import ReviewIngest
    from consumer.review.store import ReviewStore
    from consumer.settings import ReviewSettings

    s = ReviewSettings()
    configure_logging(s.log_format, s.log_level)
    wait_for_broker(s.kafka_bootstrap, s.startup_timeout_s)
    prepare_topics(s, [s.reviews_topic])
    store = ReviewStore(s.redis_url)
    ingest = ReviewIngest(s.kafka_bootstrap, s.review_group_id, s.input_topic, s.output_topic, store).start()
    try:
        uvicorn.run(create_app(s, store), host=args.host or s.review_host, port=args.port or s.review_port,
                    log_config=logging_config(s.log_format, s.log_level))
    finally:
        ingest.stop()
    return 0


def cmd_rollout(args: argparse.Namespace) -> int:
    from rich.table import Table

    from consumer.settings import KafkaSettings
    from consumer.worker.rollout import roll_back, roll_out, wait_for_fleet

    s = KafkaSettings()
    command = roll_out(s, args.bundle_uri) if args.command == "rollout" else roll_back(s)
    print(f"revision {command.revision}: {command.model_version} from {command.bundle_uri} on {s.control_topic}")
    if args.no_wait:
        return 0
    report = wait_for_fleet(s, command.revision or 0, args.timeout, args.expect)
    table = Table(title=f"fleet at revision {command.revision}")
    for column in ("worker", "state", "revision", "model", "error"):
        table.add_column(column)
    for worker, st in sorted(report.statuses.items()):
        state = st.state if worker in report.answered else f"{st.state} (no answer yet)"
        table.add_row(worker, state, str(st.revision), st.model_version, escape(st.error or ""))
    Console().print(table)
    if not report.statuses:
        err.print(f"[bold red]error:[/] no worker answered within {args.timeout:.0f}s")
    elif len(report.statuses) < args.expect:
        err.print(f"[bold red]error:[/] {len(report.statuses)} of the {args.expect} expected workers answered")
    elif not report.all_ok:
        bad = sum(not report.ok(w) for w in report.statuses)
        err.print(f"[bold red]error:[/] {bad} worker(s) do not serve revision {command.revision}")
    return 0 if report.all_ok and len(report.statuses) >= args.expect else 1


def cmd_schemas(args: argparse.Namespace) -> int:
    from schemas.jsonschema import export_json_schemas

    for path in export_json_schemas(Path(args.dir)):
        print(path)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="memeguard", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    worker = sub.add_parser("worker", help="run the moderation worker (settings from MEMEGUARD_* variables)")
    worker.add_argument("--processes", type=int, default=1, metavar="N",
                   help="N consumer-group members on this host, one process (and model session) each")
    worker.add_argument("--cuda-devices", metavar="0,1",
                   help="with --processes: CUDA devices handed to the members round-robin (default: all share)")
    worker.set_defaults(func=cmd_worker)

    dev = sub.add_parser("dev", help="embedded broker + redis on loopback")
    dev.add_argument("action", choices=["up", "down", "status"])
    dev.add_argument("--kafka-port", type=int, default=19092)
    dev.add_argument("--redis-port", type=int, default=16379)
    dev.add_argument("--broker", choices=["kafka", "tansu"], default=None,
                     help="up: Apache Kafka (KRaft, JVM) or Tansu; default: the one running, else "
                          "MEMEGUARD_DEV_BROKER (kafka)")
    dev.set_defaults(func=cmd_dev)

    prod = sub.add_parser("produce", help="publish memes (SemEval-format file or an image folder) as MemeEvents")
    prod.add_argument("--data", help="SemEval-format JSON (default: the shipped dev split)")
    prod.add_argument("--images", help="images folder (default: images/ beside --data)")
    prod.add_argument("--folder", help="publish every image in this folder instead (no text)")
    prod.add_argument("--limit", type=int)
    prod.add_argument("--rate", type=float, help="events per second (default: as fast as possible)")
    prod.add_argument("--inline", action="store_true", help="embed images as base64 instead of file:// URLs")
    prod.add_argument("--labels", action="store_true", help="carry gold labels (for replay evaluation)")
    prod.add_argument("--run-id", help="event id prefix (default: random)")
    prod.add_argument("--topic")
    prod.set_defaults(func=cmd_produce)

    tail = sub.add_parser("tail", help="print verdicts and dead letters as a table")
    tail.add_argument("--max", type=int, help="stop after this many")
    tail.add_argument("--idle", type=float, default=5.0, help="stop after this many seconds without news")
    tail.add_argument("-f", "--follow", action="store_true",
                      help="only new verdicts from now on, and keep waiting for more (Ctrl-C stops)")
    tail.add_argument("--deadline", type=float, default=3600.0)
    tail.set_defaults(func=cmd_tail)

    demo = sub.add_parser("demo", help="end to end: broker, redis, default bundle, 63 dev memes → verdicts")
    demo.add_argument("--limit", type=int)
    demo.set_defaults(func=cmd_demo)

    rp = sub.add_parser("replay", help="evaluate a bundle on a labelled topic: verdicts, report.json, report.html")
    rp.add_argument("--topic", required=True, help="topic of labelled MemeEvents (memeguard produce --labels)")
    rp.add_argument("--out", required=True, help="output folder")
    rp.add_argument("--bundle", help="bundle to evaluate (default: MEMEGUARD_BUNDLE_PATH)")
    rp.add_argument("--compare-bundle", help="a second bundle, replayed on the same events and compared")
    rp.add_argument("--labels-file", help="JSON/JSONL {id, labels} joined by event id or post id")
    rp.add_argument("--verdicts-topic", help="also publish the verdicts to this topic")
    rp.add_argument("--batch-size", type=int, default=32)
    rp.add_argument("--no-cache", action="store_true", help="do not read or write the Redis verdict cache")
    rp.add_argument("--no-progress", action="store_true")
    rp.add_argument("--metrics-port", type=int, default=0, help="serve /metrics while replaying (0 = off)")
    rp.add_argument("--idle-timeout", type=float, default=60.0, help="give up after this long without records")
    rp.add_argument("--log-format", choices=["text", "json"])
    rp.set_defaults(func=cmd_replay)

    al = sub.add_parser("alert", help="raise alerts from verdicts (YAML rules) to a topic and webhooks")
    al.add_argument("--rules", help="rules YAML (default: MEMEGUARD_ALERT_RULES_FILE)")
    al.add_argument("--exit-when-idle", type=float, help="stop after this many seconds without verdicts")
    al.set_defaults(func=cmd_alert)

    rv = sub.add_parser("review", help="moderator review page for verdicts with decision `review`")
    rv.add_argument("--host", help="default: MEMEGUARD_REVIEW_HOST (127.0.0.1)")
    rv.add_argument("--port", type=int, help="default: MEMEGUARD_REVIEW_PORT (8080)")
    rv.set_defaults(func=cmd_review)

    for name, what in (("rollout", "roll a bundle out to every worker (control topic) and report who serves it"),
                       ("rollback", "roll the fleet back to the revision before the current one")):
        ro = sub.add_parser(name, help=what)
        if name == "rollout":
            ro.add_argument("bundle_uri", help="bundle directory every worker can read: a path or file:///path")
        ro.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for the workers' answers")
        ro.add_argument("--expect", type=int, default=0, metavar="N", help="fail unless at least N workers answer")
        ro.add_argument("--no-wait", action="store_true", help="publish and return")
        ro.set_defaults(func=cmd_rollout)

    schemas = sub.add_parser("schemas", help="JSON Schema of every wire contract")
    schemas.add_argument("action", choices=["export"])
    schemas.add_argument("dir")
    schemas.set_defaults(func=cmd_schemas)

    from consumer.learning.cli import register as register_learning

    register_learning(sub)  # dataset, calibrate, shadow, compare, promote (consumer/learning/)

    # Parsed by their own modules (main() hands them the rest of the line); listed here for the help.
    sub.add_parser("evaluate", add_help=False, help="evaluate a bundle through the serving runtime: "
                   "memeguard evaluate --bundle B --data FILE.json --images DIR --out DIR (HarMeme .jsonl: no --images)")
    sub.add_parser("hash-password", add_help=False, help="print a scrypt hash for MEMEGUARD_REVIEW_USERS: "
                   "memeguard hash-password [USER] (password from the terminal or stdin)")
    for name, what in TRAINING_HELP.items():
        sub.add_parser(name, add_help=False, help=f"(training environment) {what}")
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in TRAINING_COMMANDS:
        return _forward(*TRAINING_COMMANDS[argv[0]], argv[1:])
    if argv and argv[0] == "evaluate":
        from consumer.evaluate.run import main as evaluate_main

        return evaluate_main(argv[1:])
    if argv and argv[0] == "hash-password":
        from consumer.review.auth import main as auth_main

        return auth_main(argv)
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except MemeguardError as e:
        err.print(f"[bold red]error:[/] {e}")
        return 2
    except ValidationError as e:  # a MEMEGUARD_* setting that does not parse: name it, no traceback
        for problem in e.errors():
            names = [str(part) for part in problem["loc"] if isinstance(part, str)]
            items = [f"item {part + 1}" for part in problem["loc"] if isinstance(part, int)]  # within a list
            where = "_".join(names).upper()
            message = problem["msg"].removeprefix("Value error, ")
            if items:
                message = f"{', '.join(items)}: {message}"
            err.print("[bold red]invalid setting:[/] " + escape(f"MEMEGUARD_{where}: {message}" if where else message))
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
