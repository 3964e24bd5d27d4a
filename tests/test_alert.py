"""`memeguard alert` on a real broker and redis, delivering to a local HTTP server on 127.0.0.1."""

import asyncio
import json
import threading
import uuid
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml

from consumer.alert.rules import AlertConfig
from consumer.alert.run import Alerter
from consumer.cli import main
from consumer.errors import ConfigError
from consumer.kafka.topics import ensure_topics
from consumer.settings import AlertSettings
from schemas import TECHNIQUES, Decision, ModelInfo, TechniqueScore, Verdict
from tests.kafka_helpers import produce_raw, read_json_topic

pytestmark = pytest.mark.integration


class Hooks(BaseHTTPRequestHandler):
    """/ok answers 200; /flaky 500 twice per alert then 200; /down always 500."""

    received: dict[str, list[dict]] = defaultdict(list)
    attempts: dict[tuple[str, str], int] = defaultdict(int)

    def do_POST(self) -> None:  # noqa: N802 (http.server API)
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        key = (self.path, body["alert_id"])
        self.attempts[key] += 1
        status = {"/ok": 200, "/down": 500}.get(self.path, 500 if self.attempts[key] <= 2 else 200)
        if status == 200:
            self.received[self.path].append(body)
        self.send_response(status)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def hooks():
    Hooks.received.clear()
    Hooks.attempts.clear()
    server = ThreadingHTTPServer(("127.0.0.1", 0), Hooks)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


TAG = uuid.uuid4().hex[:6]  # Redis outlives a test: ids unique to this run keep its state apart


def verdict(post: str, decision: str = "allow", author: str = "a1", smears: float = 0.1,
            at: datetime | None = None) -> Verdict:
    post, author = f"{TAG}-{post}", f"{TAG}-{author}"
    techniques = [TechniqueScore(technique=t, score=smears if t == "Smears" else 0.05, threshold=0.5,
                                 flagged=(smears >= 0.5 and t == "Smears")) for t in TECHNIQUES]
    return Verdict(event_id=f"e-{post}", post_id=post, author_id=author, content_hash="h" + post,
                   model=ModelInfo(name="m", version="1"), techniques=techniques, decision=Decision(decision),
                   harmful_score=0.9, created_at=at or datetime.now(UTC))


def settings(stack, topics, rules: Path) -> AlertSettings:
    return AlertSettings(kafka_bootstrap=stack.bootstrap, redis_url=stack.redis_url, output_topic=topics.output,
                         alerts_topic=f"alerts-{topics.group}", alerts_dlq_topic=f"alerts-dlq-{topics.group}",
                         alert_group_id=f"alert-{topics.group}", alert_rules_file=rules, topic_partitions=2)


def publish(stack, topics, verdicts: list[Verdict]) -> None:
    produce_raw(stack.bootstrap, topics.output, [(v.post_id.encode(), v.model_dump_json().encode()) for v in verdicts])


def short(post_id: str) -> str:
    return post_id.removeprefix(f"{TAG}-")




def write_rules(path: Path, hooks: str, **dest) -> Path:
    path.write_text(yaml.safe_dump({
        "rules": [{"name": "blocked", "decision": "block"},
                  {"name": "smears", "technique": "Smears", "min_score": 0.8},
                  {"name": "repeat", "author_posts": 3, "window_s": 600}],
        "destinations": [{"name": n, "url": f"{hooks}/{n}", "max_attempts": 3, "backoff_s": 0.01, "rate_per_s": 200,
                          **dest} for n in ("ok", "flaky", "down")],
    }))
    return path


def run(s: AlertSettings) -> None:
    asyncio.run(Alerter(s, AlertConfig.from_file(s.alert_rules_file)).run(exit_when_idle_s=1.5))


def test_delivery_retry_and_dead_letter(stack, topics, hooks, tmp_path):
    ensure_topics(stack.bootstrap, [topics.output], 2)
    s = settings(stack, topics, write_rules(tmp_path / "rules.yaml", hooks))
    publish(stack, topics, [verdict("p1", "block", author="x-first"), verdict("p2", "allow", author="y"),
                            verdict("p3", "review", author="z", smears=0.93)])
    run(s)
    alerts = read_json_topic(stack.bootstrap, s.alerts_topic)
    assert sorted((a["rule"], short(a["post_id"])) for a in alerts) == [("blocked", "p1"), ("smears", "p3")]
    smears = next(a for a in alerts if a["rule"] == "smears")
    assert "Smears scored 0.930" in smears["reason"] and smears["flagged"] == {"Smears": 0.93}
    assert sorted(short(a["post_id"]) for a in Hooks.received["/ok"]) == ["p1", "p3"]
    assert sorted(short(a["post_id"]) for a in Hooks.received["/flaky"]) == ["p1", "p3"]  # after two 500s each
    assert all(Hooks.attempts[("/flaky", a["alert_id"])] == 3 for a in alerts)
    assert Hooks.received["/down"] == [] and all(Hooks.attempts[("/down", a["alert_id"])] == 3 for a in alerts)
    letters = read_json_topic(stack.bootstrap, s.alerts_dlq_topic)
    assert sorted(short(d["alert"]["post_id"]) for d in letters) == ["p1", "p3"]
    assert {d["destination"] for d in letters} == {"down"} and {d["error"] for d in letters} == {"HTTP 500"}
    assert all(d["attempts"] == 3 for d in letters)


def test_no_duplicate_after_restart_and_author_window_survives_it(stack, topics, hooks, tmp_path):
    ensure_topics(stack.bootstrap, [topics.output], 2)
    rules = tmp_path / "rules.yaml"
    rules.write_text(yaml.safe_dump({
        "rules": [{"name": "blocked", "decision": "block"}, {"name": "repeat", "author_posts": 3, "window_s": 600}],
        "destinations": [{"name": "ok", "url": f"{hooks}/ok"}]}))
    s = settings(stack, topics, rules)
    t0 = datetime.now(UTC)
    publish(stack, topics, [verdict("b1", "block", author="solo"), verdict("r1", "review", author="x", at=t0),
                            verdict("r2", "review", author="x", at=t0 + timedelta(seconds=5))])
    run(s)
    assert [short(a["post_id"]) for a in Hooks.received["/ok"]] == ["b1"]
    # Restart. The same blocked post arrives again (a re-delivered verdict), and x's third flagged post.
    publish(stack, topics, [verdict("b1", "block", author="solo"),
                            verdict("r3", "block", author="x", at=t0 + timedelta(seconds=9))])
    run(s)
    got = sorted((a["rule"], short(a["post_id"])) for a in Hooks.received["/ok"])
    assert got == [("blocked", "b1"), ("blocked", "r3"), ("repeat", "r3")]
    assert next(a for a in Hooks.received["/ok"] if a["rule"] == "repeat")["reason"].startswith(f"author {TAG}-x has 3")
    # A fresh group re-reads every verdict from the start: Redis still knows what was sent.
    run(s.model_copy(update={"alert_group_id": f"again-{topics.group}"}))
    assert len(Hooks.received["/ok"]) == 3
    assert len(read_json_topic(stack.bootstrap, s.alerts_topic)) == 3


def test_bad_rules_are_one_clear_error(tmp_path, capsys):
    bad = tmp_path / "rules.yaml"
    bad.write_text(yaml.safe_dump({"rules": [{"name": "x", "technique": "Not a technique", "min_score": 0.5}]}))
    with pytest.raises(ConfigError, match="unknown technique"):
        AlertConfig.from_file(bad)
    assert main(["alert", "--rules", str(tmp_path / "missing.yaml")]) == 2
    assert "Cannot read the alert rules file" in capsys.readouterr().err
