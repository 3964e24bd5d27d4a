"""The docs run as written (issue 29 item 9): every command block of README.md and docs/*.md is checked, and the
fast, meaningful ones are run against the session's embedded broker and Redis.

The convention (for every doc writer):
- a fenced block whose info string is `bash` or `sh` is runnable;
- a runnable block that cannot run in CI (Helm against a cluster, a GPU, Docker, a long benchmark, a prompt) is
  preceded by the line `<!-- docs-test: skip (reason) -->`;
- blocks with no language, `json`, `text`, `yaml`, `python`, … are not commands.

Every command of a runnable block is *checked* without running (cheap): a `memeguard …` line parses against the
real argparse parser (the serving CLI's, `memeguard evaluate`'s, and the training commands' in models/ and
exporters/), a `make T` names a Makefile target, a `python -m M` / `python F.py` / `bash F.sh` names a module or
file of the repo, a `MEMEGUARD_*` variable is one the code reads, an alert rules file validates, and every relative
path a command reads exists: tracked in git (what a fresh clone has, not what lies in this checkout), in
../shared, a documented built artefact (ARTEFACTS: the default bundle, the default run), or written by an earlier
command of the same block. Unknown programs fail: add them to EXTERNAL, or mark the block skipped.

Commands in RUN_FOR_REAL are also *run*, in-process through `consumer.cli.main`, against the session's `stack`
(broker + redis) with the tiny test bundle in place of `.cache/bundles/default` (the default bundle is not built
in CI) and every output folder moved under the test's tmp_path. `memeguard dev up` is the `stack` fixture itself.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import io
import json
import re
import shlex
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
THIS = "tests/test_docs_run.py"  # spells out made-up names on purpose
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]

RUNNABLE = {"bash", "sh"}
NOT_COMMANDS = {"", "json", "text", "yaml", "yml", "python", "py", "toml", "ini", "acl", "html", "jinja", "diff"}
SKIP = re.compile(r"^<!--\s*docs-test:\s*skip\s*\((?P<reason>[^)]*\S[^)]*)\)\s*-->\s*$")
SKIP_LIKE = re.compile(r"docs-test", re.I)

# Programs that are not the project's: only the repo paths they name are checked.
EXTERNAL = {"cat", "cp", "mkdir", "ls", "jq", "curl", "echo", "export", "cd", "rm", "helm", "kubectl", "docker",
            "pip", "uv", "git", "head", "tail", "wc", "grep"}
# Flags whose value is written, not read: not checked for existence, and known to exist afterwards in the block.
OUTPUT_FLAGS = {"--out", "-o", "--report", "-d", "--dir", "--output"}
# Paths that exist once built, not in a fresh clone, and where the docs say they come from.
ARTEFACTS = {
    ".cache/bundles/default": "make bundle (memeguard bundle --out .cache/bundles/default); make demo builds it too",
    "runs/memeguard-default": "memeguard train configs/default.yaml (or make bundle)",
    ".cache/bundles/default-fp16": "memeguard export runs/memeguard-default --precision fp16 (docs/benchmarks.md)",
}


# ---------------------------------------------------------------------------------------------------------------
# Blocks and commands


@dataclass
class Block:
    doc: Path
    line: int  # 1-based line of the opening fence
    info: str
    body: list[str]
    skip: str | None = None  # the reason, when marked skipped
    marker_error: str | None = None

    @property
    def where(self) -> str:
        return f"{self.doc.relative_to(REPO)}:{self.line}"


def read_blocks(doc: Path) -> list[Block]:
    lines = doc.read_text(encoding="utf-8").splitlines()
    out, i = [], 0
    while i < len(lines):
        m = re.match(r"^\s*(`{3,}|~{3,})\s*([^\s`]*)", lines[i])
        if not m:
            i += 1
            continue
        fence, info = m.group(1), m.group(2).lower()
        j = i + 1
        while j < len(lines) and not lines[j].strip().startswith(fence):
            j += 1
        block = Block(doc, i + 1, info, lines[i + 1:j])
        k = i - 1
        while k >= 0 and not lines[k].strip():
            k -= 1
        if k >= 0 and SKIP_LIKE.search(lines[k]):
            if sk := SKIP.match(lines[k].strip()):
                block.skip = sk.group("reason").strip()
            else:
                block.marker_error = f"malformed marker {lines[k].strip()!r}: write <!-- docs-test: skip (reason) -->"
        out.append(block)
        i = j + 1
    return out


def all_blocks() -> list[Block]:
    return [b for doc in DOCS for b in read_blocks(doc)]


def runnable_blocks() -> list[Block]:
    return [b for b in all_blocks() if b.info in RUNNABLE]


@dataclass
class Command:
    words: list[str]  # program and arguments, env assignments removed, braces expanded
    env: dict[str, str]
    text: str  # the command as written (without its comment)
    stdin: str | None = None  # `< FILE`
    stdout: str | None = None  # `> FILE`


def _expand_braces(word: str) -> list[str]:
    m = re.search(r"\{([^{}]*,[^{}]*)\}", word)
    if not m or word.startswith("'") or ":" in m.group(1):
        return [word]
    return [x for alt in m.group(1).split(",") for x in _expand_braces(word[:m.start()] + alt + word[m.end():])]


def split_commands(body: list[str]) -> Iterator[Command]:
    """Shell lines into simple commands: continuations joined, comments dropped, split on ; && || |."""
    text = "\n".join(body).replace("\\\n", " ")
    for line in text.splitlines():
        lex = shlex.shlex(line, posix=True, punctuation_chars=";&|<>")
        lex.whitespace_split = True
        lex.commenters = "#"
        try:
            tokens = list(lex)
        except ValueError as e:
            raise AssertionError(f"cannot split {line!r} as a shell line: {e}") from e
        current: list[str] = []
        for tok in [*tokens, ";"]:
            if tok in (";", "&&", "||", "|", "&"):
                if current:
                    yield _command(current, line)
                current = []
            else:
                current.append(tok)


def _command(tokens: list[str], line: str) -> Command:
    env: dict[str, str] = {}
    words: list[str] = []
    stdin = stdout = None
    it = iter(tokens)
    for tok in it:
        if tok in (">", ">>"):
            stdout = next(it, None)
        elif tok == "<":
            stdin = next(it, None)
        elif not words and re.match(r"^[A-Za-z_][A-Za-z0-9_]*=", tok):
            name, _, value = tok.partition("=")
            env[name] = value
        else:
            words.extend(_expand_braces(tok))
    return Command(words, env, line.split(" #")[0].strip(), stdin, stdout)


# ---------------------------------------------------------------------------------------------------------------
# Checks that do not run anything


def _memeguard_parser() -> argparse.ArgumentParser:
    from consumer.cli import build_parser

    return build_parser()


def _exporters_parser() -> argparse.ArgumentParser:
    """exporters/cli.py imports its torch-heavy modules only when a command runs: its parser is cheap."""
    from exporters.cli import build_parser

    return build_parser()


def _models_parser() -> argparse.ArgumentParser:
    from models.cli import _parser  # argparse only; torch is imported by the commands themselves

    return _parser()


def _evaluate_parser() -> argparse.ArgumentParser:
    from consumer.evaluate.run import build_parser

    return build_parser()


def _parse(parser: argparse.ArgumentParser, argv: list[str]) -> argparse.Namespace:
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            return parser.parse_args(argv)
    except SystemExit:
        raise AssertionError(err.getvalue().strip().splitlines()[-1] if err.getvalue().strip() else "exit") from None


def parse_memeguard(argv: list[str]) -> argparse.Namespace:
    """`memeguard ARGV` parsed as consumer.cli.main would dispatch it, without running it."""
    from consumer.cli import GLOBAL_FLAGS, TRAINING_COMMANDS

    argv = [a for a in argv if a not in GLOBAL_FLAGS]
    if not argv:
        raise AssertionError("no subcommand")
    if argv[0] in TRAINING_COMMANDS:
        module, command = TRAINING_COMMANDS[argv[0]]
        parser = _models_parser() if module == "models.cli" else _exporters_parser()
        return _parse(parser, [command, *argv[1:]])
    if argv[0] == "evaluate":
        return _parse(_evaluate_parser(), argv[1:])
    return _parse(_memeguard_parser(), argv)


# `python -m M …` lines whose arguments are parsed too (the modules `memeguard` forwards to).
PYTHON_PARSERS: dict[str, Callable[[], argparse.ArgumentParser]] = {
    "models.cli": _models_parser, "exporters.cli": _exporters_parser, "consumer.evaluate.run": _evaluate_parser,
    "consumer.cli": _memeguard_parser}


def makefile_targets() -> set[str]:
    return set(re.findall(r"^([A-Za-z0-9_.-]+):", (REPO / "Makefile").read_text(), re.M))


def known_env_names() -> set[str]:
    """MEMEGUARD_* names the code reads: every settings field, and any name a tracked non-doc file spells out."""
    from tests.test_readme_settings import settings_names

    names = {f"MEMEGUARD_{n}" for n in settings_names()}
    for f in tracked_paths():
        if f.endswith((".py", ".sh", ".yaml", ".yml", ".tpl", "Dockerfile", "Makefile")) and f != THIS:
            with contextlib.suppress(OSError, UnicodeDecodeError):
                names |= set(re.findall(r"MEMEGUARD_[A-Z0-9_]+", (REPO / f).read_text(encoding="utf-8")))
    return names


@functools.cache
def tracked_paths() -> frozenset[str]:
    files = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout.split()
    return frozenset(files) | {str(Path(f).parents[i]) for f in files for i in range(len(Path(f).parents) - 1)}


def _module_file(module: str) -> Path | None:
    base = REPO.joinpath(*module.split("."))
    for candidate in (base.with_suffix(".py"), base / "__main__.py"):
        if str(candidate.relative_to(REPO)) in tracked_paths():
            return candidate
    return None


def _looks_like_path(word: str) -> bool:
    return ("/" in word and "://" not in word and not word.startswith(("-", "~", "$", "/"))
            and not any(c in word for c in "…*$<>={}") and not re.match(r"^[\w.-]+:[\w.-]", word))


@dataclass
class Checked:
    """What checking one block found: problems, and which commands it checked."""

    problems: list[str] = field(default_factory=list)
    commands: list[Command] = field(default_factory=list)


def check_block(body: list[str], env_names: set[str] | None = None) -> Checked:
    env_names = known_env_names() if env_names is None else env_names
    out = Checked()
    produced: set[str] = set()
    variables: set[str] = set()
    targets = makefile_targets()

    def exists(path: str) -> bool:
        """In a fresh clone (tracked files and their folders, not what happens to lie in this checkout), in
        ../shared, a documented artefact, or written above."""
        p = path.rstrip("/")
        if p.startswith("../"):
            return (REPO / p).exists()
        return p in tracked_paths() or p in ARTEFACTS or any(p == q or p.startswith(q + "/") for q in produced)

    for cmd in split_commands(body):
        out.commands.append(cmd)
        say = out.problems.append
        for name in cmd.env:
            if name.startswith("MEMEGUARD_") and name not in env_names:
                say(f"{cmd.text}: {name} is not a setting any memeguard code reads")
        if not cmd.words:  # `NAME=value` alone: a shell variable for the lines below
            variables |= set(cmd.env)
            continue
        prog, args = cmd.words[0], cmd.words[1:]
        outputs = {args[i + 1] for i, a in enumerate(args[:-1]) if a in OUTPUT_FLAGS}
        outputs |= {a.split("=", 1)[1] for a in args if a.split("=", 1)[0] in OUTPUT_FLAGS and "=" in a}
        reads = [a for a in args if a not in outputs]
        if cmd.stdin:
            reads.append(cmd.stdin)
        if prog == "memeguard":
            try:
                ns = parse_memeguard(args)
            except AssertionError as e:
                say(f"{cmd.text}: does not parse: {e}")
                ns = None
            if ns is not None and getattr(ns, "command", None) == "schemas":
                outputs.add(ns.dir)
            if ns is not None and getattr(ns, "command", None) == "alert" and ns.rules and (REPO / ns.rules).is_file():
                from consumer.alert.rules import AlertConfig
                from consumer.errors import MemeguardError

                try:  # the rules file a doc hands to the alerter validates as the alerter validates it
                    AlertConfig.from_file(REPO / ns.rules)
                except (MemeguardError, ValueError) as e:
                    say(f"{cmd.text}: {ns.rules} is not a valid rules file: {e}")
        elif prog in ("python", "python3") or prog.endswith("/python"):
            if args[:1] == ["-m"] and len(args) > 1:
                module = args[1]
                if module == "pytest":
                    tests = [a for a in args[2:] if a.endswith(".py") or "::" in a]
                    k = args[args.index("-k") + 1] if "-k" in args[:-1] else None
                    for t in tests:
                        f = REPO / t.split("::")[0]
                        if str(f.relative_to(REPO)) not in tracked_paths():
                            say(f"{cmd.text}: no test file {t}")
                        elif k and not all(w in f.read_text() for w in re.findall(r"\w+", k) if w not in ("and",
                                                                                                        "or", "not")):
                            say(f"{cmd.text}: -k {k!r} selects no test of {t}")
                elif _module_file(module) is None:
                    say(f"{cmd.text}: no module {module} in the repo")
                elif module in PYTHON_PARSERS:
                    try:
                        _parse(PYTHON_PARSERS[module](), args[2:])
                    except AssertionError as e:
                        say(f"{cmd.text}: does not parse: {e}")
                reads = [a for a in reads[2:]]
            elif args:
                if args[0] not in tracked_paths():
                    say(f"{cmd.text}: no script {args[0]}")
                reads = reads[1:]
        elif prog == "make":
            for t in (a for a in args if not a.startswith("-") and "=" not in a):
                if t not in targets:
                    say(f"{cmd.text}: the Makefile has no target {t!r} (targets: {', '.join(sorted(targets))})")
            reads = []
        elif prog == "bash" or prog == "sh":
            if args and args[0] not in tracked_paths():
                say(f"{cmd.text}: no script {args[0]}")
        elif prog.startswith("$") and prog.strip("${}") in variables:
            pass
        elif prog.startswith("./") or prog.startswith(".venv/"):
            if not (REPO / prog).exists() and not prog.startswith(".venv/"):
                say(f"{cmd.text}: no program {prog}")
        elif prog not in EXTERNAL:
            say(f"{cmd.text}: unknown program {prog!r}: a project command (memeguard, make, python -m …), a tool "
                "listed in tests/test_docs_run.py EXTERNAL, or a block marked <!-- docs-test: skip (reason) -->")
        for word in reads:
            value = word.split("=", 1)[1] if word.startswith("--") and "=" in word else word
            if _looks_like_path(value) and not exists(value):
                say(f"{cmd.text}: {value} does not exist (not in the repo, ../shared, ARTEFACTS, nor written above)")
        produced |= {o.rstrip("/") for o in outputs if o}
        if cmd.stdout:
            produced.add(cmd.stdout)
    return out


# ---------------------------------------------------------------------------------------------------------------
# The tests: convention, then the checks, then the commands that run


def test_every_command_block_follows_the_convention():
    problems = []
    for b in all_blocks():
        if b.marker_error:
            problems.append(f"{b.where}: {b.marker_error}")
        if b.info in ("shell", "console", "zsh", "bash-session", "shell-session"):
            problems.append(f"{b.where}: ```{b.info}: write ```bash (runnable) or mark it skipped")
        elif b.info not in RUNNABLE and b.skip is not None:
            problems.append(f"{b.where}: a skip marker on a ```{b.info or '(none)'} block, which is not a command")
    assert problems == []
    assert len(runnable_blocks()) >= 10, "the docs lost their command blocks, or the reader does"


@pytest.mark.parametrize("block", [b for b in runnable_blocks() if b.skip is None], ids=lambda b: b.where)
def test_every_command_in_a_runnable_block_parses_and_names_what_exists(block: Block, env_names: set[str]):
    checked = check_block(block.body, env_names)
    assert checked.commands, "an empty runnable block"
    assert checked.problems == []


@pytest.fixture(scope="module")
def env_names() -> set[str]:
    return known_env_names()


# The checker fails for the mistakes the issue found (a path that does not exist, a command that does not exist),
# and for renamed flags and targets; it accepts what exists.
@pytest.mark.parametrize("line, problem", [
    ("memeguard calibrate --bundle bundles/current --data configs --target-review-rate 0.1 --out x",
     "bundles/current does not exist"),
    ("memeguard learn", "does not parse: memeguard: error: argument command: invalid choice: 'learn'"),
    ("memeguard replay --topic t --output runs/replay", "does not parse"),
    ("memeguard bundle --out .cache/b --precison int8", "does not parse"),
    ("memeguard train configs/nope.yaml", "configs/nope.yaml does not exist"),
    ("make bundel", "the Makefile has no target 'bundel'"),
    ("python -m models.nope", "no module models.nope"),
    ("python -m exporters.cli build-default --output .cache/bundles/default", "does not parse"),
    ("MEMEGUARD_NO_SUCH=1 memeguard worker", "MEMEGUARD_NO_SUCH is not a setting"),
    ("frobnicate --x", "unknown program 'frobnicate'"),
    (".venv/bin/python -m pytest tests/test_replay_html.py -k no_such_test", "selects no test"),
])
def test_the_checker_finds_what_a_reader_would_trip_over(line: str, problem: str, env_names: set[str]):
    problems = check_block([line], env_names).problems
    assert len(problems) == 1 and problem in problems[0], problems


def test_the_checker_validates_the_alert_rules_file_a_doc_names(tmp_path: Path, env_names: set[str]):
    bad = tmp_path / "rules.yaml"
    bad.write_text("rules:\n  - name: x\n    when: {no_such_condition: 1}\n")
    problems = check_block([f"memeguard alert --rules {bad}"], env_names).problems
    assert len(problems) == 1 and "is not a valid rules file" in problems[0], problems
    assert check_block(["memeguard alert --rules ops/alert-rules.example.yaml"], env_names).problems == []


def test_the_checker_accepts_paths_written_earlier_in_the_block_and_the_default_bundle(env_names: set[str]):
    body = ["memeguard calibrate --bundle .cache/bundles/default --data ../shared/data/harmeme/harm_c_val.jsonl \\",
            "    --target-review-rate 0.1 --out bundles/cal   # a comment --no-such-flag",
            "memeguard shadow --bundle bundles/cal --sample 0.1",
            "memeguard evaluate --bundle bundles/cal/ --data ../shared/data/semeval2021_task6/dev.json --out o",
            "cat ../shared/data/semeval2021_task6/{train,dev}.json > /tmp/x.json"]
    assert check_block(body, env_names).problems == []
    assert check_block(["memeguard bundle --out .cache/bundles/x --precision int8"], env_names).problems == []
    assert check_block(["memeguard evaluate-run runs/memeguard-default --data dev"], env_names).problems == []
    assert check_block(["cat ../shared/data/semeval2021_task6/{train,nope}.json"], env_names).problems == [
        "cat ../shared/data/semeval2021_task6/{train,nope}.json: ../shared/data/semeval2021_task6/nope.json does not "
        "exist (not in the repo, ../shared, ARTEFACTS, nor written above)"]


# ---------------------------------------------------------------------------------------------------------------
# Commands that run for real, against the session's stack, with the tiny bundle


@dataclass
class Run:
    """How a documented command runs in the test, and what it must then show."""

    pattern: str  # regex on the command as written (comment dropped)
    check: Callable[[str, Path], None]  # (stdout, tmp output root)
    stdin: str | None = None


def _check_produce(out: str, tmp: Path) -> None:
    assert re.search(r"^63 events acknowledged by ", out, re.M), out


def _check_replay(out: str, tmp: Path) -> None:
    report = json.loads((tmp / "runs" / "replay" / "report.json").read_text())
    assert report["n_verdicts"] >= 63 and report["n_dead_letters"] == 0 and report["micro_f1"] is not None
    page = (tmp / "runs" / "replay" / "report.html").read_text()
    # The tiny bundle records no training pool: its figure is labelled "may be in-sample" (issue 29 item 9).
    assert report["micro_f1_context"]["sample"] == "unknown"
    assert "<h2>Technique micro-F1 in context</h2>" in page and "may be in-sample" in page


def _check_hash(out: str, tmp: Path) -> None:
    from consumer.review.auth import verify_password

    (user, hashed), = json.loads(out.strip().splitlines()[-1]).items()
    assert user == "alice" and hashed.startswith("scrypt$") and verify_password("correct horse", hashed)


def _check_evaluate(out: str, tmp: Path) -> None:
    report = json.loads((tmp / "out" / "eval-dev" / "report.json").read_text())
    assert report["n_evaluated"] == 63 and 0.0 <= report["micro_f1"] <= 1.0
    assert "micro-F1" in out


RUN_FOR_REAL = [
    Run(r"^memeguard produce --labels --topic memes\.labelled$", _check_produce),
    Run(r"^memeguard replay --topic memes\.labelled --out runs/replay$", _check_replay),
    Run(r"^memeguard hash-password alice$", _check_hash, stdin="correct horse\n"),
    Run(r"^memeguard evaluate --bundle \.cache/bundles/default --data \S+/dev\.json --images \S+ --out out/eval-dev$",
        _check_evaluate),
]


def _for_real(argv: list[str], tmp: Path, tiny_bundle: Path) -> list[str]:
    """The documented line with the default bundle replaced by the tiny one and outputs moved under tmp."""
    out = []
    for i, a in enumerate(argv):
        if a.rstrip("/") == ".cache/bundles/default":
            a = str(tiny_bundle)
        elif i and argv[i - 1] in OUTPUT_FLAGS and not Path(a).is_absolute():
            a = str(tmp / a)
        out.append(a)
    return out


@pytest.mark.integration
def test_documented_commands_run_against_the_embedded_stack(stack, tiny_bundle, tmp_path, monkeypatch, capsys):
    from consumer.cli import main

    for key, value in {"MEMEGUARD_KAFKA_BOOTSTRAP": stack.bootstrap, "MEMEGUARD_REDIS_URL": stack.redis_url,
                       "MEMEGUARD_BUNDLE_PATH": str(tiny_bundle), "MEMEGUARD_INTRA_OP_THREADS": "1",
                       "MEMEGUARD_FILE_ROOT": str(SHARED / "data"), "MEMEGUARD_WATCH_BUNDLE": "false"}.items():
        monkeypatch.setenv(key, value)
    ran: dict[str, str] = {}  # command as written -> where it was first found; one run per distinct line
    for block in runnable_blocks():
        if block.skip is not None:
            continue
        for cmd in split_commands(block.body):
            if cmd.words[:3] == ["memeguard", "dev", "up"]:
                continue  # that is the session's `stack` fixture
            text = shlex.join(cmd.words)
            run = next((r for r in RUN_FOR_REAL if re.search(r.pattern, text)), None)
            if run is None or text in ran:
                continue
            ran[text] = block.where
            capsys.readouterr()
            if run.stdin is not None:
                monkeypatch.setattr(sys, "stdin", io.StringIO(run.stdin))
            rc = main(_for_real(cmd.words[1:], tmp_path, tiny_bundle))
            out, err = capsys.readouterr()
            assert rc == 0, f"{block.where}: {cmd.text} -> rc {rc}\n{err[-2000:]}"
            run.check(out, tmp_path)
    missing = [r.pattern for r in RUN_FOR_REAL if not any(re.search(r.pattern, t) for t in ran)]
    assert missing == [], f"no doc has these commands any more (update RUN_FOR_REAL): {missing}"
