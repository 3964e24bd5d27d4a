"""JSON Schema export for every wire contract (`memeguard schemas export DIR`)."""

import json
from pathlib import Path

from schemas.dead_letter import DeadLetter
from schemas.events import MemeEvent
from schemas.explanation import VerdictExplanation
from schemas.manifest import BundleManifest
from schemas.verdict import Verdict

CONTRACTS = {"meme_event": MemeEvent, "verdict": Verdict, "dead_letter": DeadLetter,
             "verdict_explanation": VerdictExplanation, "bundle_manifest": BundleManifest}


def export_json_schemas(out_dir: Path) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name, model in CONTRACTS.items():
        path = out_dir / f"{name}.schema.json"
        path.write_text(json.dumps(model.model_json_schema(mode="serialization"), indent=2) + "\n")
        written.append(path)
    return written
