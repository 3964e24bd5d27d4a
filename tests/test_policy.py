import pytest

from consumer.core.policy import DecisionPolicy, load_policy_file, serving_policy
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
    p = load_policy_file(f)
    assert p.id == "file:policy.yaml"
    assert p.decide(scores(**{"Doubt": 0.7}), None)[0] == Decision.ALLOW
    assert p.decide(scores(**{"Smears": 0.65}), None)[0] == Decision.BLOCK
    f.write_text("no_such_rule: 1\n")
    with pytest.raises(ConfigError, match="policy.yaml"):
        load_policy_file(f)


def test_a_misspelt_technique_in_a_policy_file_is_refused(tmp_path):
    # Accepted silently before, it switched blocking off (the name never matched a flag).
    f = tmp_path / "policy.yaml"
    f.write_text("severe_techniques: [Reductio ad Hitlerum]\n")
    with pytest.raises(ConfigError, match="Reductio ad Hitlerum"):
        load_policy_file(f)


HARM_POLICY = DecisionPolicy(id="harm-test", harm_review=0.4, harm_block=0.95, severity_block=0.6, review_min_flags=0)


def test_with_a_harm_head_techniques_alone_do_not_review():
    decision, reasons = HARM_POLICY.decide(scores(**{"Smears": 0.9, "Loaded Language": 0.8}), 0.2)
    assert decision == Decision.ALLOW and "0.20 < 0.40" in reasons[0]


def test_harm_rules_review_and_block():
    assert HARM_POLICY.decide(scores(), 0.5)[0] == Decision.REVIEW
    assert HARM_POLICY.decide(scores(), 0.96)[0] == Decision.BLOCK
    decision, reasons = HARM_POLICY.decide(scores(), 0.5, [0.1, 0.2, 0.7])
    assert decision == Decision.BLOCK and "very harmful" in reasons[0]


def test_a_severe_technique_blocks_only_a_meme_the_harm_head_finds_harmful():
    severe = scores(**{"Reductio ad hitlerum": 0.95})
    assert HARM_POLICY.decide(severe, 0.1)[0] == Decision.ALLOW
    assert HARM_POLICY.decide(severe, 0.5)[0] == Decision.BLOCK


def test_the_bundle_policy_serves_unless_the_deployment_overrides_it(tiny_bundle):
    from consumer.core.bundle import ModelBundle

    manifest = ModelBundle.load(tiny_bundle).manifest
    assert serving_policy(manifest, None) == DecisionPolicy()  # a bundle without a policy: the built-in rules
    with_policy = manifest.model_copy(update={"policy": HARM_POLICY})
    assert serving_policy(with_policy, None).id == "harm-test"
    assert serving_policy(with_policy, DecisionPolicy(id="ops")).id == "ops"
