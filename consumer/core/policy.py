"""Which decision policy serves a verdict, and the harm fields a prediction gives it.

The rules themselves are `schemas.policy.DecisionPolicy` (they travel in the bundle manifest). A deployment
may override them with a YAML file (MEMEGUARD_POLICY_FILE), validated as strictly as the manifest's.
"""

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import yaml

from consumer.errors import ConfigError
from schemas import BundleManifest
from schemas.policy import SEVERITY_LEVELS, DecisionPolicy

if TYPE_CHECKING:
    from consumer.core.runtime import Prediction

__all__ = ["DecisionPolicy", "harm_fields", "load_policy_file", "serving_policy"]


def load_policy_file(path: Path | None) -> DecisionPolicy | None:
    """The override policy of a deployment, or None (each bundle's own policy serves)."""
    if path is None:
        return None
    try:
        raw = yaml.safe_load(path.read_text()) or {}
        if not isinstance(raw, dict):
            raise ValueError("the file must hold a mapping of policy fields")
        return DecisionPolicy.model_validate({"id": f"file:{path.name}", **raw})
    except (OSError, yaml.YAMLError, ValueError) as e:
        raise ConfigError(f"Decision policy {path} is unreadable or invalid: {e}") from e


def serving_policy(manifest: BundleManifest, override: DecisionPolicy | None) -> DecisionPolicy:
    """The override, else the bundle's own policy, else the built-in technique rules (older bundles)."""
    return override or manifest.policy or DecisionPolicy()


def harm_fields(prediction: "Prediction", row: int) -> dict[str, Any] | None:
    """`harmful_score`, `severity` and `severity_scores` of one row (None values where the bundle has no such
    head), or None when the model gave a non-finite score."""
    fields: dict[str, Any] = {"harmful_score": None, "severity": None, "severity_scores": None}
    if prediction.harmful_probs is not None:
        p = float(prediction.harmful_probs[row])
        if not np.isfinite(p):
            return None
        fields["harmful_score"] = min(max(p, 0.0), 1.0)
    if prediction.severity_probs is not None:
        sev = prediction.severity_probs[row]
        if not np.isfinite(sev).all():
            return None
        sev = np.clip(sev, 0.0, 1.0)
        fields["severity_scores"] = [round(float(v), 6) for v in sev]
        fields["severity"] = SEVERITY_LEVELS[int(np.argmax(sev))]
    return fields
