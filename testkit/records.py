"""A known, mixed set of input records: unique memes, duplicate content under new ids, and poison.

Every record carries an id the audit can recover from its output, even records that are not JSON
(their id is inside the broken bytes, which come back in the dead letter's `original_value`).
"""

import base64
import json
import random
import re
from dataclasses import dataclass, field
from pathlib import Path

from consumer.demo.produce import MemeSource, read_semeval
from schemas import ErrorKind, MemeEvent

SEMEVAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "semeval2021_task6"
VERDICT = "verdict"
POISON_KINDS = (ErrorKind.INVALID_JSON, ErrorKind.SCHEMA_VIOLATION, ErrorKind.IMAGE_UNDECODABLE,
                ErrorKind.IMAGE_MISSING)
_ID_IN_BROKEN_JSON = re.compile(rb'"event_id": "([^"]+)"')


def memes() -> list[MemeSource]:
    """All 750 shipped memes (train + dev), in a stable order."""
    return read_semeval(SEMEVAL / "train.json") + read_semeval(SEMEVAL / "dev.json")


@dataclass
class RecordSet:
    records: list[tuple[bytes, bytes]] = field(default_factory=list)
    expected: dict[str, str] = field(default_factory=dict)  # event id -> VERDICT or an ErrorKind value
    content: dict[str, tuple[str, str]] = field(default_factory=dict)  # event id -> (image, text) of valid ones
    values: dict[str, bytes] = field(default_factory=dict)  # event id -> the bytes produced

    def add(self, event_id: str, key: bytes, value: bytes, outcome: str) -> None:
        assert event_id not in self.expected, event_id
        self.records.append((key, value))
        self.expected[event_id] = outcome
        self.values[event_id] = value

    def shuffle(self, seed: int) -> None:
        random.Random(seed).shuffle(self.records)

    @property
    def ids(self) -> set[str]:
        return set(self.expected)

    def count(self, outcome: str) -> int:
        return sum(v == outcome for v in self.expected.values())


def valid_event(event_id: str, source: MemeSource, **fields: object) -> MemeEvent:
    return MemeEvent(event_id=event_id, post_id=f"post-{event_id}", image_url=source.image_path.resolve().as_uri(),
                     text=source.text, **fields)


def poison(event_id: str, kind: ErrorKind) -> bytes:
    if kind == ErrorKind.INVALID_JSON:
        return f'{{"event_id": "{event_id}", "post_id": '.encode()  # truncated mid-object
    if kind == ErrorKind.SCHEMA_VIOLATION:
        return json.dumps({"event_id": event_id, "post_id": 7, "image_url": "x"}).encode()
    if kind == ErrorKind.IMAGE_UNDECODABLE:
        return MemeEvent(event_id=event_id, post_id=f"post-{event_id}",
                         image_b64=base64.b64encode(b"\x89PNG but no image " + event_id.encode()).decode()
                         ).model_dump_json().encode()
    if kind == ErrorKind.IMAGE_MISSING:
        return MemeEvent(event_id=event_id, post_id=f"post-{event_id}",
                         image_url=(SEMEVAL / "images" / f"missing-{event_id}.png").as_uri()).model_dump_json().encode()
    raise ValueError(kind)


def mixed(n: int, run: str, dup_frac: float = 0.3, poison_frac: float = 0.1, seed: int = 0,
          unique_pool: int | None = None) -> RecordSet:
    """`n` records in a shuffled order: `dup_frac` repeat earlier content under new ids, `poison_frac` are invalid.

    `unique_pool` caps how many distinct memes are used (the rest of the valid records repeat them).
    """
    rng = random.Random(seed)
    pool = memes()[: unique_pool or None]
    out = RecordSet()
    used: list[MemeSource] = []
    for i in range(n):
        event_id = f"{run}-{i}"
        roll = rng.random()
        if roll < poison_frac:
            kind = POISON_KINDS[i % len(POISON_KINDS)]
            out.add(event_id, event_id.encode(), poison(event_id, kind), kind.value)
            continue
        if used and (roll < poison_frac + dup_frac or len(used) >= len(pool)):
            source = rng.choice(used)
        else:
            source = pool[len(used)]
            used.append(source)
        event = valid_event(event_id, source)
        out.add(event_id, event.post_id.encode(), event.model_dump_json().encode(), VERDICT)
        out.content[event_id] = (source.image_path.name, source.text or "")
    return out


def id_of_dead_letter_original(value: bytes) -> str | None:
    """The id inside a record that did not parse (see `poison`)."""
    try:
        found = json.loads(value).get("event_id")
        return found if isinstance(found, str) else None
    except (ValueError, AttributeError):
        m = _ID_IN_BROKEN_JSON.search(value)
        return m.group(1).decode() if m else None
