"""Load a model bundle from disk: manifest + files, every file's sha256 verified."""

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from pydantic import ValidationError

from consumer.errors import BundleError
from schemas import BundleManifest, FileDigest

MANIFEST = "manifest.json"


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def digest_files(root: Path, names: list[str]) -> list[FileDigest]:
    """Digests for the manifest's `files` list (used by the exporter when writing a bundle)."""
    return [FileDigest(path=n, sha256=sha256_file(root / n), bytes=(root / n).stat().st_size) for n in names]


@dataclass(frozen=True)
class ModelBundle:
    root: Path
    manifest: BundleManifest

    @property
    def onnx_path(self) -> Path:
        return self.root / self.manifest.onnx_file

    @classmethod
    def load(cls, path: Path | str, verify: bool = True) -> "ModelBundle":
        root = Path(path).resolve()  # a symlinked bundle path resolves to the version it points at
        manifest_path = root / MANIFEST
        if not manifest_path.is_file():
            raise BundleError(
                f"No model bundle at {path}: {MANIFEST} is missing. Build one with `memeguard bundle` "
                "or point MEMEGUARD_BUNDLE_PATH at an exported bundle."
            )
        try:
            manifest = BundleManifest.model_validate_json(manifest_path.read_bytes())
        except (ValidationError, json.JSONDecodeError) as e:
            raise BundleError(f"Model bundle {path} has an invalid {MANIFEST}: {e}") from e
        bundle = cls(root=root, manifest=manifest)
        if verify:
            bundle.verify()
        return bundle

    def verify(self) -> None:
        listed = {f.path for f in self.manifest.files}
        if self.manifest.onnx_file not in listed:
            raise BundleError(f"Model bundle {self.root}: {self.manifest.onnx_file} is not listed with a sha256.")
        for f in self.manifest.files:
            p = self.root / f.path
            if not p.is_file():
                raise BundleError(f"Model bundle {self.root} is incomplete: {f.path} is missing. Re-export it.")
            if p.stat().st_size != f.bytes or sha256_file(p) != f.sha256:
                raise BundleError(
                    f"Model bundle {self.root}: {f.path} does not match its sha256 in {MANIFEST} "
                    "(truncated or tampered). Re-export the bundle; refusing to load it."
                )
