"""What the docs teach, runs: every `alexnet ...` command line in README.md, docs/*.md,
benchmarks/README.md and notebooks/ (code blocks, inline code, notebook cells) is parsed by the
real parser, the cheap ones run, and the Python calls of README's table name things that exist
with keywords they accept.

A command line in the docs may be a fragment: usage brackets (``[--recipe NAME] [flags]``) keep
only the flags they show, ``a|b`` alternatives the first, ``...`` nothing, and placeholders
(``N``, ``DIR``, ``runs/NAME``) stand for any value. A required flag a fragment leaves out is
fine; an unknown command, flag or choice fails, naming the file and line.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import importlib
import inspect
import io
import json
import re
import shlex
from dataclasses import dataclass
from pathlib import Path

import pytest

import alexnet
from alexnet.cli import build_parser, main
from alexnet.training.options import FIELD_NAMES

ROOT = Path(__file__).resolve().parent.parent
PLACEHOLDER = re.compile(r"^[A-Z][A-Z0-9_]*$|NAME|RUN_DIR|<[^>]*>")
CHEAP = {"models", "recipes", "summary"}  # commands that run in a second, offline


@dataclass(frozen=True)
class Command:
    where: str  # file:line (notebooks: file cell N)
    text: str  # as the docs show it
    argv: tuple[str, ...]  # after `alexnet`


def doc_files() -> list[Path]:
    """The files whose commands are checked: whatever of them exists now."""
    files = [ROOT / "README.md", ROOT / "benchmarks" / "README.md"]
    files += sorted((ROOT / "docs").glob("*.md")) + sorted((ROOT / "notebooks").glob("*.md"))
    files += sorted((ROOT / "notebooks").glob("*.ipynb"))
    return [f for f in files if f.is_file()]


def _texts(path: Path) -> list[tuple[str, str, str]]:
    """(where, kind, text): markdown as one text, a notebook's cells one by one."""
    rel = path.relative_to(ROOT)
    if path.suffix != ".ipynb":
        return [(str(rel), "markdown", path.read_text())]
    cells = json.loads(path.read_text())["cells"]
    return [(f"{rel} cell {i}", c["cell_type"], "".join(c["source"])) for i, c in enumerate(cells)]


def _markdown_snippets(text: str) -> list[tuple[int, str]]:
    """(line, command text) of fenced code lines (with ``\\`` continuations joined) and of
    inline code spans that hold ``alexnet <command>``."""
    out: list[tuple[int, str]] = []
    lines = text.split("\n")
    prose: list[str] = []
    fenced, i = False, 0
    while i < len(lines):
        line = lines[i]
        if line.lstrip().startswith("```"):
            fenced = not fenced
            prose.append("")
            i += 1
            continue
        if not fenced:
            prose.append(line)
            i += 1
            continue
        start, joined = i + 1, line
        while joined.rstrip().endswith("\\") and i + 1 < len(lines):
            i += 1
            joined = joined.rstrip()[:-1] + " " + lines[i].strip()
        prose.append("")
        out.append((start, joined.strip().removeprefix("$ ")))
        i += 1
    body = "\n".join(prose)
    prev = None
    for m in re.finditer(r"`([^`]+)`", body):
        span, line = m.group(1).replace("\n", " "), body.count("\n", 0, m.start()) + 1
        if re.search(r"(^|\s)alexnet [a-z-]", span):
            out.append((line, span))
        elif span.startswith("--") and prev and body[prev.end() : m.start()].strip() == "or":
            # "`alexnet train --recipe X` or `--init imagenet ...`": the same command
            words = [a for a in (_argv(prev.group(1)) or ())[:2] if not a.startswith("-")]
            out.append(
                (line, " ".join(["alexnet", *words[: 2 if words[:1] == ["bench"] else 1], span]))
            )
        prev = m
    return out


def _code_cell_snippets(text: str) -> list[tuple[int, str]]:
    """Shell lines of a code cell: ``!alexnet ...``, and the lines of a ``%%bash`` cell."""
    lines = text.split("\n")
    bash = bool(lines) and lines[0].startswith("%%bash")
    out = []
    for n, line in enumerate(lines, 1):
        s = line.strip()
        if s.startswith("!"):
            out.append((n, s[1:]))
        elif bash and n > 1:
            out.append((n, s))
    return out


def _tokens(text: str) -> list[str]:
    text = text.replace("\\|", "|")  # a pipe escaped in a markdown table
    try:
        return shlex.split(text, comments=True)
    except ValueError:  # an apostrophe in prose-like usage ("train's flags")
        return text.split("#")[0].split()


def _argv(text: str) -> tuple[str, ...] | None:
    """The arguments after ``alexnet`` in a shell line, or None when it runs no alexnet."""
    tokens = _tokens(text)
    starts = [
        k
        for k, t in enumerate(tokens)
        if t == "alexnet" and k + 1 < len(tokens) and re.match(r"^([a-z][a-z-]*|--?[a-z-]+)$", tokens[k + 1])
    ]  # fmt: skip
    if not starts:
        return None
    argv: list[str] = []
    group: list[str] | None = None
    for t in tokens[starts[0] + 1 :]:
        if group is None and t.startswith("["):
            group, t = [], t[1:]
        if group is None and (t in ("&&", ";", "|", "||", ">>", "<") or t.startswith((">", "2>"))):
            break
        if group is not None:
            closing = t.endswith("]")
            group.append(t.rstrip("]"))
            if closing:
                first = " ".join(group).split("|")[0].split()
                if first and first[0].startswith("-"):  # usage: [--flag VALUE]; [flags] is not
                    argv += first
                group = None
            continue
        if t.endswith("...") or t == "":
            continue
        argv.append(t.split("|")[0] if "|" in t and not t.startswith("-") else t)
    return tuple(argv)


def collect() -> list[Command]:
    commands = []
    for path in doc_files():
        for where, kind, text in _texts(path):
            snippets = _code_cell_snippets(text) if kind == "code" else _markdown_snippets(text)
            for line, snippet in snippets:
                argv = _argv(snippet)
                if argv is not None:
                    commands.append(Command(f"{where}:{line}", snippet, argv))
    return commands


COMMANDS = collect()


# ---------------------------------------------------------------- the docs' parser


class _Placeholder(list):
    """A choices list that also takes a placeholder (``--dataset NAME``)."""

    def __contains__(self, value) -> bool:
        return (isinstance(value, str) and bool(PLACEHOLDER.search(value))) or super().__contains__(
            value
        )


def _any_placeholder(kind):
    def convert(text: str):
        return text if PLACEHOLDER.search(text) else kind(text)

    return convert


class DocsError(Exception):
    pass


def docs_parser(*, fragments: bool = True) -> argparse.ArgumentParser:
    """The real parser, where a usage error raises instead of exiting and (``fragments``) a
    fragment may leave out required flags and a placeholder stands for any value."""
    parser = build_parser()
    todo = [parser]
    while todo:
        p = todo.pop()

        def error(message, _p=p):
            raise DocsError(f"{_p.prog}: {message}")

        p.error = error
        for action in p._actions:
            if isinstance(action, argparse._SubParsersAction):
                todo += list(action.choices.values())
        if not fragments:
            continue
        for group in p._mutually_exclusive_groups:
            group.required = False
        for action in p._actions:
            if isinstance(action, argparse._SubParsersAction):
                continue
            action.required = False
            if action.type is not None:
                action.type = _any_placeholder(action.type)
            if action.choices is not None:
                action.choices = _Placeholder(action.choices)
    return parser


PARSER = docs_parser()
WHOLE = docs_parser(fragments=False)  # a command line as it must be typed


def _complete(argv: tuple[str, ...]) -> bool:
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # --help prints
            WHOLE.parse_args(list(argv))
    except DocsError:
        return False
    except SystemExit:  # --help
        pass
    return True


def test_the_docs_have_commands_to_check() -> None:
    assert any(c.where.startswith("README.md") for c in COMMANDS)
    assert any(c.argv[:1] == ("train",) for c in COMMANDS)


@pytest.mark.parametrize("command", COMMANDS, ids=[c.where for c in COMMANDS])
def test_every_command_in_the_docs_parses(command: Command) -> None:
    try:
        PARSER.parse_args(list(command.argv))
    except SystemExit as e:  # --help and --version print and exit 0
        assert e.code == 0, f"{command.where}: `{command.text}` exited {e.code}"
    except DocsError as e:
        pytest.fail(f"{command.where}: `{command.text}` does not parse: {e}")


def _runs_for_real(c: Command) -> bool:
    if any(PLACEHOLDER.search(a) for a in c.argv):
        return False
    cheap = "--help" in c.argv or "-h" in c.argv or (bool(c.argv) and c.argv[0] in CHEAP)
    return cheap and _complete(c.argv)


CHEAP_COMMANDS = [c for c in COMMANDS if _runs_for_real(c)]


@pytest.mark.parametrize("command", CHEAP_COMMANDS, ids=[c.where for c in CHEAP_COMMANDS])
def test_the_cheap_commands_in_the_docs_run(command: Command, capsys) -> None:
    try:
        code = main(list(command.argv))
    except SystemExit as e:  # --help exits 0
        code = e.code
    out = capsys.readouterr()
    assert code == 0, f"{command.where}: `{command.text}` exited {code}: {out.err}"
    assert out.out.strip()


def test_the_collector_reads_fragments_as_a_user_would() -> None:
    assert _argv("$ alexnet train --epochs 3 \\") == ("train", "--epochs", "3", "\\")
    assert _argv("alexnet lr-find [--recipe R \\| train's flags] [--steps 100]") == (
        "lr-find", "--recipe", "R", "--steps", "100")  # fmt: skip
    assert _argv("alexnet train [--recipe NAME] [flags]") == ("train", "--recipe", "NAME")
    assert _argv("cd x && ALEXNET_CACHE=y /usr/bin/time -f '%e s' alexnet train --no-progress")
    assert _argv("torchrun --standalone -m alexnet train --nproc 4 ...") == (
        "train", "--nproc", "4")  # fmt: skip
    assert _argv("alexnet viz filters|activations|gradcam") == ("viz", "filters")
    assert _argv("alexnet models --json | head") == ("models", "--json")
    assert _argv("import alexnet") is None
    transfer = [c.argv for c in COMMANDS if c.where == f"README.md:{_readme_line('--init ')}"]
    wanted = {"train", "--init", "imagenet", "--freeze", "features", "--unfreeze-after", "5"}
    assert any(wanted <= set(argv) for argv in transfer) or not transfer
    with pytest.raises(DocsError, match="unrecognized arguments: --no-such-flag"):
        PARSER.parse_args(["train", "--no-such-flag"])
    with pytest.raises(DocsError, match="invalid choice: 'sideways'"):
        PARSER.parse_args(["train", "--freeze", "sideways"])
    PARSER.parse_args(["train", "--epochs", "N", "--freeze", "MODE"])  # placeholders


def _readme_line(text: str) -> int | None:
    for n, line in enumerate((ROOT / "README.md").read_text().split("\n"), 1):
        if text in line:
            return n
    return None


# ------------------------------------------------------------ README's Python calls


def _readme_calls() -> list[tuple[int, str]]:
    """(line, code) of README table cells' inline code that calls or names ``alexnet.*``."""
    out = []
    for n, line in enumerate((ROOT / "README.md").read_text().split("\n"), 1):
        if not line.startswith("|"):
            continue
        cells = [c for c in re.split(r"(?<!\\)\|", line) if c.strip()]
        spans = re.findall(r"`([^`]+)`", cells[-1])  # the Python column
        if any(s.startswith("alexnet.") for s in spans):
            out += [(n, s) for s in spans if not s.startswith(("alexnet ", "--", "."))]
    return out


def _resolve(name: str, context: list[object]) -> object:
    """``alexnet.a.b`` by attribute (or import), a bare name in ``alexnet`` or the modules
    named before it on the same line."""
    parts = name.split(".")
    if parts[0] != "alexnet":
        for scope in [alexnet, *context]:
            if hasattr(scope, parts[0]):
                obj = getattr(scope, parts[0])
                break
        else:
            raise AttributeError(f"{name} is none of alexnet's names")
        parts = parts[1:]
    else:
        obj, parts = alexnet, parts[1:]
    path = "alexnet"
    for part in parts:
        path += "." + part
        try:
            obj = getattr(obj, part)
        except AttributeError:
            obj = importlib.import_module(path)
    return obj


README_CALLS = _readme_calls()


@pytest.mark.parametrize(
    ("line", "code"), README_CALLS, ids=[f"README:{n}" for n, _ in README_CALLS]
)
def test_readme_python_calls_name_what_exists(line: int, code: str) -> None:
    try:  # `f(a=1, ...)`: the dots stand for more keywords
        tree = ast.parse(re.sub(r",\s*\.\.\.(?=\s*\))", "", code), mode="eval").body
    except SyntaxError:
        pytest.skip(f"README.md:{line}: `{code}` is not Python")
    context = []
    for _, earlier in README_CALLS:  # modules named earlier on the same line
        if earlier == code:
            break
    for n, other in README_CALLS:
        if n == line and other != code:
            head = other.split("(")[0]
            try:
                context.append(inspect.getmodule(_resolve(head, [])))
            except (AttributeError, ImportError):
                pass
    target = tree.func if isinstance(tree, ast.Call) else tree
    name = ast.unparse(target)
    try:
        obj = _resolve(name, context)
    except ModuleNotFoundError as e:
        if not (e.name or "").startswith("alexnet"):
            pytest.skip(f"{name} needs {e.name}, an extra not installed here")
        raise
    except AttributeError as e:
        pytest.fail(f"README.md:{line}: `{code}`: {e}")
    if not isinstance(tree, ast.Call):
        return
    params = inspect.signature(obj).parameters
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    for kw in tree.keywords:
        if kw.arg is None:
            continue
        if kw.arg in params and params[kw.arg].kind is not inspect.Parameter.VAR_POSITIONAL:
            continue
        if takes_any and obj in (alexnet.train, alexnet.lr_find):  # **overrides: config keys
            assert kw.arg in FIELD_NAMES, f"README.md:{line}: {name}() has no key {kw.arg!r}"
            continue
        assert takes_any, f"README.md:{line}: `{code}`: {name}() takes no {kw.arg}="
