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
class GoldenRecord:
    """One meme of the bundle's golden set and the outputs recorded for it at export time."""

    id: str
    image_path: Path
    text: str
    technique_probs: list[float]
    harmful_prob: float | None


@dataclass(frozen=True)
class ModelBundle:
    root: Path
    manifest: BundleManifest

    @property
    def onnx_path(self) -> Path:
        return self.root / self.manifest.onnx_file

    @property
    def fingerprint(self) -> str:
        """sha256 of the manifest, which holds every file's sha256, the thresholds and the labels:
        any change to what the bundle computes changes it."""
        m = self.manifest
        # `calibration` (added later) is left out while empty, so a bundle's fingerprint (and its cache keys)
        # stays what it was before the field existed.
        unset = {"calibration"} if m.calibration is None else set()
        return hashlib.sha256(m.model_dump_json(exclude=unset).encode()).hexdigest()

    @classmethod
    def load(cls, path: Path | str, verify: bool = True) -> "ModelBundle":
        root = Path(path).resolve()  # a symlinked bundle path resolves to the version it points at
        manifest_path = root / MANIFEST
        if not manifest_path.is_file():
            raise BundleError(
                f"No model bundle at {path}: {MANIFEST} is missing. Build one with "
                "`memeguard bundle` (it writes .cache/bundles/default) or `memeguard export RUN_DIR --out DIR`, "
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

    def golden_records(self) -> list[GoldenRecord]:
        """The golden set; empty when the bundle ships none. Its files are sha256-checked like the rest."""
        golden = self.manifest.golden
        if golden is None:
            return []
        try:
            doc = json.loads((self.root / golden.file).read_text())
            return [
                GoldenRecord(
                    id=str(r["id"]), image_path=self.root / r["image"], text=r["text"],
                    technique_probs=[float(p) for p in r["technique_probs"]],
                    harmful_prob=None if r.get("harmful_prob") is None else float(r["harmful_prob"]),
                )
                for r in doc["records"]
            ]
        except (OSError, KeyError, TypeError, ValueError) as e:
            raise BundleError(f"Model bundle {self.root}: golden set {golden.file} is unreadable: {e}") from e

    def verify(self) -> None:
        m = self.manifest
        if len(m.labels) != len(m.thresholds):
            raise BundleError(
                f"Model bundle {self.root}: {len(m.labels)} labels but {len(m.thresholds)} thresholds "
                f"in {MANIFEST}. Re-export the bundle."
            )
        listed = {f.path for f in self.manifest.files}
        if self.manifest.onnx_file not in listed:
            raise BundleError(
                f"Model bundle {self.root}: {self.manifest.onnx_file} is not listed with a sha256."
            )
        for f in self.manifest.files:
            p = self.root / f.path
            if not p.is_file():
                raise BundleError(
                    f"Model bundle {self.root} is incomplete: {f.path} is missing. Re-export it."
                )
            if p.stat().st_size != f.bytes or sha256_file(p) != f.sha256:
                raise BundleError(
                    f"Model bundle {self.root}: {f.path} does not match its sha256 in {MANIFEST} "
                    "(truncated or tampered). Re-export the bundle; refusing to load it."
                )
