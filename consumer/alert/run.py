"""`memeguard alert`: verdicts in, rules applied, alerts out to a topic and to webhooks.

Order of effects for each batch of verdicts, so that a crash at any point re-sends rather than loses:
1. rules evaluated; author windows updated in Redis (idempotent: post ids are set members);
2. alerts not already marked sent are published to the alerts topic and handed to every webhook;
3. once the broker acknowledged them and every webhook delivered or dead-lettered them, they are marked
   sent in Redis, and only then the batch's offsets are committed.
A crash between 2 and 3 re-sends those alerts after the restart (at-least-once, like the worker).

Replicas: every alerter joins the consumer group `MEMEGUARD_ALERT_GROUP_ID` (subscribe: the verdict
partitions are split between the replicas) and shares the Redis state. Before an alert is sent, a claim in
Redis (`AlertState.claim`, atomic) picks the one replica that sends it, so a verdict that two replicas hold
for a moment (a rebalance, a re-delivery) raises one alert; the other replica waits for the outcome.

A Redis error (a node down, a cluster without a master for some slots) is counted
(`memeguard_alert_redis_errors_total`), logged, and the batch is read again after a backoff, its offsets
not committed: the alerter keeps running, raises nothing while Redis fails, and catches up when it is back.
Alerts already published when Redis failed are remembered in memory and not sent a second time.
"""

import asyncio
import hashlib
import json
import logging
import threading
from datetime import UTC, datetime
from typing import Any

import httpx
from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition
from prometheus_client import CollectorRegistry, Counter, Gauge

from consumer.alert.deliver import Webhook
from consumer.alert.rules import AlertConfig, Destination, Rule
from consumer.alert.state import AlertState, Claim
from consumer.core.redis_client import REDIS_ERRORS, probe
from consumer.errors import ConfigError
from consumer.kafka.config import client_config
from consumer.kafka.topics import prepare_topics, wait_for_broker
from consumer.ops.server import Health, OpsServer, broker_probe
from consumer.settings import AlertSettings
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
        self.redis_errors = Counter("memeguard_alert_redis_errors", "Batches that failed on a Redis error "
                                    "(read again after a backoff).", registry=self.registry)
        self.redis_up = Gauge("memeguard_alert_redis_up", "0 after a Redis error, 1 after a batch went through.",
                              registry=self.registry)
        self.claim_waits = Counter("memeguard_alert_claim_waits", "Times an alert was being sent by another "
                                   "replica and this one waited for the outcome.", registry=self.registry)


CLAIM_POLL_S = 0.2  # how often a replica looks again at an alert another replica is sending
REDIS_BACKOFF_S = (0.5, 5.0)  # first and longest pause before a batch that failed on Redis is read again


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
        self.assigned = threading.Event()  # the group gave this replica its partitions (perhaps none)
        self.partitions: set[int] = set()  # held now, kept by the callbacks (for other threads to read)
        # published and delivered, but Redis failed before they were marked sent: the retry only marks them
        self._delivered: set[tuple[str, str]] = set()

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

    async def _claim(self, rule: str, subject: str) -> bool:
        """True when this replica is to send the alert; waits while another replica is sending it."""
        while (outcome := await self.state.claim(rule, subject)) is Claim.BUSY:
            self.metrics.claim_waits.inc()
            await asyncio.sleep(CLAIM_POLL_S)  # bounded: the other's claim expires (CLAIM_TTL_S) if it died
        return outcome is Claim.OURS

    async def handle(self, verdicts: list[Verdict]) -> int:
        """One batch; returns how many alerts it raised. Redis errors propagate (the caller retries)."""
        found: dict[tuple[str, str], tuple[Rule, dict[str, Any]]] = {}
        for v in verdicts:
            self.metrics.verdicts.inc()
            for rule, subject, alert in await self.evaluate(v):
                if (rule.name, subject) in found:
                    self.metrics.suppressed.labels(rule=rule.name).inc()
                    continue
                found[(rule.name, subject)] = (rule, alert)
        raised: dict[tuple[str, str], tuple[Rule, dict[str, Any]]] = {}
        for key, (rule, alert) in found.items():
            if await self._claim(*key):
                raised[key] = (rule, alert)
            else:
                self.metrics.suppressed.labels(rule=rule.name).inc()
        fresh = {key: value for key, value in raised.items() if key not in self._delivered}
        try:
            await self._send(fresh)
        except BaseException:
            for key in fresh:  # not delivered: let the next attempt (here or on another replica) send them
                await self.state.release(*key)
            raise
        self._delivered.update(fresh)
        for (rule_name, subject), (rule, _) in raised.items():
            await self.state.mark_sent(rule_name, subject, rule.window_s if rule.kind == "author" else None)
            self._delivered.discard((rule_name, subject))
        return len(fresh)

    async def _send(self, raised: dict[tuple[str, str], tuple[Rule, dict[str, Any]]]) -> None:
        """Publish the alerts and hand them to every webhook; returns once all delivered or dead-lettered."""
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

    def _subscribe(self) -> None:
        meta = self.consumer.list_topics(self.s.output_topic, timeout=10).topics.get(self.s.output_topic)
        if meta is None or meta.error is not None:
            raise ConfigError(f"Verdict topic {self.s.output_topic!r} does not exist; start the worker first "
                              "or set MEMEGUARD_OUTPUT_TOPIC.")

        def on_assign(_consumer: Consumer, partitions: list[TopicPartition]) -> None:
            self.partitions.update(tp.partition for tp in partitions)
            log.info("alerter assigned %s", sorted(self.partitions))
            self.assigned.set()

        def on_revoke(_consumer: Consumer, partitions: list[TopicPartition]) -> None:
            self.partitions.difference_update(tp.partition for tp in partitions)

        self.consumer.subscribe([self.s.output_topic], on_assign=on_assign, on_revoke=on_revoke)

    def _rewind(self, messages: list[Any]) -> None:
        """Read the batch again: back to its first offset on each partition (still ours: no poll since)."""
        first: dict[int, int] = {}
        for m in messages:
            first[m.partition()] = min(first.get(m.partition(), m.offset()), m.offset())
        for partition, offset in first.items():
            try:
                self.consumer.seek(TopicPartition(self.s.output_topic, partition, offset))
            except KafkaException as e:  # revoked meanwhile: its new owner reads from the committed offset
                log.warning("could not rewind partition %d: %s", partition, e)

    def _commit(self, messages: list[Any]) -> None:
        offsets: dict[int, int] = {}
        for m in messages:
            offsets[m.partition()] = max(offsets.get(m.partition(), 0), m.offset() + 1)
        try:
            self.consumer.commit(offsets=[TopicPartition(self.s.output_topic, p, o) for p, o in offsets.items()],
                                 asynchronous=False)
        except KafkaException as e:
            # A rebalance took the partitions away: their next owner reads these verdicts again and finds the
            # alerts marked sent in Redis, so nothing is raised twice.
            log.warning("offset commit failed (%s); the verdicts will be read again", e)

    async def run(self, stop: threading.Event | None = None, exit_when_idle_s: float | None = None) -> None:
        stop = stop or threading.Event()
        server = None
        if self.s.metrics_port:  # first: probes answer (live, not ready) during the broker wait
            health = Health(broker=broker_probe(self.s.kafka_bootstrap), redis=probe(self.s.redis_url))
            server = OpsServer(self.metrics, health, self.s.metrics_port).start()
        try:
            wait_for_broker(self.s.kafka_bootstrap, self.s.startup_timeout_s)
            prepare_topics(self.s, [self.s.alerts_topic, self.s.alerts_dlq_topic])
            self._subscribe()
        except BaseException:
            if server is not None:
                server.stop()
            raise
        async with httpx.AsyncClient(follow_redirects=False) as client:
            self.webhooks = [Webhook(d, client, self._give_up,
                                     lambda d, r: self.metrics.deliveries.labels(destination=d, result=r).inc()).start()
                             for d in self.config.destinations]
            idle, backoff = 0.0, REDIS_BACKOFF_S[0]
            try:
                while not stop.is_set():
                    messages = await asyncio.to_thread(self.consumer.consume, 100, 0.5)
                    messages = [m for m in messages if m.error() is None]
                    if not messages:
                        idle += 0.5 if self.assigned.is_set() else 0.0  # a group join is not idleness
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
                    try:
                        await self.handle(verdicts)
                    except REDIS_ERRORS as e:
                        self.metrics.redis_errors.inc()
                        self.metrics.redis_up.set(0)
                        log.warning("redis failed (%s: %s); the batch of %d verdicts is read again in %.1fs",
                                    type(e).__name__, e, len(messages), backoff)
                        self._rewind(messages)
                        await asyncio.to_thread(stop.wait, backoff)
                        backoff = min(backoff * 2, REDIS_BACKOFF_S[1])
                        continue
                    self.metrics.redis_up.set(1)
                    backoff = REDIS_BACKOFF_S[0]
                    self._commit(messages)
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
