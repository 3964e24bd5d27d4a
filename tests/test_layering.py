"""The layering of docs/architecture.md, checked on the source: every import (module level or inside a
function or a validator) is read, and one that crosses a line drawn there fails here.

Two checks: import-linter's contracts (pyproject.toml, [tool.importlinter]: no import circle in consumer/,
consumer/ above schemas/ and scoring/, no torch or models/ in consumer/, scoring/ alone, settings below the
programs), and the hand-written per-folder rules below for the finer lines of the table."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CONSUMER_PARTS = ("core", "kafka", "ops", "enrich", "worker", "alert", "review", "evaluate", "replay", "learning",
                  "demo", "devinfra", "cli", "settings", "display")


def imports_of(path: Path) -> set[str]:
    """Every module a file imports: `from a.b import c` gives a.b and a.b.c (c may be a module)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{a.name}" for a in node.names)
    return names


def under(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def crossings(folder: str, forbidden: tuple[str, ...], allowed: tuple[str, ...] = ()) -> list[str]:
    return [f"{path.relative_to(REPO)} imports {name}"
            for path in sorted((REPO / folder).rglob("*.py"))
            for name in sorted(imports_of(path))
            if under(name, forbidden) and not under(name, allowed)]


def consumer_parts_except(*kept: str) -> tuple[str, ...]:
    return tuple(f"consumer.{p}" for p in CONSUMER_PARTS if p not in kept)


OURS = ("schemas", "scoring", "consumer", "models", "exporters", "testkit", "tests", "bench")
RULES: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {  # folder: (forbidden, allowed despite that)
    "schemas": (OURS + ("torch",), ("schemas",)),
    "scoring": (OURS + ("torch",), ("scoring",)),
    "consumer": (("models", "exporters", "testkit", "tests", "bench", "torch", "torchvision"), ()),
    "consumer/core": (consumer_parts_except("core"), ()),  # the worker core: the error root and schemas only
    "consumer/enrich": (consumer_parts_except("enrich"), ()),
    "consumer/kafka": (consumer_parts_except("kafka", "settings"), ()),
    "models": (("consumer", "exporters", "testkit", "tests", "bench"), ("consumer.errors", "consumer.core.hashing")),
    "exporters": (consumer_parts_except("core", "evaluate") + ("testkit", "tests", "bench"), ()),
    "testkit": (("models", "exporters", "tests", "bench"), ()),
    "bench": (("tests",), ()),
    "research": (("exporters", "testkit", "tests", "bench"), ()),  # studies: read models/, schemas/, scoring/, consumer/
}


@pytest.mark.parametrize("folder", sorted(RULES))
def test_a_layer_imports_only_what_docs_architecture_allows(folder: str) -> None:
    assert (REPO / folder).is_dir(), f"{folder}/ is gone: update docs/architecture.md and this test"
    forbidden, allowed = RULES[folder]
    assert crossings(folder, forbidden, allowed) == []


@pytest.mark.parametrize("folder", ["schemas", "scoring", "consumer", "models", "exporters", "testkit", "bench"])
def test_no_library_program_or_bench_imports_research(folder: str) -> None:
    """research/ sits on top: the sweeps and nested-CV studies read the library, nothing reads them."""
    assert crossings(folder, ("research",)) == []


def test_the_checker_sees_imports_inside_functions_too(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("import torch\n\ndef f():\n    from models.train import train\n")
    assert {"torch", "models.train", "models.train.train"} <= imports_of(bad)
    assert under("consumer.core.runtime", ("consumer.core",)) and not under("consumer.corex", ("consumer.core",))


LINT_IMPORTS = str(Path(sys.executable).with_name("lint-imports"))


def lint_imports(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([LINT_IMPORTS, "--no-cache", *args], cwd=cwd, capture_output=True, text=True, timeout=120,
                          env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(cwd)})


def test_the_import_contracts_hold() -> None:
    result = lint_imports(REPO)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]


def test_the_contracts_see_imports_inside_functions_and_validators(tmp_path: Path) -> None:
    """An import inside a validator counts: the circle it closes breaks the acyclic contract."""
    pkg = tmp_path / "pkg"
    (pkg / "programs").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "programs" / "__init__.py").write_text("")
    (pkg / "programs" / "auth.py").write_text("from pkg.settings import Settings\n")
    (pkg / "settings.py").write_text(
        "class Settings:\n"
        "    def _validate(self):\n"
        "        from pkg.programs.auth import load_users\n")
    (tmp_path / ".importlinter").write_text(
        "[importlinter]\nroot_package = pkg\n\n"
        "[importlinter:contract:acyclic]\nname = acyclic\ntype = acyclic_siblings\nancestors = pkg\n")
    result = lint_imports(tmp_path)
    assert result.returncode == 1 and ".settings -> .programs" in result.stdout, result.stdout + result.stderr
