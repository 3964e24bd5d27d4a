"""Where the project keeps things on disk, overridable by environment variables."""

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]


def cache_dir() -> Path:
    return Path(os.environ.get("MEMEGUARD_CACHE_DIR", REPO_ROOT / ".cache"))


def data_dir() -> Path:
    return Path(os.environ.get("MEMEGUARD_DATA_DIR", REPO_ROOT.parent / "shared" / "data"))


def semeval_dir() -> Path:
    return data_dir() / "semeval2021_task6"


def default_bundle_dir() -> Path:
    return cache_dir() / "bundles" / "default"
