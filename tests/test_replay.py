"""`memeguard replay` on the real dev memes, a real broker and redis, with the tiny real bundle."""

import asyncio
import json
import uuid

import numpy as np
import pytest
from confluent_kafka import Consumer, TopicPartition

from consumer.cli import main
from consumer.demo.produce import read_semeval, to_events
from consumer.evaluate.run import multi_hot, multilabel_report
from consumer.replay.report import auroc
from consumer.replay.run import ReplayOptions, replay
from consumer.settings import WorkerSettings
from schemas import TECHNIQUES, MemeEvent, Verdict
from tests.kafka_helpers import committed_offsets, produce_events
from tests.memes import SEMEVAL

pytestmark = pytest.mark.integration


def labelled_events(n: int | None = None, with_labels: bool = True) -> list[MemeEvent]:
    sources = read_semeval(SEMEVAL / "dev.json")[:n]
    return list(to_events(sources, uuid.uuid4().hex[:8], inline=False, with_labels=with_labels))


def commit(bootstrap: str, group: str, topic: str, offsets: dict[int, int]) -> None:
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False})
    try:
        c.commit(offsets=[TopicPartition(topic, p, o) for p, o in offsets.items()], asynchronous=False)
    finally:
        c.close()


@pytest.fixture
def replay_env(stack, tiny_bundle, monkeypatch):
    for key, value in {"MEMEGUARD_KAFKA_BOOTSTRAP": stack.bootstrap, "MEMEGUARD_REDIS_URL": stack.redis_url,
                       "MEMEGUARD_BUNDLE_PATH": str(tiny_bundle), "MEMEGUARD_INTRA_OP_THREADS": "1",
                       "MEMEGUARD_FILE_ROOT": str(SEMEVAL.parent), "MEMEGUARD_WATCH_BUNDLE": "false"}.items():
        monkeypatch.setenv(key, value)


def test_replay_of_the_dev_split_writes_verdicts_and_a_report(stack, topics, replay_env, tmp_path, capsys):
    events = labelled_events()
    assert len(events) == 63
    produce_events(stack.bootstrap, topics.input, events)
    # A production group part-way through the topic: replay must leave its offsets exactly there.
    commit(stack.bootstrap, topics.group, topics.input, {0: 3, 1: 5})
    out = tmp_path / "replay"
    rc = main(["replay", "--topic", topics.input, "--out", str(out), "--verdicts-topic", topics.output,
               "--batch-size", "16", "--no-progress"])
    assert rc == 0
    assert committed_offsets(stack.bootstrap, topics.group, topics.input) == {0: 3, 1: 5}
    report = json.loads((out / "report.json").read_text())
    verdicts = [Verdict.model_validate_json(line) for line in (out / "verdicts.jsonl").read_text().splitlines()]
    assert report["n_events"] == report["n_verdicts"] == report["n_labelled"] == len(verdicts) == 63
    assert sum(report["end_offsets"].values()) == 63 and report["n_dead_letters"] == 0
    # The figures are the ones the evaluation code computes from the verdicts and the gold labels.
    gold_by_id = {e.event_id: e.labels for e in events}
    gold = multi_hot([gold_by_id[v.event_id] for v in verdicts], TECHNIQUES)
    pred = np.array([[t.flagged for t in v.techniques] for v in verdicts])
    expected = multilabel_report(gold, pred, TECHNIQUES)
    assert report["micro_f1"] == pytest.approx(expected["micro_f1"])
    assert report["macro_f1"] == pytest.approx(expected["macro_f1"])
    assert set(report["per_technique"]) == set(TECHNIQUES)
    harmful = np.array([bool(gold_by_id[v.event_id]) for v in verdicts])
    assert report["harmful_auroc"] == pytest.approx(auroc(harmful, np.array([v.harmful_score for v in verdicts])))
    assert sum(report["decisions"].values()) == 63
    assert report["latency_ms"]["p50"] <= report["latency_ms"]["p95"] <= report["latency_ms"]["p99"]
    assert 0.0 <= report["cache_hit_rate"] <= 1.0
    page = (out / "report.html").read_text()
    assert "data:image/png;base64," in page and "<h2>Per technique</h2>" in page
    assert "micro-F1" in capsys.readouterr().out
    # Verdicts also went to the topic given; a second replay is served from the Redis cache.
    published = committed_offsets(stack.bootstrap, topics.group, topics.input)
    assert published == {0: 3, 1: 5}
    again = asyncio.run(replay(WorkerSettings(), ReplayOptions(topic=topics.input, out_dir=tmp_path / "again",
                                                               progress=False)))
    assert again["cache_hit_rate"] == 1.0 and again["micro_f1"] == report["micro_f1"]


def test_two_bundles_side_by_side_with_labels_joined_from_a_file(stack, topics, replay_env, tmp_path):
    from exporters.testing import write_tiny_bundle

    other = write_tiny_bundle(tmp_path / "other", seed=1)
    events = labelled_events(20, with_labels=False)
    hostile = events[0].model_copy(update={"event_id": "hostile", "post_id": "hostile",
                                           "text": "<script>alert('x')</script> & friends"})
    produce_events(stack.bootstrap, topics.input, events + [hostile])
    labels_file = tmp_path / "labels.jsonl"
    sources = read_semeval(SEMEVAL / "dev.json")[:20]
    labels_file.write_text("\n".join(json.dumps({"id": s.record_id, "labels": s.labels}) for s in sources)
                           + "\n" + json.dumps({"id": "hostile", "labels": ["Smears"]}))
    doc = asyncio.run(replay(WorkerSettings(), ReplayOptions(
        topic=topics.input, out_dir=tmp_path / "cmp", compare_bundle=other, labels_file=labels_file,
        use_cache=False, progress=False)))
    a, b, cmp = doc["a"], doc["b"], doc["comparison"]
    assert a["model"] != b["model"] and a["n_labelled"] == b["n_labelled"] == 21
    assert a["cache_hit_rate"] == 0.0  # --no-cache
    for name in TECHNIQUES:
        assert cmp["per_technique_f1_delta"][name] == pytest.approx(
            b["per_technique"][name]["f1"] - a["per_technique"][name]["f1"], abs=1e-6)
    assert cmp["micro_f1_delta"] == pytest.approx(b["micro_f1"] - a["micro_f1"], abs=1e-6)
    va = {json.loads(line)["event_id"]: json.loads(line) for line in (tmp_path / "cmp" / "verdicts-a.jsonl").open()}
    vb = {json.loads(line)["event_id"]: json.loads(line) for line in (tmp_path / "cmp" / "verdicts-b.jsonl").open()}
    differing = {i for i in va if va[i]["decision"] != vb[i]["decision"]
                 or {t["technique"] for t in va[i]["techniques"] if t["flagged"]}
                 != {t["technique"] for t in vb[i]["techniques"] if t["flagged"]}}
    assert {d["event_id"] for d in cmp["disagreements"]} == differing and differing
    page = (tmp_path / "cmp" / "report.html").read_text()
    assert "<script>" not in page
    if "hostile" in differing:
        assert "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt; &amp; friends" in page  # Jinja2's autoescape
    assert "data:image/jpeg;base64," in page  # disagreements are listed with their memes


def test_replay_of_a_missing_topic_is_one_clear_error(stack, replay_env, tmp_path, capsys):
    assert main(["replay", "--topic", "no-such-topic-xyz", "--out", str(tmp_path), "--no-progress"]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_records_produced_after_the_start_are_not_replayed(stack, topics):
    from consumer.replay.source import TopicSnapshot
    from tests.kafka_helpers import produce_raw

    produce_raw(stack.bootstrap, topics.input, [(f"k{i}".encode(), f"before-{i}".encode()) for i in range(10)])
    snapshot = TopicSnapshot(stack.bootstrap, topics.input)
    # Apache Kafka's ListOffsets(LATEST) is right; Tansu's is not, so there the first fetches' watermark
    assert snapshot.end_source == ("high_watermark" if stack.broker == "tansu" else "list_offsets")
    batches = snapshot.batches(max_batch=2)
    seen = [r.value for r in next(batches)]
    while snapshot.total is None:  # ends are fixed by the first fetch responses
        seen += [r.value for r in next(batches)]
    assert snapshot.total == 10
    produce_raw(stack.bootstrap, topics.input, [(f"k{i}".encode(), f"after-{i}".encode()) for i in range(6)])
    seen += [r.value for batch in batches for r in batch]
    assert sorted(seen) == sorted(f"before-{i}".encode() for i in range(10))
