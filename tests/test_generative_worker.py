"""Property through a real worker on the real broker and Redis: generated hostile records (arbitrary keys,
null and arbitrary values, headers with arbitrary names and values, random JSON, mutated MemeEvents) each
end as exactly one verdict or dead letter, every output validates, every dead letter names its origin,
and the worker process never exits. Fewer examples than the in-process property (each crosses Kafka).

URLs here carry only IP literals and malformed hosts: the real worker resolves names with the system
resolver, and a lookup must never leave the machine."""

import time
import uuid

import pytest
from confluent_kafka import Producer
from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis import strategies as st

from consumer.kafka.outputs import read_outputs
from consumer.kafka.topics import ensure_topics
from schemas import DeadLetter, ErrorKind, Verdict
from tests.generative import headers, keys, record_values
from tests.memes import SEMEVAL, read_semeval

pytestmark = pytest.mark.integration


def meme_url() -> str:
    return (SEMEVAL / "images" / read_semeval(SEMEVAL / "dev.json")[0].image_path.name).resolve().as_uri()


@st.composite
def batch(draw) -> list[tuple[bytes | None, bytes | None, list]]:
    tag = uuid.uuid4().hex[:6]
    url = draw(st.sampled_from([None, meme_url()]))
    n = draw(st.integers(20, 40))
    values = [draw(record_values(i, names=False, image_url=url)) for i in range(n)]
    # Unique ids for valid events, so a verdict can be told from another example's.
    values = [v.replace(b'"ev-', f'"ev-{tag}-'.encode(), 1) if v else v for v in values]
    return [(draw(keys), v, draw(headers)) for v in values]


def produce(bootstrap: str, topic: str, records) -> set[tuple[int, int]]:
    producer = Producer({"bootstrap.servers": bootstrap, "acks": "all"})
    acked: set[tuple[int, int]] = set()
    errors: list[str] = []

    def report(err, msg) -> None:
        (errors.append(str(err)) if err else acked.add((msg.partition(), msg.offset())))

    for key, value, hdrs in records:
        producer.produce(topic, key=key, value=value, headers=hdrs, on_delivery=report)
    producer.flush(30)
    assert not errors, errors
    return acked


def test_generated_hostile_records_through_a_real_worker(worker_factory, stack, topics) -> None:
    ensure_topics(stack.bootstrap, [topics.input], 2)
    worker = worker_factory().start()
    produced: set[tuple[int, int]] = set()
    kinds: dict[str, int] = {}

    @seed(20261202)
    @settings(max_examples=3, deadline=None, database=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck))
    @given(batch())
    def run(records) -> None:
        produced.update(produce(stack.bootstrap, topics.input, records))
        outputs = wait_for(stack.bootstrap, topics, len(produced))
        assert len(outputs) == len(produced), f"{len(outputs)} outputs for {len(produced)} records"
        origins = [(o.origin.partition, o.origin.offset) for o in outputs if isinstance(o, DeadLetter)]
        assert len(origins) == len(set(origins)) and set(origins) <= produced
        assert all(o.origin.topic == topics.input for o in outputs if isinstance(o, DeadLetter))
        assert not [o.message for o in outputs if isinstance(o, DeadLetter) and o.error_kind == ErrorKind.INTERNAL_ERROR]
        assert worker.proc.poll() is None, worker.log()
        kinds.clear()
        for o in outputs:
            k = "verdict" if isinstance(o, Verdict) else o.error_kind.value
            kinds[k] = kinds.get(k, 0) + 1

    run()
    print(f"\ngenerative worker outcomes over {len(produced)} records: {dict(sorted(kinds.items()))}")
    assert worker.proc.poll() is None and kinds.get("verdict", 0) > 0


def wait_for(bootstrap: str, topics, n: int, timeout_s: float = 120.0) -> list[Verdict | DeadLetter]:
    """read_outputs validates each record against its schema; one that does not validate fails here."""
    deadline = time.monotonic() + timeout_s
    while True:
        outs = list(read_outputs(bootstrap, topics.output, topics.dlq, idle_timeout_s=1.0, deadline_s=30))
        if len(outs) >= n or time.monotonic() > deadline:
            time.sleep(1.0)  # stragglers would be duplicates: read once more
            return list(read_outputs(bootstrap, topics.output, topics.dlq, idle_timeout_s=1.0, deadline_s=30))
        time.sleep(0.5)
