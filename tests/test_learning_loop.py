"""The learning loop end to end on the real broker and redis-server, a real worker process and a real browser:
memes -> worker (a bundle with a harm head and its own decision policy) -> review page (harm cards decided by
clicks) -> `dataset build` -> `calibrate` the policy to a review budget -> `shadow` + `compare` -> `promote` (gate,
numbered fleet revision) -> the worker hot-reloads -> later verdicts carry the new model version and the
calibrated decisions, with the technique flags unchanged."""

import json
import time
import uuid

import numpy as np
import pytest

from consumer.cli import main as memeguard
from consumer.core.bundle import ModelBundle
from consumer.core.runtime import BundleRuntime
from consumer.learning.calibrate import ALLOW, decide_all, score_data
from consumer.learning.shadow import ShadowOptions, run_shadow
from consumer.review.ingest import ReviewIngest
from consumer.review.store import ReviewStore
from consumer.settings import WorkerSettings
from schemas import Decision, MemeEvent, Verdict
from tests.kafka_helpers import produce_events, read_json_topic, wait_outputs
from tests.memes import SEMEVAL, dev_events
from tests.test_review import PASSWORDS
from tests.test_review_browser import CHROMIUM, DRIVER, browser, review_settings, serve, wait_for  # noqa: F401

pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(not (CHROMIUM and DRIVER), reason="needs Debian chromium + chromium-driver")]


def _again(events: list[MemeEvent], tag: str) -> list[MemeEvent]:
    """The same memes posted again: new event ids, same image and text (same content hash)."""
    return [e.model_copy(update={"event_id": f"{e.event_id}-{tag}", "post_id": f"{e.post_id}-{tag}"}) for e in events]


def test_reviews_become_a_calibrated_bundle_that_is_promoted_by_hot_reload(
        stack, worker_factory, tiny_bundle, topics, serve, browser, tmp_path, monkeypatch):  # noqa: F811 (fixtures)
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.by import By

    from exporters.testing import write_tiny_bundle

    # Seed 2 sends about two thirds of these 16 memes to review under its policy (harm score >= 0.5).
    tiny = ModelBundle.load(write_tiny_bundle(tmp_path / "harm-bundle", seed=2, severity_head=True))
    control = f"control-{topics.group}"
    s = review_settings(stack, topics)
    for name, value in {"MEMEGUARD_KAFKA_BOOTSTRAP": stack.bootstrap, "MEMEGUARD_INPUT_TOPIC": topics.input,
                        "MEMEGUARD_OUTPUT_TOPIC": topics.output, "MEMEGUARD_CONTROL_TOPIC": control,
                        "MEMEGUARD_REVIEWS_TOPIC": s.reviews_topic, "MEMEGUARD_FILE_ROOT": str(SEMEVAL.parent),
                        "MEMEGUARD_REDIS_URL": stack.redis_url}.items():
        monkeypatch.setenv(name, value)
    worker = worker_factory(MEMEGUARD_CONTROL_TOPIC=control, MEMEGUARD_BUNDLE_PATH=str(tiny.root)).start()

    # 1. Memes through the production worker.
    events = dev_events(16)
    produce_events(stack.bootstrap, topics.input, events)
    first = {v.event_id: v for v in wait_outputs(stack.bootstrap, topics, {e.event_id for e in events})}
    assert all(isinstance(v, Verdict) for v in first.values())
    reviewed = [e for e in events if first[e.event_id].decision == Decision.REVIEW]
    assert len(reviewed) >= 4, [v.decision for v in first.values()]
    assert {v.policy_id for v in first.values()} == {tiny.manifest.policy.id}

    # 2. A moderator decides every card in the browser, by clicks: confirm (block) or overturn (allow).
    store = ReviewStore(stack.redis_url, prefix=f"review-{uuid.uuid4().hex[:6]}:")
    ReviewIngest(s.kafka_bootstrap, s.review_group_id, s.input_topic, s.output_topic, store).drain()
    cards = store.pending(100)
    assert sorted(cards) == sorted(e.event_id for e in reviewed)
    url = serve(s, store)
    browser.get(f"{url}/item/{cards[0]}")
    browser.find_element(By.ID, "username").send_keys("alice")
    browser.find_element(By.ID, "password").send_keys(PASSWORDS["alice"])
    browser.find_element(By.ID, "sign-in").click()

    def shown() -> str | None:
        """The card on the page now (None: the queue is empty)."""
        try:
            items = browser.find_elements(By.ID, "item")
            return items[0].get_attribute("data-event-id") if items else None
        except StaleElementReferenceException:  # the page is being replaced
            return "loading"

    # The moderator agrees with the two memes the harm head is surest of and overturns the rest; a budget of two
    # reviews then has one right answer: review exactly those two.
    surest = sorted(cards, key=lambda c: -first[c].harmful_score)[:2]
    target_review_rate = 2 / len(cards)
    clicked: dict[str, str] = {}
    for _ in range(len(cards)):
        wait_for(lambda: shown() not in (None, "loading") and browser.find_elements(By.ID, "confirm"),
                 browser.current_url)
        card = shown()
        action = "confirm" if card in surest else "overturn"
        if action == "confirm":  # the moderator's harm verdict: how harmful
            browser.find_element(By.CSS_SELECTOR, "#severity-choice option[value='very harmful']").click()
        browser.find_element(By.ID, action).click()
        clicked[card] = action
        wait_for(lambda c=card: shown() not in (c, "loading"), card)  # the click moved on to the next card
    assert not store.pending() and set(clicked) == set(cards)
    assert len(read_json_topic(stack.bootstrap, s.reviews_topic)) == len(cards)

    # 3. Reviews -> dataset (twice: the same bytes).
    data = tmp_path / "dataset"
    assert memeguard(["dataset", "build", "--out", str(data), "--no-progress"]) == 0
    files = {p.name: p.read_bytes() for p in data.rglob("*") if p.is_file()}
    assert memeguard(["dataset", "build", "--out", str(data), "--no-progress"]) == 0
    assert {p.name: p.read_bytes() for p in data.rglob("*") if p.is_file()} == files
    records = json.loads((data / "dataset.json").read_text())
    manifest = json.loads((data / "manifest.json").read_text())
    by_event = {r["event_id"]: r for r in records}
    assert {e: r["decision"] for e, r in by_event.items()} == {
        c: "block" if a == "confirm" else "allow" for c, a in clicked.items()}
    assert manifest["records"] == len(cards) and manifest["moderators"] == {"alice": len(cards)}
    assert manifest["model_versions"] == {f"{tiny.manifest.name}@{tiny.manifest.version}": len(cards)}
    assert all(r["labels"] == sorted(t.technique for t in first[r["event_id"]].flagged) for r in records
               if r["decision"] == "block")
    assert len(list((data / "images").iterdir())) == len(cards)
    assert {r["severity"] for r in records if r["decision"] == "block"} == {"very harmful"}
    assert {r["severity"] for r in records if r["decision"] == "allow"} == {"not harmful"}

    # 4. Calibrate the serving bundle's policy to a review budget on the moderators' decisions (all of them fitted
    # on: five cards leave nothing to hold back).
    candidate = tmp_path / "candidate"
    assert memeguard(["calibrate", "--bundle", str(tiny.root), "--data", str(data), "--target-review-rate",
                      str(target_review_rate), "--holdout", "0", "--out", str(candidate), "--no-progress"]) == 0
    new = ModelBundle.load(candidate)
    assert new.manifest.calibration.decisions_from == "moderators"
    assert new.manifest.thresholds == tiny.manifest.thresholds  # the technique flags are not the lever
    assert new.manifest.policy.harm_review > tiny.manifest.policy.harm_review
    # What the calibrated bundle should decide for each reviewed meme, computed offline.
    scored = score_data(BundleRuntime(new, providers="cpu"), data, None, new.manifest.policy, progress=False)
    expected = dict(zip(scored.ids, decide_all(scored.probs, scored.harmful, np.asarray(new.manifest.thresholds),
                                               scored.labels, new.manifest.policy, scored.severity), strict=True))

    # 5. Shadow: the candidate on the same traffic, its own group and topic; production is untouched.
    shadow_topic = f"shadow-{topics.group}"
    stats = run_shadow(WorkerSettings(), ShadowOptions(bundle=candidate, sample=1.0, shadow_topic=shadow_topic,
                                                       group_id=f"shadow-{topics.group}", idle_exit_s=2.0))
    assert stats.sampled == stats.verdicts == len(events)
    report_file = tmp_path / "compare.json"
    assert memeguard(["compare", "--shadow-topic", shadow_topic, "--out", str(report_file)]) == 0
    comparison = json.loads(report_file.read_text())
    assert comparison["joined"] == len(events)
    assert comparison["shadow_models"] == {f"{new.manifest.name}@{new.manifest.version}": len(events)}
    assert comparison["decision_rates"]["review"]["production"] == pytest.approx(len(reviewed) / len(events))

    # 6. Promote: the gate on the labelled set, then a reload on the control topic; the worker swaps it in.
    gate_report = tmp_path / "gate.json"
    assert memeguard(["promote", "--candidate", str(candidate), "--data", str(data), "--current", str(tiny.root),
                      "--review-budget", str(target_review_rate), "--report", str(gate_report),
                      "--no-progress"]) == 0
    assert json.loads(gate_report.read_text())["passed"]
    deadline = time.monotonic() + 60
    while "ready to swap in" not in worker.log():
        assert time.monotonic() < deadline, f"the worker never validated the promoted bundle:\n{worker.log()}"
        time.sleep(0.2)

    # 7. Later verdicts: the new model version and the calibrated decisions.
    later = _again(reviewed, "after")
    produce_events(stack.bootstrap, topics.input, later)
    outs = {o.event_id: o for o in wait_outputs(stack.bootstrap, topics, {e.event_id for e in later})}
    hash_id = {r["content_hash"]: r["id"] for r in records}
    code = {Decision.ALLOW: ALLOW, Decision.REVIEW: 1, Decision.BLOCK: 2}
    for e in later:
        v = outs[e.event_id]
        # The shadow run already scored these memes under the candidate's version (the cache key's model part),
        # so the promoted worker starts warm.
        assert v.model.version == new.manifest.version and v.cached
        assert v.policy_id == new.manifest.policy.id
        # Same technique scores and flags as before calibration: only the decision moved.
        before = first[e.event_id.removesuffix("-after")]
        assert [(t.score, t.flagged) for t in v.techniques] == [(t.score, t.flagged) for t in before.techniques]
        assert code[v.decision] == expected[hash_id[v.content_hash]], (e.event_id, v.decision)
    assert sorted(e.event_id.removesuffix("-after") for e in later
                  if outs[e.event_id].decision != Decision.ALLOW) == sorted(surest)
    assert worker.stop() == 0, worker.log()
