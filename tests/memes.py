"""Real SemEval memes as MemeEvents, for the tests."""

import base64
import uuid
from pathlib import Path

from consumer.demo.produce import read_semeval, to_events
from schemas import MemeEvent

SEMEVAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "semeval2021_task6"


def dev_events(n: int, run_id: str | None = None, inline: bool = False) -> list[MemeEvent]:
    sources = read_semeval(SEMEVAL / "dev.json")[:n]
    return list(to_events(sources, run_id or uuid.uuid4().hex[:8], inline=inline, with_labels=False))


def meme_bytes(i: int = 0) -> bytes:
    return (SEMEVAL / "images" / read_semeval(SEMEVAL / "dev.json")[i].image_path.name).read_bytes()


def event(event_id: str, **fields) -> MemeEvent:
    if "image_b64" not in fields and "image_url" not in fields:
        fields["image_b64"] = base64.b64encode(meme_bytes()).decode()
    return MemeEvent(event_id=event_id, post_id=fields.pop("post_id", event_id), **fields)
