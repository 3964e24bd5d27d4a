"""The nested-CV estimate of the default's technique figures, from the committed study.

`python -m research.technique_nested_cv` writes `bench/results/technique_nested_cv.json`; its `selection_rule`
block names the configuration the stated rule chose and its outer-fold micro/macro-F1 (mean, sd, 95% interval),
plus the honest figure of selecting inside the loop. Training copies them into the run (and the exporter into
the bundle manifest, `expected`) so a bundle states what it should score on memes it never saw.
"""

import json

from models.paths import REPO_ROOT

NESTED_CV_RESULTS = REPO_ROOT / "bench" / "results" / "technique_nested_cv.json"
# The configuration each config file is, in the study's candidate names.
STUDY_NAMES = {"memeguard-default": "default_wd0.1"}


def expected_figures(config_name: str) -> dict[str, float]:
    """Empty unless the study chose this config (a figure for another configuration would not be its own)."""
    if config_name not in STUDY_NAMES or not NESTED_CV_RESULTS.is_file():
        return {}
    rule = json.loads(NESTED_CV_RESULTS.read_text()).get("selection_rule", {})
    if rule.get("chosen") != STUDY_NAMES[config_name]:
        return {}
    micro, macro = rule["expected_micro_f1"], rule["expected_macro_f1"]
    inside = rule.get("selection_inside_the_loop", {})
    out = {
        "expected_micro_f1": micro["mean"], "expected_micro_f1_sd": micro["sd"],
        "expected_micro_f1_low": micro["interval_95"][0], "expected_micro_f1_high": micro["interval_95"][1],
        "expected_macro_f1": macro["mean"], "expected_macro_f1_sd": macro["sd"],
    }
    if inside:
        out["selection_inside_micro_f1"] = inside["micro_f1_mean"]
        out["selection_inside_micro_f1_sd"] = inside["micro_f1_sd"]
    return {k: float(v) for k, v in out.items()}
