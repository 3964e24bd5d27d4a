import pytest

from consumer.core.policy import DecisionPolicy
from consumer.errors import ConfigError
from schemas import TECHNIQUES, Decision, TechniqueScore


def scores(**flagged: float) -> list[TechniqueScore]:
    out = []
    for name in TECHNIQUES:
        s = flagged.get(name, 0.1)
        out.append(TechniqueScore(technique=name, score=s, threshold=0.5, flagged=s >= 0.5))
    return out


def test_nothing_flagged_allows():
    assert DecisionPolicy().decide(scores(), None)[0] == Decision.ALLOW


def test_any_flag_reviews_and_names_it():
    decision, reasons = DecisionPolicy().decide(scores(**{"Smears": 0.7}), None)
    assert decision == Decision.REVIEW and "Smears" in reasons[0]


def test_severe_technique_with_high_confidence_blocks():
    assert DecisionPolicy().decide(scores(**{"Reductio ad hitlerum": 0.95}), None)[0] == Decision.BLOCK
    # flagged but not confident enough: review, not block
    assert DecisionPolicy().decide(scores(**{"Reductio ad hitlerum": 0.6}), None)[0] == Decision.REVIEW


def test_harmful_score_rules():
    p = DecisionPolicy()
    assert p.decide(scores(), 0.95)[0] == Decision.BLOCK
    assert p.decide(scores(), 0.6)[0] == Decision.REVIEW
    assert p.decide(scores(), 0.1)[0] == Decision.ALLOW


def test_policy_from_yaml(tmp_path):
    f = tmp_path / "policy.yaml"
    f.write_text("review_min_flags: 2\nsevere_techniques: [Smears]\nblock_min_score: 0.6\n")
    p = DecisionPolicy.from_file(f)
    assert p.decide(scores(**{"Doubt": 0.7}), None)[0] == Decision.ALLOW
    assert p.decide(scores(**{"Smears": 0.65}), None)[0] == Decision.BLOCK
    f.write_text("no_such_rule: 1\n")
    with pytest.raises(ConfigError, match="policy.yaml"):
        DecisionPolicy.from_file(f)
