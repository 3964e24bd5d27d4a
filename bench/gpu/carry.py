"""What the GPU bench needs on a machine with no network, carried through the device tool's 64 MiB per run.

The carry folder is `bench/gpu/wheels/` (git-ignored). On a machine with a registry:

    pip download --only-binary=:all: --no-deps --python-version 3.12 --platform manylinux_2_28_x86_64 \\
        onnxruntime-gpu==<version> -d /tmp/mg-ort       # small wheels the GPU lacks: -d bench/gpu/wheels/small
    python bench/gpu/carry.py split /tmp/mg-ort/onnxruntime_gpu-*.whl        # pieces of <= 28 MiB
    python bench/gpu/carry.py split .cache/bundles/default-fp16 --name default-fp16   # a bundle: tar, pieces
    python bench/gpu/carry.py memes --n 200                                  # a sample of real JPEG memes
    python bench/gpu/carry.py plan                                           # which pieces go in which run

Each device run names a few pieces in `carry` (at most 64 MiB per run, the working tree included) and runs
`bash bench/gpu/run.sh --stash-only`: the pieces are copied into the stash (`$MEMEGUARD_GPU_STASH`, default
`~/.cache/memeguard-gpu`), which lives as long as the machine stays warm. The last run (`bash bench/gpu/run.sh`)
joins every complete set of pieces (sha256 checked against the whole file's), installs the wheels into
`<stash>/site` (`pip --no-index --no-deps --target`, ahead of the system's packages on PYTHONPATH), unpacks
the bundles into `<stash>/bundles/<name>` and measures.
"""

import argparse
import hashlib
import json
import shutil
import sys
import tarfile
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
CARRY = REPO / "bench" / "gpu" / "wheels"
PIECES = "pieces"
MIB = 1 << 20


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(MIB), b""):
            digest.update(block)
    return digest.hexdigest()


def split(source: Path, name: str | None, size_mib: int, carry: Path) -> list[Path]:
    """`source` (a file, or a folder tarred first) as `<carry>/pieces/<name>.part-NN` + `<name>.json`."""
    out = carry / PIECES
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        if source.is_dir():
            name = f"bundle-{name or source.name}.tar"
            whole = Path(tmp) / name
            with tarfile.open(whole, "w") as tar:
                tar.add(source.resolve(), arcname=name[len("bundle-"):-len(".tar")])
        else:
            name, whole = name or source.name, source
        for old in out.glob(f"{name}.part-*"):
            old.unlink()
        parts = []
        with whole.open("rb") as f:
            for n, block in enumerate(iter(lambda: f.read(size_mib * MIB), b"")):
                part = out / f"{name}.part-{n:02d}"
                part.write_bytes(block)
                parts.append(part)
        (out / f"{name}.json").write_text(json.dumps({"name": name, "bytes": whole.stat().st_size,
                                                      "sha256": sha256(whole), "parts": len(parts)}) + "\n")
    return parts


def plan(carry: Path, budget_mib: int) -> list[list[Path]]:
    """Pieces grouped into device runs of at most `budget_mib` each (the working tree's share left out)."""
    runs: list[list[Path]] = [[]]
    used = 0
    for part in sorted((carry / PIECES).glob("*.part-*")) if (carry / PIECES).is_dir() else []:
        size = part.stat().st_size + (carry / PIECES / f"{part.name.rsplit('.part-', 1)[0]}.json").stat().st_size
        if runs[-1] and used + size > budget_mib * MIB:
            runs.append([])
            used = 0
        runs[-1].append(part)
        used += size
    return [r for r in runs if r]


def stash(carry: Path, store: Path) -> dict:
    """Copy what this run carried into the stash, then join, install-ready and unpack what is complete."""
    report: dict = {"stash": str(store), "complete": [], "incomplete": {}}
    for sub in ("pieces", "wheels", "memes", "bundles"):
        (store / sub).mkdir(parents=True, exist_ok=True)
    if carry.is_dir():
        for path in carry.rglob("*"):
            if not path.is_file():
                continue
            rel = path.relative_to(carry)
            if rel.parts[0] == PIECES:
                target = store / "pieces" / rel.name
            elif rel.parts[0] == "memes":
                target = store / "memes" / rel.name
            elif path.suffix == ".whl":
                target = store / "wheels" / rel.name
            else:
                continue
            if not target.exists() or target.stat().st_size != path.stat().st_size:
                shutil.copyfile(path, target)
    for meta_path in sorted((store / "pieces").glob("*.json")):
        meta = json.loads(meta_path.read_text())
        name = meta["name"]
        have = [store / "pieces" / f"{name}.part-{n:02d}" for n in range(meta["parts"])]
        missing = [p.name for p in have if not p.exists()]
        if missing:
            report["incomplete"][name] = f"{len(missing)} of {meta['parts']} pieces still to carry"
            continue
        final = store / ("bundles" if name.startswith("bundle-") else "wheels") / name
        if not (final.exists() and final.stat().st_size == meta["bytes"]):
            with final.open("wb") as out:
                for part in have:
                    out.write(part.read_bytes())
        if sha256(final) != meta["sha256"]:
            final.unlink()
            report["incomplete"][name] = "joined file does not match its sha256: carry the pieces again"
            continue
        if name.startswith("bundle-"):
            folder = store / "bundles" / name[len("bundle-"):-len(".tar")]
            if not (folder / "manifest.json").is_file():
                with tarfile.open(final) as tar:
                    tar.extractall(store / "bundles", filter="data")
        report["complete"].append(name)
    report["wheels"] = sorted(p.name for p in (store / "wheels").glob("*.whl"))
    report["bundles"] = sorted(p.parent.name for p in (store / "bundles").glob("*/manifest.json"))
    report["memes"] = len(list((store / "memes").glob("*")))
    return report


def memes(n: int, carry: Path) -> int:
    """Copy `n` of the shipped SemEval memes that are JPEG by content into `<carry>/memes` (~70 KB each)."""
    source = REPO.parent / "shared" / "data" / "semeval2021_task6" / "images"
    out = carry / "memes"
    out.mkdir(parents=True, exist_ok=True)
    picked = [p for p in sorted(source.iterdir()) if p.read_bytes()[:3] == b"\xff\xd8\xff"][:n]
    for p in picked:
        shutil.copyfile(p, out / p.name)
    return sum(p.stat().st_size for p in picked)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--carry", type=Path, default=CARRY)
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("split")
    s.add_argument("source", type=Path)
    s.add_argument("--name")
    s.add_argument("--size-mib", type=int, default=28, help="two pieces and the working tree fit one run")
    pl = sub.add_parser("plan")
    pl.add_argument("--budget-mib", type=int, default=57, help="per run: 64 MiB less the working tree (~3 MiB)")
    st = sub.add_parser("stash")
    st.add_argument("store", type=Path)
    m = sub.add_parser("memes")
    m.add_argument("--n", type=int, default=200)
    args = p.parse_args(argv)
    if args.cmd == "split":
        parts = split(args.source, args.name, args.size_mib, args.carry)
        print("\n".join(str(x.relative_to(REPO) if x.is_relative_to(REPO) else x) for x in parts))
    elif args.cmd == "plan":
        def rel(x: Path) -> str:  # the device tool's `carry` takes paths relative to the repository root
            return str(x.resolve().relative_to(REPO)) if x.resolve().is_relative_to(REPO) else str(x)

        for n, group in enumerate(plan(args.carry, args.budget_mib), 1):
            names = [rel(x) for x in group]
            metas = sorted({rel(x.parent / f"{x.name.rsplit('.part-', 1)[0]}.json") for x in group})
            print(f"run {n}: carry={json.dumps(names + metas)}  command: bash bench/gpu/run.sh --stash-only")
    elif args.cmd == "stash":
        print(json.dumps(stash(args.carry, args.store), indent=2))
    else:
        print(f"{memes(args.n, args.carry) / MIB:.1f} MiB of memes in {args.carry / 'memes'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
