"""The layering of docs/architecture.md, checked on the source: every import (module level or inside a
function) is parsed, and one that crosses a line drawn there fails here."""

import ast
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
}


@pytest.mark.parametrize("folder", sorted(RULES))
def test_a_layer_imports_only_what_docs_architecture_allows(folder: str) -> None:
    assert (REPO / folder).is_dir(), f"{folder}/ is gone: update docs/architecture.md and this test"
    forbidden, allowed = RULES[folder]
    assert crossings(folder, forbidden, allowed) == []


def test_the_checker_sees_imports_inside_functions_too(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("import torch\n\ndef f():\n    from models.train import train\n")
    assert {"torch", "models.train", "models.train.train"} <= imports_of(bad)
    assert under("consumer.core.runtime", ("consumer.core",)) and not under("consumer.corex", ("consumer.core",))
