"""The outer-fold estimate of a config's technique figures, from the committed nested-CV study.

`python -m research.technique_nested_cv` writes `bench/results/technique_nested_cv.json`; its `expected` block
holds, per config name, the outer-fold mean, sd and 95% interval of micro/macro-F1. Training copies them into the
run (and the exporter into the bundle manifest) so a bundle states what it should score on memes it never saw.
"""

import json

from models.paths import REPO_ROOT

NESTED_CV_RESULTS = REPO_ROOT / "bench" / "results" / "technique_nested_cv.json"


def expected_figures(config_name: str) -> dict[str, float]:
    if not NESTED_CV_RESULTS.is_file():
        return {}
    entry = json.loads(NESTED_CV_RESULTS.read_text()).get("expected", {}).get(config_name, {})
    return {k: float(v) for k, v in entry.items() if isinstance(v, int | float)}
