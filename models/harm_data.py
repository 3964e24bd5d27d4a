"""HarMeme (MOMENTA, EMNLP Findings 2021): text-only harmfulness labels for two domains of real memes.

Only train and val are shipped; the test splits are held out for the project's evaluation and never read.
The OCR texts contain slurs: nothing here logs a text.
"""

import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from models.errors import DataError
from models.paths import data_dir

SEVERITIES = ("not harmful", "somewhat harmful", "very harmful")
DOMAINS = {"harm_c": "COVID-19", "harm_p": "US politics"}
# Train + val of both domains: what the harm head is fitted and cross-validated on.
POOL_FILES = ("harm_c_train", "harm_c_val", "harm_p_train", "harm_p_val")


@dataclass(frozen=True)
class HarmMeme:
    id: str
    text: str
    severity: int  # index into SEVERITIES
    domain: str  # a key of DOMAINS

    @property
    def harmful(self) -> int:
        """The published binary setting: somewhat or very harmful."""
        return int(self.severity > 0)


def harmeme_dir() -> Path:
    return data_dir() / "harmeme"


def load_harmeme(path: Path, domain: str | None = None) -> list[HarmMeme]:
    """One HarMeme annotation file: `{"id", "image", "labels": [severity, target...], "text"}` per line.

    A record whose severity is empty (one in harm_p_train) is skipped: it has no severity to learn.
    """
    if not path.is_file():
        raise DataError(f"HarMeme file {path} does not exist; set MEMEGUARD_DATA_DIR to the folder holding harmeme/.")
    domain = domain or ("harm_p" if path.name.startswith("harm_p") else "harm_c")
    memes = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            labels = row.get("labels") or []
            if not labels or not labels[0]:
                continue
            memes.append(HarmMeme(str(row["id"]), str(row.get("text", "")), SEVERITIES.index(labels[0]), domain))
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
            raise DataError(f"Line {n} of {path} is not a HarMeme record ({type(e).__name__}).") from e
    return memes


REVIEWS_DOMAIN = "reviews"


def load_reviews(path: Path) -> list[HarmMeme]:
    """A `memeguard dataset build` dataset.json: each moderator-decided meme with its severity (an allowed one is
    'not harmful'). Records without a decision (plain SemEval files) carry no harm label and are skipped."""
    try:
        rows = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise DataError(f"Reviews dataset {path} is unreadable ({type(e).__name__}).") from e
    if not isinstance(rows, list):
        raise DataError(f"Reviews dataset {path} must hold a JSON list of records.")
    memes = []
    for row in rows:
        if not isinstance(row, dict) or row.get("decision") not in ("block", "allow"):
            continue
        severity = row.get("severity") if row["decision"] == "block" else "not harmful"
        if severity not in SEVERITIES[1:] and row["decision"] == "block":
            severity = "somewhat harmful"
        memes.append(HarmMeme(str(row.get("id")), str(row.get("text") or ""), SEVERITIES.index(severity),
                              REVIEWS_DOMAIN))
    return memes


def _first_of_each_severity(memes: list[HarmMeme], n: int) -> list[HarmMeme]:
    return [m for level in range(len(SEVERITIES)) for m in [x for x in memes if x.severity == level][:n]]


def load_pool(extra: tuple[Path, ...] = (), limit: int | None = None) -> list[HarmMeme]:
    """HarMeme train+val, plus moderators' decisions from reviews datasets (`train --extra-data`).
    `limit` (smoke runs): the first `limit` memes of each severity of each file, so every level occurs."""
    files = [load_harmeme(harmeme_dir() / f"{name}.jsonl") for name in POOL_FILES]
    files += [load_reviews(path) for path in extra]
    return [m for f in files for m in (_first_of_each_severity(f, limit) if limit else f)]


def text_groups(memes: list[HarmMeme]) -> np.ndarray:
    """Group id per meme by normalised text: repeated OCR texts (different images, sometimes different labels)
    must fall in one fold, or cross-validation scores a text the model has already seen."""
    ids: dict[str, int] = {}
    return np.asarray([ids.setdefault(re.sub(r"\W+", " ", m.text.lower()).strip(), len(ids)) for m in memes])
