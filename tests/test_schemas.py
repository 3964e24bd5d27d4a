import json

import pytest
from pydantic import ValidationError

from consumer.cli import main
from schemas import SCHEMA_VERSION, TECHNIQUE_DESCRIPTIONS, TECHNIQUES, DeadLetter, ErrorKind, MemeEvent, Origin
from tests.memes import SEMEVAL


def test_taxonomy_matches_the_official_list():
    official = [t for t in (SEMEVAL / "techniques.txt").read_text().splitlines() if t]
    assert list(TECHNIQUES) == official
    assert set(TECHNIQUE_DESCRIPTIONS) == set(TECHNIQUES)


def test_event_needs_exactly_one_image_source():
    with pytest.raises(ValidationError, match="exactly one"):
        MemeEvent(event_id="e", post_id="p")
    with pytest.raises(ValidationError, match="exactly one"):
        MemeEvent(event_id="e", post_id="p", image_b64="AA==", image_url="file:///x")
    assert MemeEvent(event_id="e", post_id="p", image_url="file:///x").schema_version == SCHEMA_VERSION


def test_event_rejects_unknown_fields_and_other_major_versions():
    with pytest.raises(ValidationError):
        MemeEvent(event_id="e", post_id="p", image_url="file:///x", surprise=1)
    with pytest.raises(ValidationError, match="unsupported schema_version"):
        MemeEvent(event_id="e", post_id="p", image_url="file:///x", schema_version="2.0")


def test_dead_letter_round_trips_arbitrary_bytes():
    raw = bytes(range(256))
    dl = DeadLetter(error_kind=ErrorKind.INVALID_JSON, message="m", origin=Origin(topic="t", partition=1, offset=5),
                    original_key=b"\xff", original_value=raw)
    back = DeadLetter.model_validate_json(dl.model_dump_json())
    assert back.original_value == raw and back.original_key == b"\xff" and back.schema_version == SCHEMA_VERSION


def test_schemas_export_writes_json_schema_for_every_contract(tmp_path):
    assert main(["schemas", "export", str(tmp_path)]) == 0
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["bundle_manifest.schema.json", "dead_letter.schema.json", "meme_event.schema.json",
                     "verdict.schema.json", "verdict_explanation.schema.json"]
    verdict = json.loads((tmp_path / "verdict.schema.json").read_text())
    assert {"schema_version", "techniques", "decision", "cached", "harmful_score"} <= set(verdict["properties"])
