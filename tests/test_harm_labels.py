"""Moderators' harm verdicts become harm-head training labels: the review page asks how harmful a blocked meme
is, the signed review carries it, `dataset build` keeps it, `train --extra-data` reads it."""

import json
from pathlib import Path

import pytest
from pydantic import ValidationError

from consumer.learning.dataset import _severity
from consumer.review.app import review_message
from consumer.review.auth import Moderator
from consumer.review.store import Item
from models.harm_data import REVIEWS_DOMAIN, load_reviews
from schemas import TECHNIQUES, Decision, ModelInfo, TechniqueScore, Verdict
from schemas.review import ReviewMessage

HASH = "ab" * 32


def item(severity: str | None) -> Item:
    techniques = [TechniqueScore(technique=t, score=0.1, threshold=0.5, flagged=False) for t in TECHNIQUES]
    v = Verdict(event_id="e1", post_id="p1", content_hash=HASH, model=ModelInfo(name="m", version="1"),
                techniques=techniques, decision=Decision.REVIEW, harmful_score=0.7, severity=severity)
    return Item(verdict=v, ref={"text": "t"})


@pytest.mark.parametrize(("action", "chosen", "model_says", "expected"), [
    ("confirm", "very harmful", "somewhat harmful", "very harmful"),  # the moderator's choice wins
    ("confirm", None, "very harmful", "very harmful"),  # unsaid: the model's own severity
    ("confirm", "bogus", "not harmful", "somewhat harmful"),  # a forged form value is not a severity
    ("overturn", "very harmful", "very harmful", "not harmful"),  # allowed means not harmful
])
def test_the_review_carries_the_moderators_severity(action, chosen, model_says, expected):
    message = review_message(item(model_says), action, Moderator("alice", "password"), chosen)
    assert message["severity"] == expected
    assert ReviewMessage.model_validate(message).severity == expected


def test_a_signed_review_cannot_carry_an_unknown_severity():
    message = review_message(item(None), "confirm", Moderator("alice", "password")) | {"severity": "extreme"}
    with pytest.raises(ValidationError):
        ReviewMessage.model_validate(message)


def test_dataset_severity_follows_the_resolved_decision():
    assert _severity("block", "very harmful") == "very harmful"
    assert _severity("block", None) == "somewhat harmful"
    assert _severity("allow", "very harmful") == "not harmful"  # a majority allow outvotes one block


def test_train_reads_moderator_harm_labels_from_a_reviews_dataset(tmp_path: Path):
    rows = [
        {"id": "a", "text": "x", "image": "a.png", "labels": [], "decision": "block", "severity": "very harmful"},
        {"id": "b", "text": "y", "image": "b.png", "labels": [], "decision": "allow", "severity": "not harmful"},
        {"id": "c", "text": "z", "image": "c.png", "labels": [], "decision": "block"},  # older: no severity
        {"id": "d", "text": "w", "image": "d.png", "labels": ["Smears"]},  # a SemEval record: no harm label
    ]
    path = tmp_path / "dataset.json"
    path.write_text(json.dumps(rows))
    memes = load_reviews(path)
    assert [(m.id, m.severity, m.harmful) for m in memes] == [("a", 2, 1), ("b", 0, 0), ("c", 1, 1)]
    assert {m.domain for m in memes} == {REVIEWS_DOMAIN}
