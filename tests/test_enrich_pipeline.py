"""EnrichmentPipeline: building from names, disabling stages whose weights are missing, skipping,
timings, the feature text, thread safety, and the Verdict carrying the result."""

import logging
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from consumer.enrich import EnrichmentPipeline  # noqa: E402
from consumer.errors import ConfigError  # noqa: E402
from models.features.synthetic import render_meme  # noqa: E402
from schemas import Decision, ModelInfo, Verdict  # noqa: E402
from schemas.enrichment import (  # noqa: E402
    Box,
    DetectedObject,
    Enrichment,
    Face,
    FaceAttributes,
    Sentiment,
    SentimentLabel,
    feature_text,
)

MEME = render_meme("I HATE MONDAYS", "SO MUCH", size=40)[0]


@pytest.fixture(scope="module")
def pipe() -> EnrichmentPipeline:
    return EnrichmentPipeline.from_names(["ocr", "faces", "objects", "attributes"], {})


def test_stage_names_in_order(pipe: EnrichmentPipeline) -> None:
    assert pipe.stage_names == ["ocr", "sentiment", "faces", "objects", "attributes", "feature_text"]


def test_ocr_runs_only_without_text(pipe: EnrichmentPipeline) -> None:
    no_text = pipe.enrich(MEME, None)
    assert no_text.ocr is not None and "MONDAYS" in no_text.ocr.text
    assert "ocr" in no_text.timings_ms and no_text.timings_ms["ocr"] > 0
    assert no_text.sentiment is not None and no_text.sentiment.label is SentimentLabel.NEGATIVE
    assert no_text.feature_text is not None and no_text.feature_text.startswith("text: I HATE MONDAYS")
    assert no_text.skipped.get("attributes") == "no faces" and not no_text.errors

    with_text = pipe.enrich(MEME, "what a lovely day")
    assert with_text.ocr is None and with_text.skipped["ocr"] == "event carries text"
    assert "ocr" not in with_text.timings_ms
    assert with_text.sentiment is not None and with_text.sentiment.label is SentimentLabel.POSITIVE


def test_enrich_is_thread_safe(pipe: EnrichmentPipeline) -> None:
    images = [render_meme(f"CAPTION {i}", size=40, seed=i)[0] for i in range(4)]
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(lambda im: pipe.enrich(im, None), images))
    for i, r in enumerate(results):
        assert r.ocr is not None and f"CAPTION {i}" in r.ocr.text.upper()


def test_missing_weights_disable_one_stage_with_one_log_line(tmp_path: Path, caplog) -> None:
    opts = {
        "objects": {"backend": "yolov8", "model_path": str(tmp_path / "yolov8n.onnx")},
        "attributes": {"backend": "deepface", "deepface_home": str(tmp_path)},
    }
    with caplog.at_level(logging.WARNING, logger="consumer.enrich.pipeline"):
        pipe = EnrichmentPipeline.from_names(["faces", "objects", "attributes", "explainer"], opts)
    assert pipe.stage_names == ["sentiment", "faces", "feature_text"]
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 3  # one each: objects, attributes, explainer (no url/model)
    assert any("'objects' disabled" in m and "yolov8n.onnx" in m for m in lines)
    assert any("'attributes' disabled" in m for m in lines)
    assert any("'explainer' disabled" in m and "url" in m for m in lines)
    assert all("\n" not in m for m in lines)


def test_unknown_stage_and_bad_option_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="Unknown enrichment stage"):
        EnrichmentPipeline.from_names(["ocr", "telepathy"], {})
    with pytest.raises(ConfigError, match="faces"):
        EnrichmentPipeline.from_names(["faces"], {"faces": {"min_neighbours": 3}})  # typo


def test_attributes_pull_in_faces_and_derived_stages_can_be_turned_off() -> None:
    pipe = EnrichmentPipeline.from_names(["attributes"], {"sentiment": {"enabled": False}})
    assert pipe.stage_names == ["faces", "attributes", "feature_text"]
    assert EnrichmentPipeline.from_names([], {}).stage_names == []


def test_a_failing_stage_is_reported_not_raised(pipe: EnrichmentPipeline, monkeypatch) -> None:
    faces = next(s for s in pipe.stages if s.name == "faces")

    def boom(records: object) -> None:
        raise RuntimeError("cascade exploded")

    monkeypatch.setattr(faces, "process", boom)
    result = pipe.enrich(MEME, "caption")
    assert result.errors == {"faces": "RuntimeError: cascade exploded"}
    assert result.feature_text is not None


def test_text_removed_view(pipe: EnrichmentPipeline) -> None:
    e = pipe.enrich(MEME, None)
    view = pipe.text_removed_view(MEME, e)
    assert view.size == MEME.size and not np.array_equal(np.asarray(view), np.asarray(MEME))


def test_feature_text_recipe() -> None:
    box = Box(x1=0, y1=0, x2=10, y2=10)
    text = feature_text(
        "ONLY TWO\nGENDERS",
        sentiment=Sentiment(label=SentimentLabel.NEUTRAL, compound=0.0, method="vader"),
        objects=[DetectedObject(label=lbl, score=s, box=box, detector="t")
                 for lbl, s in (("person", 0.9), ("person", 0.8), ("flag", 0.5))],
        faces=[Face(box=box, detector="haar")] * 2,
        attributes=[FaceAttributes(face_index=0, age=30, age_group="young adult", gender="female",
                                   backend="age_gender")],
    )
    assert text == (
        "text: ONLY TWO GENDERS | sentiment: neutral | objects: 2 person, flag | faces: 2 "
        "| people: female young adult"
    )
    empty = feature_text(None, sentiment=None, objects=[], faces=[], attributes=[])
    assert empty == "text: none | sentiment: unknown | objects: none | faces: 0 | people: none"


def test_verdict_carries_enrichment_and_round_trips() -> None:
    enrichment = Enrichment(feature_text="text: x", timings_ms={"ocr": 1.5})
    v = Verdict(
        event_id="e", post_id="p", content_hash="h", model=ModelInfo(name="m", version="1"),
        techniques=[], decision=Decision.ALLOW, enrichment=enrichment,
    )
    back = Verdict.model_validate_json(v.model_dump_json())
    assert back.enrichment == enrichment
    bare = v.model_copy(update={"enrichment": None}).model_dump_json()
    assert Verdict.model_validate_json(bare).enrichment is None


def test_explain_without_explainer_is_none(pipe: EnrichmentPipeline) -> None:
    import asyncio

    assert asyncio.run(pipe.explain(Image.new("RGB", (8, 8)), "x", "review")) is None
