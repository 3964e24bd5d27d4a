"""Broker failover with the at-least-once worker (issue 12, item 4), on a three-broker Apache Kafka cluster
(KRaft, replication factor 3, min.insync.replicas=2; consumer/devinfra/stack.py):

1. SIGKILL the broker that leads every input and output partition mid-stream (restarted only once the
   stream is done, for the next scenario: the worker has to finish on the two survivors);
2. SIGSTOP the broker that leads every partition *and* coordinates the worker's group for longer than the
   session timeouts (4 s broker, 6 s consumer), then SIGCONT it;
3. a rolling restart of the three brokers (controlled shutdown, start), one at a time, each waiting until
   every partition's ISR is back to 3 before the next;
4. output writes refused (NOT_ENOUGH_REPLICAS) for longer than the producer's delivery timeout, over
   several worker starts, then two of the three brokers down, then back: an outage, never a record's fault.

Each audit (tests/faults/audit.py): every event exactly one verdict or dead letter after de-duplication by
event id, no output for an id never sent, the worker recovers by itself or after one clean exit (code 75,
restarted once by the test's supervisor loop).
"""

import time
from pathlib import Path

import pytest
from confluent_kafka import KafkaException, Producer
from confluent_kafka.admin import AdminClient, NewTopic

from consumer.devinfra.stack import KafkaCluster
from consumer.kafka.topics import ensure_topics
from tests.faults.audit import OutputReader, audit, report
from tests.faults.records import mixed
from tests.faults.workers import fault_worker
from tests.kafka_helpers import produce_raw

pytestmark = [pytest.mark.faults, pytest.mark.integration]

N_EVENTS = 900
PARTITIONS = 2


@pytest.fixture(scope="module")
def cluster(stack, tmp_path_factory: pytest.TempPathFactory):
    """One cluster for the three scenarios: each test starts by healing it (`healthy`)."""
    if stack.broker != "kafka":
        pytest.skip("the three-broker cluster is Apache Kafka")
    c = KafkaCluster.at(tmp_path_factory.mktemp("failover-cluster"))
    c.up()
    yield c
    c.down()
    assert not any(n.running() for n in c.nodes)


def admin(cluster: KafkaCluster) -> AdminClient:
    return AdminClient({"bootstrap.servers": cluster.live_bootstrap() or cluster.bootstrap, "log_level": 2})


def under_replicated(cluster: KafkaCluster) -> list[str]:
    """Partitions (all topics, internal ones included) without a leader or with fewer than 3 in-sync replicas."""
    meta = admin(cluster).list_topics(timeout=10)
    return [f"{t}/{p}" for t, tm in meta.topics.items() for p, pm in tm.partitions.items()
            if pm.leader < 0 or len(pm.isrs) < len(pm.replicas)]


def wait_healthy(cluster: KafkaCluster, timeout_s: float = 60.0) -> float:
    """Until all brokers are registered and every partition's ISR is full; returns the seconds it took."""
    start = time.monotonic()
    cluster.wait_brokers({n.node_id for n in cluster.nodes}, timeout_s)
    while lagging := under_replicated(cluster):
        assert time.monotonic() - start < timeout_s, f"ISR not back to 3 after {timeout_s:.0f}s: {lagging[:5]}"
        time.sleep(0.2)
    return round(time.monotonic() - start, 1)


@pytest.fixture
def healthy(cluster: KafkaCluster) -> KafkaCluster:
    """A scenario that failed half-way may leave a node frozen or dead: every test starts from a full cluster."""
    for n in cluster.nodes:
        if n.running() and n.paused():
            cluster.resume(n.node_id)
    for n in cluster.nodes:
        if not n.running():
            cluster.start(n.node_id)
    wait_healthy(cluster)
    return cluster


def create_led_by(cluster: KafkaCluster, names: list[str], leader: int) -> None:
    """The scenario's topics, every partition led by `leader` (first in each replica list)."""
    others = [n.node_id for n in cluster.nodes if n.node_id != leader]
    assignment = [[leader, *others], [leader, *reversed(others)]][:PARTITIONS]
    client = admin(cluster)  # kept referenced until the futures resolve
    futures = client.create_topics([NewTopic(t, PARTITIONS, replica_assignment=assignment) for t in names])
    for f in futures.values():
        f.result(30)
    deadline = time.monotonic() + 30
    while sorted(leaders(cluster, names).values()) != [leader] * (len(names) * PARTITIONS):
        assert time.monotonic() < deadline, f"topics not led by broker {leader}: {leaders(cluster, names)}"
        time.sleep(0.2)


def leaders(cluster: KafkaCluster, names: list[str]) -> dict[str, int]:
    """`topic/partition` -> leader id, for the partitions the metadata already knows."""
    meta = admin(cluster).list_topics(timeout=10)
    return {f"{t}/{p}": pm.leader for t in names if t in meta.topics and meta.topics[t].error is None
            for p, pm in meta.topics[t].partitions.items()}


def group_coordinator(cluster: KafkaCluster, group: str) -> int:
    """The broker that coordinates `group` (the leader of its __consumer_offsets partition), known even before
    the group has a member."""
    deadline = time.monotonic() + 30
    while True:
        client = admin(cluster)
        try:
            return client.describe_consumer_groups([group])[group].result(15).coordinator.id
        except KafkaException:  # NOT_COORDINATOR while a fresh cluster's __consumer_offsets partitions load
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


class FailoverReader(OutputReader):
    """Lists the topics only until it has all their partitions: a metadata request that librdkafka happens to
    send to the frozen broker times out (10 s) and would fail the test, not the worker."""

    def _assign_new_partitions(self) -> None:
        if len(self._assigned) < 2 * PARTITIONS:
            super()._assign_new_partitions()


class Scenario:
    """A worker on the cluster, its outputs read back, and a supervisor that restarts it once if it exits 75."""

    def __init__(self, cluster: KafkaCluster, worker_factory, topics, tmp_path: Path, run: str, seed: int,
                 leader: int, waves: int = 1, restarts: int = 1, n_events: int = N_EVENTS,
                 create_topics: bool = True, **env: str) -> None:
        self.cluster, self.topics, self.restarts = cluster, topics, restarts
        if create_topics:
            create_led_by(cluster, [topics.input, topics.output, topics.dlq], leader)
        self.records = mixed(n_events, run, seed=seed)
        env = {"MEMEGUARD_KAFKA_BOOTSTRAP": cluster.bootstrap, "MEMEGUARD_TOPIC_REPLICATION_FACTOR": "3",
               "MEMEGUARD_RESTART_BACKOFF_S": "1", **env}
        self.worker = fault_worker(worker_factory, tmp_path, **env).start()
        self.reader = FailoverReader(cluster.bootstrap, topics.output, topics.dlq)
        self.closed = False
        self.exit_codes: list[int] = []
        size = -(-len(self.records.records) // waves)
        self._waves = [self.records.records[i:i + size] for i in range(0, len(self.records.records), size)]
        self.produce_next_wave()

    def produce_next_wave(self) -> None:
        """Records arrive in `waves`, so a scenario can keep the stream going through several faults."""
        if self._waves:
            produce_raw(self.cluster.bootstrap, self.topics.input, self._waves.pop(0))

    def supervise(self, seconds: float) -> None:
        """Read outputs for `seconds`, restarting the worker after a clean exit (75, EX_TEMPFAIL), at most
        `restarts` times."""
        end = time.monotonic() + seconds
        while True:
            self.reader.poll(min(0.5, max(0.0, end - time.monotonic())))
            if (code := self.worker.proc.poll()) is not None:
                self.exit_codes.append(code)
                assert code == 75 and self.worker.starts <= self.restarts, \
                    f"worker exited with {code} after {self.worker.starts} start(s):\n{self.worker.log()}"
                # Not waiting until it is ready: during an outage the group cannot form until the brokers are back.
                self.worker.start(wait_ready=False)
            if time.monotonic() >= end:
                return

    def until_outputs(self, n: int, timeout_s: float = 90.0) -> None:
        deadline = time.monotonic() + timeout_s
        while len(self.reader.seen()) < n:
            assert time.monotonic() < deadline, f"no progress to {n} outputs:\n{self.worker.log()}"
            self.supervise(0.2)

    def finish(self, name: str, timeout_s: float = 120.0, **extra: object) -> None:
        deadline = time.monotonic() + timeout_s
        while not self.records.ids <= self.reader.seen():
            missing = self.records.ids - self.reader.seen()
            assert time.monotonic() < deadline, \
                f"{len(missing)} ids without output after {timeout_s:.0f}s, e.g. {sorted(missing)[:5]}\n" \
                f"{self.worker.log()}"
            self.supervise(0.5)
        self.supervise(1.5)  # re-deliveries in flight
        counts = audit(name, self.records, self.reader.outputs)
        stamps = sorted(o.timestamp_ms for o in self.reader.outputs)
        gap_ms = max(b - a for a, b in zip(stamps, stamps[1:], strict=False))
        counts.extra = {"guarantee": "at_least_once", "worker_starts": self.worker.starts,
                        "worker_exit_codes": self.exit_codes, "longest_output_gap_s": round(gap_ms / 1000, 1),
                        **extra}
        report(counts)
        self.close()
        assert self.worker.stop() == 0, self.worker.log()

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.reader.close()


@pytest.fixture
def scenario(healthy, worker_factory, topics, tmp_path: Path):
    """Builds the test's Scenario; its output reader is closed even when the scenario fails half-way (it would
    otherwise keep reconnecting to the cluster after the module tears it down)."""
    made: list[Scenario] = []

    def make(run: str, seed: int, leader: int, waves: int = 1, **options) -> Scenario:
        made.append(Scenario(healthy, worker_factory, topics, tmp_path, run, seed, leader, waves, **options))
        return made[-1]

    yield make
    for s in made:
        s.close()


def test_three_node_kafka_cluster_survives_a_killed_leader_and_a_frozen_broker(healthy, topics):
    """The test cluster itself (consumer/devinfra/stack.py KafkaCluster), before any worker runs on it."""
    cluster, topic = healthy, f"ha-{topics.group}"
    ensure_topics(cluster.bootstrap, [topic], 1)  # replication factor: the cluster's default, 3
    deadline = time.monotonic() + 30
    while cluster.leader(topic) == -1:  # metadata of a new topic reaches every broker a moment later
        assert time.monotonic() < deadline, "no leader for the new topic"
        time.sleep(0.2)
    meta = admin(cluster).list_topics(topic, timeout=10).topics[topic]
    assert sorted(meta.partitions[0].replicas) == [1, 2, 3]
    # A request that lands on the frozen broker waits request.timeout.ms for it (30 s by default), which
    # says nothing about the cluster: 10 s here.
    producer = Producer({"bootstrap.servers": cluster.bootstrap, "acks": "all", "enable.idempotence": True,
                         "request.timeout.ms": 10000, "socket.timeout.ms": 10000, "log_level": 2})

    def produce_one(value: bytes) -> None:
        errors = []
        producer.produce(topic, value, on_delivery=lambda err, _msg: errors.append(err))
        assert producer.flush(60) == 0 and errors == [None], errors

    produce_one(b"before")
    leader = cluster.leader(topic)
    cluster.kill(leader)
    cluster.wait_brokers({1, 2, 3} - {leader}, 30)
    deadline = time.monotonic() + 30
    while cluster.leader(topic) in (leader, -1):
        assert time.monotonic() < deadline, "no new leader"
        time.sleep(0.2)
    produce_one(b"after the kill")  # two in-sync replicas left: min.insync.replicas=2 holds
    cluster.start(leader)
    cluster.wait_brokers({1, 2, 3})
    frozen = next(n for n in (1, 2, 3) if n != cluster.leader(topic))
    cluster.pause(frozen)
    try:
        assert cluster.node(frozen).paused() and cluster.node(frozen).bootstrap not in cluster.live_bootstrap()
        produce_one(b"while a follower is frozen")  # once it leaves the ISR (replica.lag.time.max.ms, 5 s)
    finally:
        cluster.resume(frozen)


def test_failover_partition_leader_sigkilled_mid_stream(healthy, scenario, topics):
    cluster, victim = healthy, 1
    s = scenario("failover-kill", seed=21, leader=victim, n_events=600)
    s.until_outputs(int(N_EVENTS * 0.25))
    seen_at_kill = len(s.reader.seen())
    cluster.kill(victim)  # not restarted until the stream is done: the worker finishes on the two survivors
    try:
        s.until_outputs(seen_at_kill + 1)
        new_leaders = sorted(set(leaders(cluster, [topics.input, topics.output, topics.dlq]).values()))
        s.finish("failover_leader_sigkill", killed_broker=victim, restarted="after the stream",
                 outputs_seen_at_kill=seen_at_kill, new_leaders=new_leaders)
    finally:
        cluster.start(victim)
    wait_healthy(cluster)


def test_failover_broker_sigstopped_past_session_timeout(healthy, scenario, topics):
    cluster = healthy
    victim = group_coordinator(cluster, topics.group)  # frozen: its partitions *and* the group's coordinator
    s = scenario("failover-stop", seed=22, leader=victim, n_events=600)
    s.until_outputs(int(N_EVENTS * 0.25))
    seen_at_freeze = len(s.reader.seen())
    frozen_s = 12.0  # > broker.session.timeout.ms (4 s: fenced, leaders move) and the worker's 6 s session
    cluster.pause(victim)
    try:
        s.supervise(frozen_s)
        seen_while_frozen = len(s.reader.seen()) - seen_at_freeze
    finally:
        cluster.resume(victim)
    s.finish("failover_broker_sigstop", frozen_broker=victim, frozen_broker_was_group_coordinator=True,
             frozen_s=frozen_s, outputs_seen_at_freeze=seen_at_freeze, outputs_while_frozen=seen_while_frozen)
    wait_healthy(cluster)


def test_failover_rolling_restart_of_all_brokers(healthy, scenario):
    cluster = healthy
    s = scenario("failover-roll", seed=23, leader=1, waves=3)
    s.until_outputs(int(N_EVENTS * 0.1))
    steps = []
    for i, n in enumerate(cluster.nodes):
        seen = len(s.reader.seen())
        cluster.stop(n.node_id)  # SIGTERM: controlled shutdown, leaderships handed over first
        if i > 0:
            s.produce_next_wave()  # new input while this broker is down: the stream spans every step
        s.supervise(1.0)
        cluster.start(n.node_id)
        start = time.monotonic()
        while under_replicated(cluster):  # the next broker goes only once every ISR is back to 3
            assert time.monotonic() - start < 60, under_replicated(cluster)[:5]
            s.supervise(0.3)
        steps.append({"broker": n.node_id, "outputs_seen_before": seen,
                      "s_to_isr_3": round(time.monotonic() - start, 1)})
    outputs_during_roll = len(s.reader.seen()) - steps[0]["outputs_seen_before"]
    # How much of the stream was still to do when the last broker was back (> 0: the roll was mid-stream).
    ids_left_after_roll = len(s.records.ids - s.reader.seen())
    s.finish("failover_rolling_restart", steps=steps, outputs_during_roll=outputs_during_roll,
             ids_left_after_roll=ids_left_after_roll)
    wait_healthy(cluster)


def test_writes_refused_past_the_delivery_timeout_blame_no_record(healthy, scenario, topics):
    """Issue 27, item 2: an outage is never a record's fault.

    The output and dead-letter topics live on brokers 1 and 2 with min.insync.replicas=2; the input topic
    and the group's offsets on all three. Broker 2 goes down: every output write is refused
    (NOT_ENOUGH_REPLICAS) until librdkafka's message timeout (2 s here) fails it, while the group stays up,
    so the worker takes the same batch again, start after start. Then broker 3 goes down too (two of three
    down: the group cannot form either), and both come back.

    Before the fix an attempt dead-lettered a valid meme as `publish_failed` whenever the dead-letter topic
    took writes, and the third attempt on a batch made its first record a `poison_record`. Now every attempt
    exits 75 uncommitted with its crash-loop attempt taken back, and once the brokers are back every record
    ends as its expected output (audit)."""
    cluster = healthy
    client = admin(cluster)
    create_led_by(cluster, [topics.input], leader=1)
    futures = client.create_topics([NewTopic(t, PARTITIONS, replica_assignment=[[1, 2]] * PARTITIONS,
                                             config={"min.insync.replicas": "2"}) for t in (topics.output, topics.dlq)])
    for f in futures.values():
        f.result(30)
    s = scenario("outage", seed=24, leader=1, waves=2, restarts=20, n_events=120, create_topics=False,
                 MEMEGUARD_DELIVERY_TIMEOUT_S="2", MEMEGUARD_RESTART_BACKOFF_S="0.5")
    s.until_outputs(20)
    cluster.kill(2)
    try:
        # Input that arrives only once the writes are refused: the worker may have finished the first wave
        # before the kill, and then had nothing to write and no reason to exit (one CI run failed that way).
        s.produce_next_wave()
        deadline = time.monotonic() + 90
        while len(s.exit_codes) < 3:  # the third attempt on a batch is the one the old breaker called poison
            assert time.monotonic() < deadline, f"exits so far {s.exit_codes}:\n{s.worker.log()}"
            s.supervise(0.5)
        cluster.kill(3)
        s.supervise(4.0)
    finally:
        cluster.start(2)
        cluster.start(3)
    s.finish("outage_writes_refused", delivery_timeout_s=2, brokers_down="2, then 2 and 3")
    assert "not acknowledged" in s.worker.log_path.read_text()
    wait_healthy(cluster)
