"""`memeguard produce`: publish real memes as MemeEvents (SemEval-format file or a folder of images)."""

import base64
import json
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from confluent_kafka import KafkaError, Producer
from tqdm import tqdm

from consumer.errors import ConfigError
from consumer.kafka.config import client_config
from schemas import MemeEvent

# File name suffixes of the formats the worker can decode (MEMEGUARD_IMAGE_FORMATS); other image files in a
# folder are skipped with a note: published, they would only become image_undecodable dead letters.
FORMAT_SUFFIXES = {"JPEG": (".jpg", ".jpeg"), "PNG": (".png",), "WEBP": (".webp",), "GIF": (".gif",)}
OTHER_IMAGE_SUFFIXES = (".bmp", ".tif", ".tiff", ".ico", ".heic", ".heif", ".avif", ".jxl", ".svg", ".psd")
IMAGE_SUFFIXES = {s for suffixes in FORMAT_SUFFIXES.values() for s in suffixes}


@dataclass(frozen=True)
class MemeSource:
    record_id: str
    image_path: Path
    text: str | None
    labels: list[str] | None


def read_semeval(data_file: Path, images_dir: Path | None = None) -> list[MemeSource]:
    """Records `{"id","text","image","labels"?}`; images resolved against `images_dir` (default: beside it)."""
    try:
        records = json.loads(data_file.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ConfigError(f"Cannot read SemEval-format file {data_file}: {e}") from e
    images_dir = images_dir or data_file.parent / "images"
    if not images_dir.is_dir():
        raise ConfigError(f"Images folder {images_dir} does not exist: pass --images DIR (the folder the records' "
                          "'image' names are in).")
    return [MemeSource(str(r["id"]), images_dir / r["image"], r.get("text"), r.get("labels")) for r in records]


def read_folder(folder: Path, formats: list[str] | None = None) -> tuple[list[MemeSource], list[Path]]:
    """The images in `folder` the worker decodes (`formats`, default all it can), and the image files skipped."""
    if not folder.is_dir():
        raise ConfigError(f"Folder {folder} does not exist.")
    accepted = {s for f in (formats or FORMAT_SUFFIXES) for s in FORMAT_SUFFIXES.get(f, ())}
    known = set(OTHER_IMAGE_SUFFIXES) | IMAGE_SUFFIXES
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in accepted)
    skipped = sorted(p for p in folder.iterdir() if p.suffix.lower() in known - accepted)
    if not files:
        raise ConfigError(f"No images the worker decodes ({', '.join(sorted(accepted))}) in {folder}"
                          + (f"; {len(skipped)} other image file(s) there, e.g. {skipped[0].name}, would be refused."
                             if skipped else "."))
    return [MemeSource(p.stem, p, None, None) for p in files], skipped


def check_file_root(sources: list[MemeSource], file_root: Path) -> None:
    """A file:// reference outside the worker's MEMEGUARD_FILE_ROOT is a forbidden_url dead letter: say so
    before publishing anything."""
    root = file_root.resolve()
    outside = [s.image_path for s in sources if not s.image_path.resolve().is_relative_to(root)]
    if outside:
        raise ConfigError(f"{len(outside)} of {len(sources)} images (e.g. {outside[0]}) lie outside "
                          f"MEMEGUARD_FILE_ROOT ({root}), so the worker would dead-letter them as forbidden_url: "
                          "pass --inline to embed them in the events, or point MEMEGUARD_FILE_ROOT (the workers' "
                          "and this command's) at a folder that holds them.")


def check_images(sources: list[MemeSource]) -> None:
    """Publishing a reference to an image that is not there only makes dead letters: refuse up front."""
    missing = [s.image_path for s in sources if not s.image_path.is_file()]
    if missing:
        raise ConfigError(f"{len(missing)} of {len(sources)} images are missing, e.g. {missing[0]}: "
                          "check --images (or --data).")


def to_events(sources: list[MemeSource], run_id: str, inline: bool, with_labels: bool) -> Iterator[MemeEvent]:
    for s in sources:
        image = ({"image_b64": base64.b64encode(s.image_path.read_bytes()).decode()} if inline
                 else {"image_url": s.image_path.resolve().as_uri()})
        yield MemeEvent(event_id=f"{run_id}:{s.record_id}", post_id=s.record_id, text=s.text,
                        labels=s.labels if with_labels else None, metadata={"source": str(s.image_path.name)},
                        **image)


def new_run_id() -> str:
    return uuid.uuid4().hex[:12]


def produce_events(bootstrap: str, topic: str, events: list[MemeEvent], rate: float | None = None,
                   progress: bool = True) -> int:
    """Publish keyed by post id; waits for every delivery report. Returns the number acknowledged."""
    from consumer.kafka.topics import raise_if_rejected

    connection_errors: list[KafkaError] = []
    producer = Producer(client_config(bootstrap, {"acks": "all", "enable.idempotence": False, "linger.ms": 5,
                                                  "message.max.bytes": 16 * 1024 * 1024,
                                                  "error_cb": connection_errors.append}))
    errors: list[str] = []
    acked = 0

    def on_delivery(err, _msg) -> None:
        nonlocal acked
        if err is not None:
            errors.append(str(err))
        else:
            acked += 1

    start = time.monotonic()
    for n, event in enumerate(tqdm(events, desc=f"produce → {topic}", unit="meme", disable=not progress)):
        if rate:
            delay = start + n / rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
        producer.produce(topic, key=event.post_id.encode(), value=event.model_dump_json().encode(),
                         on_delivery=on_delivery)
        producer.poll(0)
        raise_if_rejected(bootstrap, connection_errors)
    # Flush in slices: a broker that rejects our credentials ends the wait at once, not after 30 s.
    deadline = time.monotonic() + 30
    while (left := producer.flush(0.5)) and time.monotonic() < deadline:
        raise_if_rejected(bootstrap, connection_errors)
    raise_if_rejected(bootstrap, connection_errors)
    if errors:
        raise ConfigError(f"{len(errors)} events were not acknowledged by {bootstrap}: {errors[0]}")
    if left:
        raise ConfigError(f"{left} events were not acknowledged by {bootstrap} within 30 s.")
    return acked
