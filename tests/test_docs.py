"""The docs cannot drift from the code: README.md and docs/*.md, checked and run.

- Every `stagegpt VERB ...` line in a fenced block (also `.venv/bin/stagegpt`,
  `python -m stagegpt`, `torchrun ... -m stagegpt`) names a verb that exists, and every
  flag it shows is one that verb's parser accepts; then the whole line must parse.
  `prepare SOURCE` is checked against the source's own parser. `make TARGET` lines name
  targets the Makefile has.
- Every ```python block runs, unless its fence says ```python no-run and the text before
  it says why ("not run"). Each runs on its own, in a fresh directory laid out like the
  repo root after the docs' commands (see `world` and `scene`): tiny stand-ins live at
  the paths the snippets name, and the `tiny_training` fixture caps what a snippet may
  train.
- The command blocks listed in RUN_AS_WRITTEN are run as written, through
  `stagegpt.cli.main`, in such a directory.
- Relative links and images resolve, anchors included, and the README stays short.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
from dataclasses import dataclass
from pathlib import Path

import pytest

from stagegpt.cli import build_parser, main
from stagegpt.errors import StagegptError

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
README_MAX_LINES = 250
LANGUAGES = {"bash", "python", "text", "toml"}  # a block in another language fails the test
NO_RUN = "no-run"

# (page, heading): command blocks under that heading run as written, in a scene
RUN_AS_WRITTEN = {
    ("docs/data.md", "Preparing a data dir"): {"data": False},
    ("docs/sampling.md", "The command"): {"data": True},
    ("docs/inspecting.md", "The commands"): {"data": True},
    ("docs/interop.md", "Converting"): {"data": True, "gpt2_tokenizer": True},
}


# ---- reading the pages ------------------------------------------------------------------


@dataclass
class Block:
    page: Path
    line: int  # of the opening fence, 1-based
    info: str  # the fence's info string: "python", "python no-run", ...
    code: str
    heading: str  # the nearest heading above it, without the #s
    before: str  # the text between the previous block (or heading) and this one

    @property
    def lang(self) -> str:
        return self.info.split()[0] if self.info.split() else ""

    @property
    def id(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"


def read_blocks(page: Path) -> list[Block]:
    blocks, fence, start, info, code, heading, before = [], None, 0, "", [], "", []
    for number, line in enumerate(page.read_text(encoding="utf-8").splitlines(), 1):
        if fence is None:
            match = re.match(r"^(```+|~~~+)(.*)$", line)
            if match:
                fence, start, info, code = match.group(1), number, match.group(2).strip(), []
            elif line.startswith("#"):
                heading, before = line.lstrip("#").strip(), []
            else:
                before.append(line)
        elif line.strip() == fence:
            blocks.append(Block(page, start, info, "\n".join(code) + "\n", heading,
                                "\n".join(before)))
            fence, before = None, []
        else:
            code.append(line)
    assert fence is None, f"{page}: the code block opened on line {start} is never closed"
    return blocks


BLOCKS = [block for page in PAGES for block in read_blocks(page)]
PYTHON = [b for b in BLOCKS if b.lang == "python"]


def logical_lines(block: Block) -> list[tuple[int, str]]:
    """The block's lines with backslash continuations joined, each with its page line."""
    lines, pending, first = [], "", 0
    for offset, line in enumerate(block.code.splitlines(), 1):
        if not pending:
            first = block.line + offset
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        lines.append((first, pending + line))
        pending = ""
    return lines


SEPARATORS = {"|", "||", "&&", ";", ">", ">>", "2>", "&"}


def segments(line: str) -> list[list[str]]:
    """A shell line's simple commands, as words (comments dropped)."""
    try:
        words = shlex.split(line, comments=True)
    except ValueError:
        return []
    found, current = [], []
    for word in words:
        if word in SEPARATORS:
            found, current = found + [current], []
        else:
            current.append(word)
    return [s for s in found + [current] if s]


def without_env(words: list[str]) -> list[str]:
    """Drop leading `NAME=value` assignments."""
    i = 0
    while i < len(words) and re.fullmatch(r"[A-Za-z_]\w*=.*", words[i]):
        i += 1
    return words[i:]


def stagegpt_argv(words: list[str]) -> list[str] | None:
    """The arguments after `stagegpt` if these words run it, else None."""
    words = without_env(words)
    if not words:
        return None
    if words[0] == "stagegpt" or words[0].endswith("/stagegpt"):
        return words[1:]
    for i, word in enumerate(words[:-1]):
        if word == "-m" and words[i + 1] == "stagegpt":
            return words[i + 2:]
    return None


def commands() -> list[tuple[str, list[str]]]:
    """Every stagegpt command line in a fenced block that is not Python or TOML. Lines of
    output shown in ```text blocks (`stagegpt train: error: ...`) are not commands."""
    found = []
    for block in BLOCKS:
        if block.lang in ("python", "toml"):
            continue
        for number, line in logical_lines(block):
            if "stagegpt" not in line:
                continue
            for words in segments(line):
                argv = stagegpt_argv(words)
                if argv is not None and not (argv and argv[0].endswith(":")):
                    found.append((f"{block.page.relative_to(ROOT)}:{number}", argv))
    return found


COMMANDS = commands()


# ---- the command line -----------------------------------------------------------------


def subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    if parser._subparsers is None:
        return {}
    for action in parser._subparsers._group_actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def check_flags(parser: argparse.ArgumentParser, words: list[str], where: str) -> None:
    for word in words:
        if word.startswith("-") and not re.fullmatch(r"-\d[\d.e+-]*", word):
            flag = word.split("=", 1)[0]
            assert flag in parser._option_string_actions, (
                f"{where}: `{parser.prog}` has no flag {flag}")


def test_the_docs_show_commands_of_every_verb():
    shown = {argv[0] for _, argv in COMMANDS if argv and not argv[0].startswith("-")}
    assert shown == set(subparsers(build_parser())), "a verb without a documented command"


@pytest.mark.parametrize("where,argv", COMMANDS, ids=[w for w, _ in COMMANDS])
def test_command_names_a_verb_and_only_its_flags(where, argv, capsys):
    parser = build_parser()
    words = list(argv)
    while words and words[0].startswith("-"):  # options of `stagegpt` itself
        check_flags(parser, words[:1], where)
        words = words[1:]
    if not words:
        return
    verbs = subparsers(parser)
    assert words[0] in verbs, f"{where}: no verb {words[0]!r} (verbs: {', '.join(verbs)})"
    verb, rest = verbs[words[0]], words[1:]
    sources = subparsers(verb)
    if sources:  # `prepare SOURCE ...`
        positional = next((w for w in rest if not w.startswith("-")), None)
        if positional is not None:
            assert positional in sources, (
                f"{where}: `{verb.prog}` has no source {positional!r} "
                f"(sources: {', '.join(sources)})")
            check_flags(verb, rest[:rest.index(positional)], where)
            verb, rest = sources[positional], rest[rest.index(positional) + 1:]
    check_flags(verb, rest, where)
    if {"-h", "--help"} & set(argv):
        return
    try:
        parser.parse_args(argv)
    except SystemExit:
        pytest.fail(f"{where}: `stagegpt {shlex.join(argv)}` does not parse: "
                    f"{capsys.readouterr().err.strip()}")


def make_targets() -> set[str]:
    text = (ROOT / "Makefile").read_text(encoding="utf-8")
    return set(re.findall(r"^([A-Za-z][\w-]*):", text, re.M))


def test_make_lines_name_real_targets():
    targets = make_targets()
    for block in BLOCKS:
        if block.lang != "bash":
            continue
        for number, line in logical_lines(block):
            for words in segments(line):
                words = without_env(words)
                if words[:1] == ["make"]:
                    wanted = [w for w in words[1:] if "=" not in w and not w.startswith("-")]
                    unknown = set(wanted) - targets
                    assert not unknown, f"{block.page.name}:{number}: no make target {unknown}"


def test_code_blocks_have_a_known_language():
    for block in BLOCKS:
        assert block.lang in LANGUAGES, f"{block.id}: fence ```{block.info}"
        assert set(block.info.split()[1:]) <= {NO_RUN}, f"{block.id}: fence ```{block.info}"


# ---- Python snippets --------------------------------------------------------------------


def _char_checkpoint(run_dir: Path, data_dir: Path) -> None:
    """A small random stage 5 model on the demo's characters, saved as a run's step 1."""
    import torch

    from stagegpt import ModelConfig, build_model
    from stagegpt.data.datasets import load_tokenizer_from_data
    from stagegpt.train.checkpoints import save_checkpoint

    tokenizer = load_tokenizer_from_data(data_dir)
    config = ModelConfig(vocab_size=tokenizer.vocab_size, block_size=64, n_embd=32,
                         n_layer=2, n_head=2)
    torch.manual_seed(0)
    save_checkpoint(run_dir / "checkpoints" / "step_00000001", build_model(5, config),
                    tokenizer)


def _gpt2_stand_in(directory: Path) -> None:
    """A tiny Hugging Face GPT-2 dir with GPT-2's 50,257-token vocabulary, written by
    transformers itself: what `hf download` would give, at a fraction of the size."""
    transformers = pytest.importorskip("transformers")
    config = transformers.GPT2Config(vocab_size=50257, n_positions=64, n_embd=32, n_layer=1,
                                     n_head=2)
    transformers.GPT2LMHeadModel(config).save_pretrained(directory)


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    """What the snippets read, at the paths they name, made once: data/shakespeare_char
    (the demo's data, prepared as `make demo` does), runs/char (a run dir holding a small
    random stage 5 on it), gpt2 (a tiny stand-in for a downloaded GPT-2), and some text of
    your own (notes/, book.txt)."""
    root = tmp_path_factory.mktemp("world")
    data = root / "data" / "shakespeare_char"
    assert main(["prepare", "shakespeare", "--variant", "tiny", "--tokenizer", "char",
                 "--out", str(data), "--no-progress"]) == 0
    _char_checkpoint(root / "runs" / "char", data)
    _gpt2_stand_in(root / "gpt2")
    (root / "notes").mkdir()
    text = "First Citizen:\nBefore we proceed any further, hear me speak.\n\n"
    (root / "notes" / "monday.md").write_text(text * 20, encoding="utf-8")
    (root / "book.txt").write_text(text.replace("speak", "read") * 60, encoding="utf-8")
    return root


def scene(world: Path, tmp_path: Path, data: bool = True) -> Path:
    """A fresh working directory that looks like the world: its data dirs linked (read
    only by the snippets), its runs copied, new files landing in tmp_path."""
    import shutil

    shutil.copytree(world / "runs", tmp_path / "runs")
    for name in ("gpt2", "notes", "book.txt"):
        (tmp_path / name).symlink_to(world / name)
    (tmp_path / "data").mkdir()
    if data:
        for prepared in (world / "data").iterdir():
            (tmp_path / "data" / prepared.name).symlink_to(prepared)
    return tmp_path


MAX_DOC_STEPS = 20


@pytest.fixture
def tiny_training(monkeypatch):
    """Snippets show real budgets (`TrainConfig(max_steps=500)`); here every TrainConfig a
    snippet makes trains at most MAX_DOC_STEPS steps, evaluates on 2 batches and warms up
    for at most a quarter of its steps, so a snippet runs in seconds. Nothing else changes."""
    import stagegpt.train.config as config

    class Capped(config.TrainConfig):  # still a TrainConfig, which Trainer checks for
        def __post_init__(self):
            super().__post_init__()
            self.max_steps = min(self.max_steps, MAX_DOC_STEPS)
            self.eval_batches = min(self.eval_batches, 2)
            self.warmup_steps = min(self.warmup_steps, self.max_steps // 4)

    monkeypatch.setattr(config, "TrainConfig", Capped)


def gpt2_tokenizer_or_skip() -> None:
    from stagegpt.interop.gpt2 import gpt2_tokenizer

    try:
        gpt2_tokenizer()
    except StagegptError as err:
        pytest.skip(f"GPT-2's tokenizer is unavailable here: {err}")


@pytest.mark.parametrize("block", [b for b in PYTHON if NO_RUN not in b.info.split()],
                         ids=lambda b: b.id)
def test_python_snippet_runs(block, world, tmp_path, monkeypatch, tiny_training):
    if "load_checkpoint(\"gpt2\")" in block.code:
        gpt2_tokenizer_or_skip()
    monkeypatch.chdir(scene(world, tmp_path))
    exec(compile(block.code, block.id, "exec"), {"__name__": "__docs__"})


@pytest.mark.parametrize("block", [b for b in PYTHON if NO_RUN in b.info.split()],
                         ids=lambda b: b.id)
def test_a_snippet_not_run_says_why(block):
    assert "not run" in block.before, f"{block.id}: say in the text why it is not run"


# ---- commands run as written ----------------------------------------------------------


@pytest.mark.parametrize("page,heading", list(RUN_AS_WRITTEN), ids=lambda x: str(x))
def test_commands_run_as_written(page, heading, world, tmp_path, monkeypatch, capsys):
    needs = RUN_AS_WRITTEN[(page, heading)]
    if needs.get("gpt2_tokenizer"):
        gpt2_tokenizer_or_skip()
    blocks = [b for b in BLOCKS if b.page == ROOT / page and b.heading == heading
              and b.lang == "bash"]
    assert blocks, f"{page} has no bash block under the heading {heading!r}"
    monkeypatch.chdir(scene(world, tmp_path, data=needs["data"]))
    for block in blocks:
        for number, line in logical_lines(block):
            for words in segments(line):
                argv = stagegpt_argv(words)
                assert argv is not None, f"{page}:{number}: not a stagegpt command"
                if argv[0] == "prepare":
                    argv = [*argv, "--no-progress"]
                assert main(argv) == 0, f"{page}:{number}: {line}"
    out = capsys.readouterr().out
    if page == "docs/sampling.md":
        assert out.count("ROMEO:") >= 2
    if page == "docs/inspecting.md":
        assert (tmp_path / "runs" / "attention.png").is_file()
        assert (tmp_path / "runs" / "head.png").is_file()
        assert "124,439,808" in out


# ---- links and length -------------------------------------------------------------------


def slug(heading: str) -> str:
    """The anchor a code host gives a heading."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    text = re.sub(r"```.*?```", "", page.read_text(encoding="utf-8"), flags=re.S)
    return {slug(h) for h in re.findall(r"^#+\s+(.*)$", text, re.M)}


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_links_resolve(page):
    text = re.sub(r"```.*?```", "", page.read_text(encoding="utf-8"), flags=re.S)
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"[a-z]+:", target):
            continue
        path, _, anchor = target.partition("#")
        linked = (page.parent / path).resolve() if path else page
        assert linked.exists(), f"{page.name}: link to missing {target}"
        if anchor:
            assert anchor in anchors(linked), f"{page.name}: no heading for #{anchor}"


def test_readme_is_short():
    lines = (ROOT / "README.md").read_text(encoding="utf-8").count("\n")
    assert lines <= README_MAX_LINES


def test_every_page_is_linked_from_the_readme():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    for page in PAGES[1:]:
        assert f"docs/{page.name}" in readme, page.name


def test_the_package_is_what_the_docs_import():
    """The docs import from these modules; a rename must update them."""
    for block in PYTHON:
        for module in re.findall(r"^from (stagegpt[\w.]*) import", block.code, re.M):
            assert os.path.exists(ROOT / "src" / (module.replace(".", "/") + ".py")) or (
                ROOT / "src" / module.replace(".", "/") / "__init__.py").exists(), (
                f"{block.id}: no module {module}")
