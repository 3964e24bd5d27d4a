"""Export one training run to a model bundle, with the parity check: `exporters.cli export` and `build-default`."""

import importlib
from pathlib import Path

from exporters.bundle_writer import export_bundle
from exporters.contract import Loader
from exporters.errors import ExportError
from exporters.memes import DEFAULT_DATA, DEFAULT_LOADER, load_memes

GOLDEN_COUNT = 8


def resolve_loader(spec: str) -> Loader:
    module, _, attr = spec.partition(":")
    try:
        return getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as e:
        raise ExportError(f"Cannot import the model loader {spec!r} ({e}); is the training environment "
                          "installed (`pip install -e .[train]`)?") from e


def export_run(
    run_dir: Path, out: Path, precision: str = "fp32", loader: str = DEFAULT_LOADER,
    parity_data: Path | None = DEFAULT_DATA / "dev.json", parity_images: Path | None = None,
    parity_limit: int | None = None, version: str = "0.1.0", progress: bool = True,
) -> Path:
    if not run_dir.is_dir():
        raise ExportError(f"Run directory {run_dir} does not exist; train one with "
                          "`python -m models.cli train configs/default.yaml --out runs`.")
    model = resolve_loader(loader)(str(run_dir))
    memes = load_memes(parity_data, parity_images, parity_limit) if parity_data is not None else []
    split = f"{parity_data.parent.name}/{parity_data.name} ({len(memes)} memes)" if parity_data else "none"
    manifest = export_bundle(
        model, run_dir, out, precision=precision,  # type: ignore[arg-type]
        parity_memes=memes or None, golden_memes=memes[:GOLDEN_COUNT] or None, version=version,
        parity_split=split, show_progress=progress,
    )
    if manifest.parity is not None:
        p = manifest.parity
        f1 = "" if p.micro_f1_change is None else (
            f", micro-F1 {p.micro_f1_onnx:.4f} ({p.micro_f1_change:+.4f} vs PyTorch)"
        )
        print(f"parity {precision} on {p.split}: max |diff| {p.max_abs_diff:.2e}, "
              f"flag agreement {p.flag_agreement:.4f}{f1}")
    print(f"bundle: {out.resolve()}")
    return out
