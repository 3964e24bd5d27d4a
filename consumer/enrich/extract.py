"""Offline batch enrichment: run the pipeline over a labelled meme set and write one JSON line per
meme, for training the feature-text classifier (`models/features/`) without torch in the service
or the service in training. Resumable: ids already in the output are skipped.

    python -m consumer.enrich.extract --manifest train.json dev.json --images DIR --out .cache/enrich/x.jsonl
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from PIL import Image
from tqdm import tqdm

from consumer.enrich.pipeline import EnrichmentPipeline
from consumer.enrich.sentiment import SentimentStage
from schemas.enrichment import Enrichment, feature_text


def with_caption(enrichment: Enrichment, caption: str, sentiment: SentimentStage | None) -> Enrichment:
    """The same visual features, with the event's own caption in place of what OCR read."""
    senti = sentiment.score(caption) if sentiment else None
    text = feature_text(
        caption, sentiment=senti, objects=enrichment.objects, faces=enrichment.faces,
        attributes=enrichment.attributes,
    )
    return enrichment.model_copy(update={"sentiment": senti, "feature_text": text})


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--manifest", nargs="+", type=Path, required=True,
                    help="JSON lists of {id, image, text} (SemEval-2021 task 6 layout)")
    ap.add_argument("--images", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--stages", default="ocr,faces,objects,attributes")
    ap.add_argument("--limit", type=int, default=None)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    items = [row for m in args.manifest for row in json.loads(m.read_text())][: args.limit]
    done: set[str] = set()
    if args.out.exists():
        done = {json.loads(line)["id"] for line in args.out.read_text().splitlines() if line.strip()}
    todo = [row for row in items if str(row["id"]) not in done]
    pipe = EnrichmentPipeline.from_names(args.stages.split(","), {})
    sentiment = next((s for s in pipe.stages if isinstance(s, SentimentStage)), None)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with args.out.open("a") as out:
        for row in tqdm(todo, desc="enrich", disable=not sys.stderr.isatty()):
            path = args.images / row["image"]
            try:
                image = Image.open(path).convert("RGB")
            except OSError as e:
                print(f"skipping {path}: {e}", file=sys.stderr)
                continue
            ocr_view = pipe.enrich(image, None)  # text=None forces OCR, as for a text-less event
            caption_view = with_caption(ocr_view, row.get("text") or "", sentiment)
            out.write(json.dumps({
                "id": str(row["id"]), "image": row["image"],
                "ocr": ocr_view.model_dump(mode="json"), "caption": caption_view.model_dump(mode="json"),
            }) + "\n")
            out.flush()
    print(f"wrote {len(todo)} new rows to {args.out} ({len(done)} already there)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
