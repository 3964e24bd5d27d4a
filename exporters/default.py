"""`build-default`: the demo's "build the default bundle if absent" (train if needed, then export).

The default precision stays fp32. int8 would be the default if it changed technique micro-F1 and harm AUROC by
at most 0.005; with the weight-decay-0.1 head it changed dev micro-F1 by -0.008 (harm AUROC on HarMeme val by
under 0.002), so it is one flag away (`--precision int8`, docs/models.md) rather than the default.
"""

import subprocess
import sys
from pathlib import Path

from consumer.core.bundle import ModelBundle
from consumer.errors import BundleError
from exporters.errors import ExportError
from exporters.run import export_run

RUN_FILES = ("tokenizer/tokenizer.json", "metrics.json", "thresholds.json", "checkpoint.pt")


def run_dir_for(config: Path, runs: Path) -> Path:
    """`models.cli train CONFIG --out RUNS` writes its run to RUNS/<the config's `name`>/."""
    from models.config import load_config

    return runs / load_config(config).name


def run_is_complete(run: Path) -> bool:
    return all((run / name).is_file() for name in RUN_FILES)


def run_matches_config(run: Path, config: Path) -> bool:
    """A finished run of an older version of the config (e.g. the MiniLM default before MPNet) is not reused."""
    from models.config import load_config
    from models.errors import ConfigError

    try:
        return load_config(run / "config.yaml").to_dict() == load_config(config).to_dict()
    except ConfigError:
        return False


def _stale_reason(bundle: ModelBundle, config: Path, runs: Path, precision: str) -> str | None:
    """Why an existing bundle is not the one `config` and `precision` would build now (None: it is)."""
    import json

    if bundle.manifest.precision != precision:
        return f"it is {bundle.manifest.precision}, the default is {precision}"
    run = run_dir_for(config, runs)
    if not (run_is_complete(run) and run_matches_config(run, config)):
        return f"{config} changed since it was trained"
    run_id = json.loads((run / "run.json").read_text()).get("run_id") if (run / "run.json").is_file() else None
    if run_id != bundle.manifest.training_run_id:
        return f"it was exported from another run than {run}"
    return None


def build_default(out: Path, config: Path, runs: Path, force: bool = False, precision: str = "fp32") -> Path:
    """Idempotent: an existing, verified bundle of the current config, run and precision at `out` is kept; an
    existing finished run is reused."""
    if not force and (out / "manifest.json").is_file():
        try:
            bundle = ModelBundle.load(out)
            stale = _stale_reason(bundle, config, runs, precision)
            if stale is None:
                print(f"bundle already built: {bundle.root} ({bundle.manifest.name} {bundle.manifest.version}); "
                      "pass --force to rebuild")
                return out
            print(f"existing bundle at {out} is out of date ({stale}); rebuilding it", file=sys.stderr)
        except BundleError as e:
            print(f"existing bundle at {out} is unusable ({e}); rebuilding it", file=sys.stderr)
    if not config.is_file():
        raise ExportError(f"Config {config} not found; run from the repository root or pass --config.")
    run = run_dir_for(config, runs)
    stale = run_is_complete(run) and not run_matches_config(run, config)
    if stale or not run_is_complete(run):
        cmd = [sys.executable, "-m", "models.cli", "train", str(config), "--out", str(runs)]
        why = f"{run} was trained from another version of {config}" if stale else f"no finished run at {run}"
        print(f"[build-default] {why}: training ({' '.join(cmd)})", file=sys.stderr)
        if subprocess.run(cmd, check=False).returncode != 0:
            raise ExportError(f"Training the default model failed (`{' '.join(cmd)}`); see the output above.")
        if not run_is_complete(run):
            raise ExportError(f"Training finished but {run} lacks one of {', '.join(RUN_FILES)}.")
    else:
        print(f"[build-default] reusing the finished run {run}", file=sys.stderr)
    return export_run(run, out, precision=precision)
