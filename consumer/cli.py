"""The `memeguard` command: moderation worker, tools around it, and (in the training environment) training
and export. Training and export run in their own modules (models.cli, exporters.cli, in a child process) so the
serving side never imports torch."""

import argparse
import os
import subprocess
import sys
from collections.abc import Callable
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


def _forward(outer: str, module: str, command: str, rest: list[str]) -> int:
    """Run a training-environment command in its own module. Its help names it as the user typed it
    (`memeguard bundle`, not the module's own `memeguard build-default`)."""
    if "-h" in rest or "--help" in rest:
        import re

        done = subprocess.run([sys.executable, "-m", module, command, *rest], capture_output=True, text=True)
        rename = re.compile(rf"\bmemeguard {re.escape(command)}(?![\w-])")
        sys.stdout.write(rename.sub(f"memeguard {outer}", done.stdout))
        sys.stderr.write(rename.sub(f"memeguard {outer}", done.stderr))
        return done.returncode
    return subprocess.call([sys.executable, "-m", module, command, *rest])


def _positive(kind: type) -> "Callable[[str], float]":
    """An argparse type: a number above zero (a rate of -5 or a limit of 0 is a typo, not a request)."""

    def parse(text: str) -> float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if not value > 0:
            raise argparse.ArgumentTypeError(f"must be greater than 0, not {text}")
        return value

    parse.__name__ = kind.__name__
    return parse


def cmd_worker(args: argparse.Namespace) -> int:
    from consumer.settings import WorkerSettings
    from consumer.worker.service import run_worker
    from consumer.worker.supervisor import run_worker_processes

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
    from consumer.demo.produce import (
        check_file_root,
        check_images,
        new_run_id,
        produce_events,
        read_folder,
        read_semeval,
        to_events,
    )
    from consumer.kafka.topics import prepare_topics, wait_for_broker
    from consumer.settings import WorkerSettings

    s = WorkerSettings()  # the worker's file root and image formats decide what it will accept
    if args.folder:
        sources, skipped = read_folder(Path(args.folder), s.image_formats)
        if skipped:
            kinds = ", ".join(sorted({p.suffix.lower() for p in skipped}))
            err.print(escape(f"note: skipped {len(skipped)} file(s) ({kinds}) in {args.folder}, e.g. "
                             f"{skipped[0].name}: the worker decodes only {', '.join(s.image_formats)} "
                             "(MEMEGUARD_IMAGE_FORMATS)"), soft_wrap=True)
    else:
        sources = read_semeval(Path(args.data or paths.semeval_dir() / "dev.json"),
                               Path(args.images) if args.images else None)
    sources = sources[: args.limit]
    check_images(sources)
    if not args.inline:
        check_file_root(sources, s.file_root)
    events = list(to_events(sources, args.run_id or new_run_id(), args.inline, args.labels))
    topic = args.topic or s.input_topic
    if events:  # a missing topic follows MEMEGUARD_CREATE_TOPICS, never the broker's auto-creation
        wait_for_broker(s.kafka_bootstrap, s.connect_timeout_s)
        prepare_topics(s, [topic])
    n = produce_events(s.kafka_bootstrap, topic, events, rate=args.rate) if events else 0
    print(f"{n} events acknowledged by {s.kafka_bootstrap}")
    if n == 0:  # a script chaining `produce && …` must not go on as if memes were sent
        err.print("[bold red]error:[/] nothing was published (no memes selected)")
        return 1
    return 0


def cmd_tail(args: argparse.Namespace) -> int:
    import json

    from rich.live import Live

    from consumer.display import add_outcome, outcome_line, outcome_table
    from consumer.kafka.outputs import decode_output, read_records
    from consumer.settings import KafkaSettings

    s = KafkaSettings()
    topics = args.topic or [s.output_topic, s.dlq_topic]
    kinds = {s.output_topic: "verdict", s.dlq_topic: "dead_letter"}

    def ready(present: list[str], missing: list[str]) -> None:
        for topic in missing:
            print(f"note: topic {topic} does not exist on {s.kafka_bootstrap} (yet)", file=sys.stderr, flush=True)
        if args.follow:  # after the assignment: a record published from here on is printed
            print(f"following {', '.join(present) or '(no topic)'} from now on (Ctrl-C stops)", file=sys.stderr,
                  flush=True)

    records = read_records(s.kafka_bootstrap, topics, last=None if args.follow else args.max, follow=args.follow,
                           deadline_s=args.deadline, on_ready=ready)
    as_table = not args.json and sys.stdout.isatty()  # a pipe gets one line per record, flushed as it comes
    table = outcome_table(", ".join(topics) + (" (following)" if args.follow else ""))
    live = Live(table, console=Console(), refresh_per_second=4) if as_table else None
    if live is not None:
        live.start()
    try:
        for n, record in enumerate(records, 1):
            if args.json:
                print(json.dumps(decode_output(record.value), separators=(",", ":")), flush=True)
            else:
                out = decode_output(record.value, kinds.get(record.topic))
                if live is not None:
                    add_outcome(table, out, record.topic)
                else:
                    print(outcome_line(out, record.topic), flush=True)
            if args.follow and args.max and n >= args.max:
                break
    finally:
        if live is not None:
            live.stop()
    return 0


def cmd_hash_password(args: argparse.Namespace) -> int:
    from consumer.review.auth import main as auth_main

    return auth_main(["hash-password", *([args.user] if args.user else [])])


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
    from consumer.review.settings import ReviewSettings
    from consumer.review.store import ReviewStore

    s = ReviewSettings()
    configure_logging(s.log_format, s.log_level)
    wait_for_broker(s.kafka_bootstrap, s.startup_timeout_s)
    prepare_topics(s, [s.reviews_topic])
    store = ReviewStore(s.redis_url)
    ingest = ReviewIngest.for_page(s, store, rebuild_now=args.rebuild).start()
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
    restores = ("" if command.restores is None else " (the bundle served before revision 1)" if command.restores == 0
                else f" (restores revision {command.restores})")
    print(f"revision {command.revision}: {command.model_version} from {command.bundle_uri} on {s.control_topic}"
          f"{restores}")
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
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error (anywhere on the line)")
    parser.add_argument("--verbose", action="store_true",
                        help="also show the Kafka client's own (librdkafka) log lines (anywhere on the line)")
    sub = parser.add_subparsers(dest="command", required=True)
    worker = sub.add_parser("worker", help="run the moderation worker (settings from MEMEGUARD_* variables)")
    worker.add_argument("--processes", type=int, default=1, metavar="N",
                   help="N consumer-group members on this host, one process (and model session) each")
    worker.add_argument("--cuda-devices", metavar="0,1",
                   help="with --processes: CUDA devices handed to the members round-robin (default: all share)")
    worker.set_defaults(func=cmd_worker)

    dev = sub.add_parser("dev", help="embedded broker + redis on loopback")
    dev.add_argument("action", choices=["up", "down", "status"], help="start, stop, or show the broker and redis")
    dev.add_argument("--kafka-port", type=int, default=19092, help="broker port on 127.0.0.1 (default: 19092)")
    dev.add_argument("--redis-port", type=int, default=16379, help="redis-server port on 127.0.0.1 (default: 16379)")
    dev.add_argument("--broker", choices=["kafka", "tansu"], default=None,
                     help="up: Apache Kafka (KRaft, JVM) or Tansu; default: the one running, else "
                          "MEMEGUARD_DEV_BROKER (kafka)")
    dev.set_defaults(func=cmd_dev)

    prod = sub.add_parser("produce", help="publish memes (SemEval-format file or an image folder) as MemeEvents")
    prod.add_argument("--data", help="SemEval-format JSON (default: the shipped dev split)")
    prod.add_argument("--images", help="images folder (default: images/ beside --data)")
    prod.add_argument("--folder", help="publish every image in this folder instead (no text; formats the worker "
                                       "does not decode are skipped with a note)")
    prod.add_argument("--limit", type=int, metavar="N", help="publish only the first N memes (default: all)")
    prod.add_argument("--rate", type=_positive(float), metavar="PER_S",
                      help="events per second, > 0 (default: as fast as possible)")
    prod.add_argument("--inline", action="store_true",
                      help="embed images as base64 instead of file:// URLs (needed for images outside the "
                           "worker's MEMEGUARD_FILE_ROOT)")
    prod.add_argument("--labels", action="store_true", help="carry gold labels (for replay evaluation)")
    prod.add_argument("--run-id", help="event id prefix (default: random)")
    prod.add_argument("--topic", help="topic to publish to (default: MEMEGUARD_INPUT_TOPIC, memes.raw); a missing "
                                      "one is created only as MEMEGUARD_CREATE_TOPICS allows")
    prod.set_defaults(func=cmd_produce)

    tail = sub.add_parser("tail", help="print verdicts and dead letters (or any topic's records) as a table or JSON")
    tail.add_argument("--max", type=_positive(int), metavar="N",
                      help="the newest N records (with -f: stop after N new ones); default: all")
    tail.add_argument("-f", "--follow", action="store_true",
                      help="only new records from now on, and keep waiting for more (Ctrl-C stops)")
    tail.add_argument("--topic", action="append", metavar="TOPIC",
                      help="read this topic instead (repeatable), e.g. memeguard.alerts, memes.shadow, memes.reviews; "
                           "default: MEMEGUARD_OUTPUT_TOPIC and MEMEGUARD_DLQ_TOPIC")
    tail.add_argument("--json", action="store_true", help="one JSON record per line (for jq), instead of a table")
    tail.add_argument("--deadline", type=float, default=3600.0, metavar="S",
                      help="stop after this many seconds in any case (default: 3600)")
    tail.set_defaults(func=cmd_tail)

    demo = sub.add_parser("demo", help="end to end: broker, redis, default bundle, 63 dev memes → verdicts")
    demo.add_argument("--limit", type=int, metavar="N", help="moderate only the first N memes (default: all 63)")
    demo.set_defaults(func=cmd_demo)

    rp = sub.add_parser("replay", help="evaluate a bundle on a labelled topic: verdicts, report.json, report.html")
    rp.add_argument("--topic", required=True, help="topic of labelled MemeEvents (memeguard produce --labels)")
    rp.add_argument("--out", required=True, help="output folder")
    rp.add_argument("--bundle", help="bundle to evaluate (default: MEMEGUARD_BUNDLE_PATH)")
    rp.add_argument("--compare-bundle", help="a second bundle, replayed on the same events and compared")
    rp.add_argument("--labels-file", help="JSON/JSONL {id, labels} joined by event id or post id")
    rp.add_argument("--verdicts-topic", help="also publish the verdicts to this topic")
    rp.add_argument("--batch-size", type=int, default=32, help="events per model call (default: 32)")
    rp.add_argument("--no-cache", action="store_true", help="do not read or write the Redis verdict cache")
    rp.add_argument("--no-progress", action="store_true", help="no progress bar")
    rp.add_argument("--metrics-port", type=int, default=0, help="serve /metrics while replaying (0 = off)")
    rp.add_argument("--idle-timeout", type=float, default=60.0, help="give up after this long without records")
    rp.add_argument("--log-format", choices=["text", "json"], help="log lines as text (default) or JSON")
    rp.set_defaults(func=cmd_replay)

    al = sub.add_parser("alert", help="raise alerts from verdicts (YAML rules) to a topic and webhooks")
    al.add_argument("--rules", help="rules YAML (default: MEMEGUARD_ALERT_RULES_FILE)")
    al.add_argument("--exit-when-idle", type=float, help="stop after this many seconds without verdicts")
    al.set_defaults(func=cmd_alert)

    rv = sub.add_parser("review", help="moderator review page for verdicts with decision `review`")
    rv.add_argument("--host", help="default: MEMEGUARD_REVIEW_HOST (127.0.0.1)")
    rv.add_argument("--port", type=int, help="default: MEMEGUARD_REVIEW_PORT (8080)")
    rv.add_argument("--rebuild", action="store_true",
                    help="rebuild the queue from the verdicts and reviews topics before serving (done by itself "
                         "when Redis lost the queue)")
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
    schemas.add_argument("action", choices=["export"], help="write one JSON Schema file per contract")
    schemas.add_argument("dir", help="output folder")
    schemas.set_defaults(func=cmd_schemas)

    hp = sub.add_parser("hash-password", help="print a scrypt hash for MEMEGUARD_REVIEW_USERS: "
                        "memeguard hash-password [USER] (password from the terminal or stdin)",
                        description="Print a scrypt hash of a password read from the terminal (asked twice) or "
                                    "from the first line of stdin, for MEMEGUARD_REVIEW_USERS.")
    hp.add_argument("user", nargs="?", metavar="USER",
                    help='print {"USER": hash}, ready for MEMEGUARD_REVIEW_USERS (default: the hash alone)')
    hp.set_defaults(func=cmd_hash_password)

    from consumer.learning.cli import register as register_learning

    register_learning(sub)  # dataset, calibrate, shadow, compare, promote (consumer/learning/)

    # Parsed by their own modules (main() hands them the rest of the line); listed here for the help.
    sub.add_parser("evaluate", add_help=False, help="evaluate a bundle through the serving runtime: "
                   "memeguard evaluate --bundle B --data FILE.json --images DIR --out DIR (HarMeme .jsonl: no --images)")
    for name, what in TRAINING_HELP.items():
        sub.add_parser(name, add_help=False, help=f"(training environment) {what}")
    return parser


# One-shot commands that talk to the broker: before they start, the broker must answer within
# MEMEGUARD_CONNECT_TIMEOUT_S, else one sentence. (The services wait MEMEGUARD_STARTUP_TIMEOUT_S themselves;
# produce, rollout and rollback check their input first, then wait MEMEGUARD_CONNECT_TIMEOUT_S.)
BROKER_COMMANDS = {"tail", "replay", "dataset", "shadow", "compare", "promote"}
# Commands that use MEMEGUARD_REDIS_URL (verdict cache, crash-loop breaker, alert windows, review store).
REDIS_COMMANDS = {"worker", "replay", "alert", "review", "shadow", "demo"}
GLOBAL_FLAGS = ("--debug", "--verbose")


def _say(label: str, message: str) -> None:
    """One line on stderr, however long: no wrapping, no newlines from the message."""
    err.print(f"[bold red]{label}[/] " + escape(" ".join(str(message).split())), soft_wrap=True)


def _check_environment(command: str) -> None:
    """Settings read deep inside (logging's dictConfig, redis-py), checked before any work: a bad value is one
    sentence (exit 2), not a traceback."""
    from consumer.ops.logs import check_log_level

    check_log_level(os.environ.get("MEMEGUARD_LOG_LEVEL", "info"))
    if command in REDIS_COMMANDS:
        check_redis_url(os.environ.get("MEMEGUARD_REDIS_URL", ""))


def _preflight(args: argparse.Namespace) -> None:
    """A one-shot command's broker answers within MEMEGUARD_CONNECT_TIMEOUT_S, or one sentence: not 30 s of
    librdkafka retries and a traceback from whichever call hit it first."""
    if args.command in BROKER_COMMANDS and not getattr(args, "dry_run", False):
        from consumer.kafka.topics import wait_for_broker
        from consumer.settings import KafkaSettings

        s = KafkaSettings()
        wait_for_broker(s.kafka_bootstrap, s.connect_timeout_s)


def check_redis_url(url: str) -> None:
    from consumer.errors import ConfigError

    url = url.strip()
    scheme, sep, rest = url.partition("://")
    if url and (not sep or scheme.lower() not in ("redis", "rediss", "unix")):
        where = (rest if sep else url) or "127.0.0.1:6379"
        raise ConfigError(f"MEMEGUARD_REDIS_URL {url!r} is not a Redis URL: write it with its scheme, e.g. "
                          f"redis://{where}{'' if '/' in where else '/0'} (rediss:// for TLS, unix:// for a "
                          "socket), or set it empty to run without Redis.")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    flags = set()
    while argv and argv[0] in GLOBAL_FLAGS:
        flags.add(argv.pop(0))
    if argv and argv[0] not in TRAINING_COMMANDS:  # a training command's line goes on untouched
        flags |= {a for a in argv if a in GLOBAL_FLAGS}
        argv = [a for a in argv if a not in GLOBAL_FLAGS]
    debug = "--debug" in flags
    if "--verbose" in flags:  # librdkafka's own log lines, for every Kafka client of this process and its children
        os.environ["MEMEGUARD_KAFKA_CLIENT_LOGS"] = "true"
    if argv and argv[0] in TRAINING_COMMANDS:
        return _forward(argv[0], *TRAINING_COMMANDS[argv[0]], argv[1:])
    try:
        if not {"-h", "--help"} & set(argv):
            _check_environment(argv[0] if argv else "")
        if argv and argv[0] == "evaluate":
            from consumer.evaluate.run import main as evaluate_main

            return evaluate_main(argv[1:])
        args = build_parser().parse_args(argv)
        _preflight(args)
        return args.func(args)
    except MemeguardError as e:
        if debug:
            raise
        _say("error:", str(e))
        return 2
    except ValidationError as e:  # a MEMEGUARD_* setting that does not parse: name it, no traceback
        if debug:
            raise
        for problem in e.errors():
            names = [str(part) for part in problem["loc"] if isinstance(part, str)]
            items = [f"item {part + 1}" for part in problem["loc"] if isinstance(part, int)]  # within a list
            where = "_".join(names).upper()
            message = problem["msg"].removeprefix("Value error, ")
            if items:
                message = f"{', '.join(items)}: {message}"
            _say("invalid setting:", f"MEMEGUARD_{where}: {message}" if where else message)
        return 2
    except KeyboardInterrupt:
        return 130
    except Exception as e:  # not foreseen: still one line; the traceback is one flag away
        if debug:
            raise
        _say("error:", f"{type(e).__name__}: {e} (unexpected; run again with --debug for the traceback)")
        return 1


if __name__ == "__main__":
    sys.exit(main())
