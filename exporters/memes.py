"""Real memes (image + text + labels) read from a SemEval-format file, for parity checks and golden sets."""

import json
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from exporters.errors import ExportError

# The model loader `memeguard export` uses unless told otherwise (here, not in exporters/run.py, which imports
# torch: the CLI reads it for its --help).
DEFAULT_LOADER = "models.inference:load_for_export"

DEFAULT_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "semeval2021_task6"


@dataclass(frozen=True)
class Meme:
    id: str
    image: Image.Image
    text: str
    labels: list[str] | None = None
    source: Path | None = None  # the original image file, copied as-is into golden sets


def load_memes(data_json: Path, images_dir: Path | None = None, limit: int | None = None) -> list[Meme]:
    """Records `{"id","text","image","labels"?}`; images decoded by content (the '.png' files are JPEG)."""
    images_dir = images_dir or data_json.parent / "images"
    try:
        records = json.loads(data_json.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise ExportError(
            f"Cannot read parity memes from {data_json}: {e}. Pass --parity-data FILE.json."
        ) from e
    memes = []
    for r in records[:limit]:
        path = images_dir / r["image"]
        try:
            with Image.open(path) as im:
                image = im.convert("RGB")
        except OSError as e:
            raise ExportError(f"Parity meme {r['id']}: cannot decode {path}: {e}.") from e
        memes.append(Meme(str(r["id"]), image, r.get("text") or "", r.get("labels"), path))
    return memes
