"""`memeguard alert`: verdicts in, rules applied, alerts out to a topic and to webhooks.

Order of effects for each batch of verdicts, so that a crash at any point re-sends rather than loses:
1. rules evaluated; author windows updated in Redis (idempotent: post ids are set members);
2. alerts not already marked sent are published to the alerts topic and handed to every webhook;
3. once the broker acknowledged them and every webhook delivered or dead-lettered them, they are marked
   sent in Redis, and only then the batch's offsets are committed.
A crash between 2 and 3 re-sends those alerts after the restart (at-least-once, like the worker).

Partitions are `assign()`ed with the group's committed offsets (no group join, which Tansu makes slow);
one alerter per verdict topic.
"""

import asyncio
import hashlib
import json
import logging
import threading
from datetime import UTC, datetime
from typing import Any

import httpx
from confluent_kafka import OFFSET_STORED, Consumer, Producer, TopicPartition
from prometheus_client import CollectorRegistry, Counter, Gauge

from consumer.alert.deliver import Webhook
from consumer.alert.rules import AlertConfig, Destination, Rule
from consumer.alert.state import AlertState
from consumer.errors import ConfigError
from consumer.kafka_config import client_config
from consumer.ops_http import Health, OpsServer, broker_probe, redis_probe
from consumer.settings import AlertSettings
from consumer.topics import prepare_topics, wait_for_broker
from schemas import Verdict

log = logging.getLogger(__name__)


class AlertMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.verdicts = Counter("memeguard_alert_verdicts", "Verdicts read.", registry=self.registry)
        self.alerts = Counter("memeguard_alerts", "Alerts raised, by rule.", ["rule"], registry=self.registry)
        self.suppressed = Counter("memeguard_alerts_suppressed", "Alerts already sent (de-duplicated).", ["rule"],
                                  registry=self.registry)
        self.deliveries = Counter("memeguard_alert_deliveries", "Webhook attempts by result.",
                                  ["destination", "result"], registry=self.registry)
        self.queue_depth = Gauge("memeguard_alert_queue_depth", "Alerts waiting per destination.", ["destination"],
                                 registry=self.registry)


def alert_id(rule: str, subject: str) -> str:
    return hashlib.sha256(f"{rule}\0{subject}".encode()).hexdigest()[:24]


def make_alert(rule: Rule, v: Verdict, subject: str, reason: str) -> dict[str, Any]:
    return {
        "alert_id": alert_id(rule.name, subject), "rule": rule.name, "kind": rule.kind, "reason": reason,
        "post_id": v.post_id, "event_id": v.event_id, "author_id": v.author_id, "decision": v.decision.value,
        "harmful_score": v.harmful_score, "model": v.model.version,
        "flagged": {t.technique: round(t.score, 4) for t in v.flagged},
        "verdict_at": v.created_at.isoformat(), "raised_at": datetime.now(UTC).isoformat(),
    }


class Alerter:
    def __init__(self, settings: AlertSettings, config: AlertConfig) -> None:
        self.s = settings
        self.config = config
        self.metrics = AlertMetrics()
        self.state = AlertState(settings.redis_url, settings.alert_dedup_ttl_s)
        self.producer = Producer(client_config(settings.kafka_bootstrap, {"acks": "all", "linger.ms": 5}))
        self.consumer = Consumer(client_config(settings.kafka_bootstrap, {
            "group.id": settings.alert_group_id, "enable.auto.commit": False, "auto.offset.reset": "earliest"}))
        self.webhooks: list[Webhook] = []

    async def _produce(self, topic: str, key: str, value: dict[str, Any]) -> None:
        done: asyncio.Future = asyncio.get_running_loop().create_future()
        loop = asyncio.get_running_loop()

        def ack(err: Any, _msg: Any) -> None:
            loop.call_soon_threadsafe(lambda: done.done() or (done.set_exception(ConfigError(str(err))) if err
                                                                else done.set_result(None)))

        self.producer.produce(topic, key=key.encode(), value=json.dumps(value).encode(), on_delivery=ack)
        while not done.done():  # delivery callbacks run inside poll()
            await asyncio.to_thread(self.producer.poll, 0.05)
        await done

    async def _give_up(self, alert: dict[str, Any], dest: Destination, error: str, attempts: int) -> None:
        await self._produce(self.s.alerts_dlq_topic, alert["alert_id"], {
            "alert": alert, "destination": dest.name, "url": dest.url, "error": error, "attempts": attempts,
            "failed_at": datetime.now(UTC).isoformat()})

    async def evaluate(self, v: Verdict) -> list[tuple[Rule, str, dict[str, Any]]]:
        """(rule, subject, alert) for every rule this verdict triggers; subject = post id or author."""
        found = []
        for rule in self.config.rules:
            if not rule.matches(v):
                continue
            if rule.kind == "author":
                count = await self.state.count_in_window(rule.name, v.author_id or "", v.post_id,
                                                         v.created_at.timestamp(), rule.window_s or 0)
                if count >= (rule.author_posts or 1):
                    subject = f"author:{v.author_id}"
                    found.append((rule, subject, make_alert(rule, v, subject, rule.reason(v, count))))
            else:
                found.append((rule, v.post_id, make_alert(rule, v, v.post_id, rule.reason(v))))
        return found

    async def handle(self, verdicts: list[Verdict]) -> int:
        """One batch; returns how many alerts it raised."""
        raised: dict[tuple[str, str], tuple[Rule, dict[str, Any]]] = {}
        for v in verdicts:
            self.metrics.verdicts.inc()
            for rule, subject, alert in await self.evaluate(v):
                if (rule.name, subject) in raised or await self.state.already_sent(rule.name, subject):
                    self.metrics.suppressed.labels(rule=rule.name).inc()
                    continue
                raised[(rule.name, subject)] = (rule, alert)
        # Sent together, acknowledged together: one broker round trip per batch rather than per alert.
        await asyncio.gather(*(self._produce(self.s.alerts_topic, subject, alert)
                               for (_, subject), (_, alert) in raised.items()))
        pending = []
        for rule, alert in raised.values():
            self.metrics.alerts.labels(rule=rule.name).inc()
            log.info("alert %s: %s", rule.name, alert["reason"],
                     extra={"alert_id": alert["alert_id"], "post_id": alert["post_id"], "event_id": alert["event_id"]})
            for hook in self.webhooks:
                pending.append(await hook.submit(alert))
                self.metrics.queue_depth.labels(destination=hook.dest.name).set(hook.queue.qsize())
        await asyncio.gather(*pending)
        for (rule_name, subject), (rule, _) in raised.items():
            await self.state.mark_sent(rule_name, subject, rule.window_s if rule.kind == "author" else None)
        return len(raised)

    def _assign(self) -> None:
        meta = self.consumer.list_topics(self.s.output_topic, timeout=10).topics.get(self.s.output_topic)
        if meta is None or meta.error is not None:
            raise ConfigError(f"Verdict topic {self.s.output_topic!r} does not exist; start the worker first "
                              "or set MEMEGUARD_OUTPUT_TOPIC.")
        self.consumer.assign([TopicPartition(self.s.output_topic, p, OFFSET_STORED) for p in meta.partitions])

    async def run(self, stop: threading.Event | None = None, exit_when_idle_s: float | None = None) -> None:
        stop = stop or threading.Event()
        wait_for_broker(self.s.kafka_bootstrap, self.s.startup_timeout_s)
        prepare_topics(self.s, [self.s.alerts_topic, self.s.alerts_dlq_topic])
        self._assign()
        server = None
        if self.s.metrics_port:
            health = Health(broker=broker_probe(self.s.kafka_bootstrap), redis=redis_probe(self.s.redis_url))
            server = OpsServer(self.metrics, health, self.s.metrics_port).start()
        async with httpx.AsyncClient(follow_redirects=False) as client:
            self.webhooks = [Webhook(d, client, self._give_up,
                                     lambda d, r: self.metrics.deliveries.labels(destination=d, result=r).inc()).start()
                             for d in self.config.destinations]
            idle = 0.0
            try:
                while not stop.is_set():
                    messages = await asyncio.to_thread(self.consumer.consume, 100, 0.5)
                    messages = [m for m in messages if m.error() is None]
                    if not messages:
                        idle += 0.5
                        if exit_when_idle_s is not None and idle >= exit_when_idle_s:
                            break
                        continue
                    idle = 0.0
                    verdicts = []
                    for m in messages:
                        try:
                            verdicts.append(Verdict.model_validate_json(m.value()))
                        except ValueError:
                            log.warning("skipping a record at %s[%d]@%d that is not a Verdict", m.topic(),
                                        m.partition(), m.offset())
                    await self.handle(verdicts)
                    offsets = {}
                    for m in messages:
                        offsets[m.partition()] = max(offsets.get(m.partition(), 0), m.offset() + 1)
                    self.consumer.commit(offsets=[TopicPartition(self.s.output_topic, p, o) for p, o in offsets.items()],
                                         asynchronous=False)
            finally:
                for hook in self.webhooks:
                    await hook.close()
                self.consumer.close()
                self.producer.flush(10)
                self.producer.close()  # stops librdkafka's reconnects at once, not whenever GC runs
                await self.state.close()
                if server is not None:
                    server.stop()


def run_alerter(settings: AlertSettings, exit_when_idle_s: float | None = None) -> None:
    if settings.alert_rules_file is None:
        raise ConfigError("No alert rules: set MEMEGUARD_ALERT_RULES_FILE or pass --rules (see docs/operations.md).")
    config = AlertConfig.from_file(settings.alert_rules_file)
    asyncio.run(Alerter(settings, config).run(exit_when_idle_s=exit_when_idle_s))
