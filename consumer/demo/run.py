"""`memeguard demo`: embedded broker + Redis, the default bundle, the 63 dev memes through a real worker.

The demo's worker is pinned to the demo bundle: it does not join the fleet (MEMEGUARD_WATCH_BUNDLE=false: no
control-topic listener, no hot reload), so a `memeguard rollout` on the dev control topic never changes what the
demo serves. The demo prints the bundle, its model version and that it is pinned, before and after the run."""

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

from rich.console import Console

from consumer import paths
from consumer.demo.produce import new_run_id, produce_events, read_semeval, to_events
from consumer.devinfra.stack import DevStack
from consumer.display import print_outcomes
from consumer.errors import ConfigError
from consumer.kafka.outputs import collect
from consumer.kafka.topics import prepare_topics
from consumer.settings import WorkerSettings
from schemas import DeadLetter, Verdict

console = Console()


def ensure_bundle(bundle: Path) -> None:
    if (bundle / "manifest.json").is_file():
        return
    console.print(f"[bold]No model bundle at {bundle}: training the offline default and exporting it…[/]")
    cmd = [sys.executable, "-m", "exporters.cli", "build-default", "--out", str(bundle)]
    if subprocess.run(cmd, check=False).returncode != 0:
        raise ConfigError(f"Building the default bundle failed (`{' '.join(cmd)}`); see the output above.")


def pinned_bundle(settings: WorkerSettings) -> str:
    """What the demo serves, in one line: the bundle path, its model version (name@version+fingerprint, as the
    verdicts name it) and that fleet rollouts on the control topic are not followed."""
    from consumer.core.bundle import ModelBundle

    bundle = ModelBundle.load(settings.bundle_path, verify=False)  # the worker verifies it when it loads it
    version = f"{bundle.manifest.name}@{bundle.manifest.version}+{bundle.fingerprint[:8]}"  # BundleRuntime.version
    return (f"serving bundle {settings.bundle_path} (model {version}), pinned: rollouts on "
            f"{settings.control_topic} are not followed")


def start_worker(settings: WorkerSettings, state_dir: Path) -> tuple[subprocess.Popen, Path]:
    """The demo's worker, pinned to settings.bundle_path: MEMEGUARD_WATCH_BUNDLE=false keeps it out of the fleet
    (no control-topic listener, so no rollout or rollback of the dev fleet reaches it; no hot reload)."""
    ready = state_dir / f"worker-{os.getpid()}.ready"
    ready.unlink(missing_ok=True)
    log_path = state_dir / "worker.log"
    env = {**os.environ, "MEMEGUARD_READY_FILE": str(ready), "MEMEGUARD_KAFKA_BOOTSTRAP": settings.kafka_bootstrap,
           "MEMEGUARD_REDIS_URL": settings.redis_url, "MEMEGUARD_BUNDLE_PATH": str(settings.bundle_path),
           "MEMEGUARD_WATCH_BUNDLE": "false"}
    with log_path.open("ab") as log:
        proc = subprocess.Popen([sys.executable, "-m", "consumer.cli", "worker"], env=env, stdout=log,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    deadline = time.monotonic() + 180
    while not ready.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            tail = log_path.read_text(errors="replace")[-2000:]
            raise ConfigError(f"The worker did not become ready; last lines of {log_path}:\n{tail}")
        time.sleep(0.2)
    return proc, log_path


def run_demo(limit: int | None = None) -> int:
    settings = WorkerSettings()
    state_dir = paths.cache_dir() / "dev"
    stack = DevStack.at(state_dir)
    if settings.kafka_bootstrap == stack.bootstrap:  # embedded defaults; a configured remote broker is used as is
        stack.up()
        console.print(f"broker {stack.bootstrap} and redis {stack.redis_url} up (state in {state_dir})")
    ensure_bundle(settings.bundle_path)
    prepare_topics(settings, [settings.input_topic, settings.output_topic, settings.dlq_topic])
    pinned = pinned_bundle(settings)
    console.print(pinned)
    worker, log_path = start_worker(settings, state_dir)
    try:
        sources = read_semeval(paths.semeval_dir() / "dev.json")[:limit]
        events = list(to_events(sources, new_run_id(), inline=False, with_labels=False))
        start = time.monotonic()
        produce_events(settings.kafka_bootstrap, settings.input_topic, events)
        outcomes: list[Verdict | DeadLetter] = []
        with console.status(f"waiting for {len(events)} verdicts…"):
            for out in collect(settings.kafka_bootstrap, settings.output_topic, settings.dlq_topic,
                               {e.event_id for e in events}, timeout_s=300):
                outcomes.append(out)
        elapsed = time.monotonic() - start
    finally:
        worker.send_signal(signal.SIGTERM)
        try:
            worker.wait(30)
        except subprocess.TimeoutExpired:
            worker.kill()
    print_outcomes(outcomes, f"verdicts for {len(events)} SemEval dev memes")
    verdicts = [o for o in outcomes if isinstance(o, Verdict)]
    model = verdicts[0].model if verdicts else None
    summary = (f"events in: {len(events)}  verdicts out: {len(verdicts)}  dead letters: "
               f"{len(outcomes) - len(verdicts)}  cache hits: {sum(v.cached for v in verdicts)}  "
               f"events/s: {len(outcomes) / elapsed:.1f} (produce → last verdict, {elapsed:.1f}s)")
    decisions = Counter(v.decision.value for v in verdicts)
    policies = sorted({v.policy_id or "none" for v in verdicts})
    if model:
        console.print(f"model {model.name} {model.version} ({model.precision}, {model.provider}) from "
                      f"{settings.bundle_path}; policy {', '.join(policies)}; worker log: {log_path}")
        console.print(pinned)
        others = Counter(v.model.version for v in verdicts if v.model.version != model.version)
        if others:  # another worker of the same consumer group (a dev fleet worker) answered some events
            console.print(f"[yellow]{sum(others.values())} verdict(s) came from another worker of group "
                          f"{settings.group_id} serving {', '.join(sorted(others))}[/]")
    console.print(f"[bold]{summary}[/]")
    console.print("[bold]decisions: " + "  ".join(f"{d}: {decisions.get(d, 0)}" for d in ("allow", "review", "block"))
                  + "[/]")
    console.print("Broker and Redis keep running for the next run (cache hits); stop them with `memeguard dev down`.")
    return 0 if len(outcomes) == len(events) else 1
