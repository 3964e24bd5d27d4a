"""Where training finds its data and writes its caches (overridable by environment variables)."""

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]


def data_dir() -> Path:
    """`MEMEGUARD_DATA_DIR`, default `<repo>/../shared/data` (the read-only shared data folder)."""
    return Path(os.environ.get("MEMEGUARD_DATA_DIR", REPO_ROOT.parent / "shared" / "data"))


def semeval_dir() -> Path:
    return data_dir() / "semeval2021_task6"


def cache_dir() -> Path:
    """`MEMEGUARD_CACHE_DIR`, default `<repo>/.cache` (git-ignored)."""
    return Path(os.environ.get("MEMEGUARD_CACHE_DIR", REPO_ROOT / ".cache"))


def weights_dir() -> Path:
    """`MEMEGUARD_WEIGHTS_DIR`, default `<repo>/.cache/weights`: installed model weights (scripts/install_mpnet.sh).

    Apart from `cache_dir()` on purpose: a cold feature cache (an empty `MEMEGUARD_CACHE_DIR`) keeps the weights.
    """
    return Path(os.environ.get("MEMEGUARD_WEIGHTS_DIR", REPO_ROOT / ".cache" / "weights"))


def feature_cache_dir() -> Path:
    return cache_dir() / "features"
