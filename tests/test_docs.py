"""The docs: a front page of at most 300 lines, every docs page on its map and saying first what it is for, and
every command marked to run (a ```bash run fence) accepted by the parser of the program it calls: argparse for the
project's tools, DVC's and MLflow's own command-line parsers, make's dry run, git's usage check. Nothing is
executed but the parsing. The measured numbers' blocks: test_benchmark_docs.py."""

from __future__ import annotations

import argparse
import contextlib
import re
import shlex
import subprocess
import warnings

import pytest
import yaml
from helpers.project import ROOT

README = ROOT / "README.md"
PAGES = sorted((ROOT / "docs").glob("*.md"))
RUN_FENCE = re.compile(r"^```bash run\n(.*?)^```$", re.MULTILINE | re.DOTALL)


def test_the_front_page_is_short_and_fits_a_terminal():
    lines = README.read_text().splitlines()
    assert len(lines) <= 300, f"README.md has {len(lines)} lines: move a section to docs/"
    long = [number for number, line in enumerate(lines, 1) if len(line) > 120]
    assert not long, f"README.md: lines over 120 characters: {long}"


def prose_lines(text: str) -> list[tuple[int, str]]:
    """(number, line) outside code fences and tables: what can be wrapped."""
    found, fenced = [], False
    for number, line in enumerate(text.splitlines(), 1):
        fenced ^= line.startswith("```")
        if not fenced and not line.startswith(("```", "|")):
            found.append((number, line))
    return found


def test_the_docs_prose_fits_a_terminal():
    """Code and tables show what a program printed or needs, whatever its width; the prose wraps at 120."""
    for page in PAGES:
        long = [number for number, line in prose_lines(page.read_text()) if len(line) > 120]
        assert not long, f"{page.relative_to(ROOT)}: lines over 120 characters: {long}"


def test_the_map_lists_every_docs_page_and_each_says_what_it_is_for():
    linked = set(re.findall(r"\]\(docs/([\w-]+\.md)\)", README.read_text()))
    assert linked == {page.name for page in PAGES}, "README.md's map of docs/ and the folder differ"
    for page in PAGES:
        title, blank, purpose, *_ = page.read_text().splitlines()
        assert title.startswith("# ") and blank == "", page.name
        assert purpose.startswith("What this page is for: "), f"{page.name} starts with {purpose!r}"


# --- commands marked to run ------------------------------------------------------------------------------------


def marked_commands() -> list[tuple[str, list[str]]]:
    """(where, argv) of every simple command in the ```bash run fences: comments dropped, `\\` lines joined, split
    at `&&`, `||`, `;` and `|`."""
    found = []
    for page in [README, *PAGES]:
        for block in RUN_FENCE.findall(page.read_text()):
            for line in block.replace("\\\n", " ").splitlines():
                lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
                lexer.whitespace_split, lexer.commenters = True, "#"
                command: list[str] = []
                for token in [*lexer, ";"]:
                    if token in ("&&", "||", ";", "|"):
                        if command:
                            found.append((f"{page.name}: {line.strip()}", command))
                        command = []
                    elif token in ("<", ">", ">>", "2>", "&"):  # `<name>` would be read as a redirection
                        raise AssertionError(f"{page.name}: {line.strip()}: {token!r}; write a real name, or leave "
                                             "the block unmarked")
                    else:
                        command.append(token)
    return found


class Parsed(Exception):
    """Raised once a tool's argparse has accepted its arguments: nothing runs after."""


@contextlib.contextmanager
def parse_only():
    parse_args, parse_known_args = argparse.ArgumentParser.parse_args, argparse.ArgumentParser.parse_known_args
    depth = []

    def args_then_stop(self, args=None, namespace=None):
        depth.append(1)
        try:
            parse_args(self, args, namespace)  # exits 2 on a bad argument, as on the command line
        finally:
            depth.pop()
        raise Parsed

    def known_then_stop(self, args=None, namespace=None):
        result = parse_known_args(self, args, namespace)
        if not depth:  # called by a tool itself (the server passes the rest on to `mlflow server`)
            raise Parsed
        return result

    with pytest.MonkeyPatch.context() as patch:  # argparse itself again after the block (DVC parses with it)
        patch.setattr(argparse.ArgumentParser, "parse_args", args_then_stop)
        patch.setattr(argparse.ArgumentParser, "parse_known_args", known_then_stop)
        yield


def check_stages_module(argv: list[str]) -> None:
    module = argv[2].removeprefix("stages.")
    stages = {stage["cmd"].split("-m", 1)[1].split()[0] for stage in
              yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"].values()}
    if argv[2] in stages:  # a DVC stage takes no arguments
        assert argv[3:] == [], f"the stage {argv[2]} takes no arguments"
        return
    import importlib

    tool = importlib.import_module(f"stages.{module}")
    with parse_only(), pytest.raises(Parsed):
        tool.main(argv[3:])


def check_dvc(argv: list[str]) -> None:
    from dvc.cli import parse_args

    parse_args(argv[1:])  # DvcParserError on a bad command or option


def check_mlflow(argv: list[str]) -> None:
    import click
    from mlflow.cli import cli

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # click's protected_args, until click 9
        context, command, rest = cli.make_context("mlflow", argv[1:]), cli, None
        while isinstance(command, click.Group):
            name, command, rest = command.resolve_command(context, [*context.protected_args, *context.args])
            context = command.make_context(name, rest, parent=context)


def check(argv: list[str]) -> None:
    program = argv[0]
    if program == "python" and argv[1] == "-m" and argv[2].startswith("stages."):
        check_stages_module(argv)
    elif program == "dvc":
        check_dvc(argv)
    elif program == "mlflow":
        check_mlflow(argv)
    elif program == "make":
        subprocess.run(["make", "-n", *argv[1:]], cwd=ROOT, check=True, capture_output=True, timeout=60)
    elif program == "git":
        usage = subprocess.run(["git", argv[1], "-h"], cwd=ROOT, capture_output=True, text=True, timeout=60)
        assert usage.returncode == 129 and "usage: git" in usage.stdout + usage.stderr, f"no git {argv[1]!r}"
    else:
        pytest.fail(f"no parser for {program!r} in tests/test_docs.py: mark only commands it can check")


def test_every_command_marked_to_run_is_accepted_by_its_parser():
    commands = marked_commands()
    assert len(commands) >= 10, "the docs mark their runnable commands with ```bash run"
    refused = []
    for where, argv in commands:
        try:
            check(argv)
        except (Exception, SystemExit) as error:  # argparse exits 2, DVC raises its parser error
            refused.append(f"{where}: {type(error).__name__}: {str(error)[:200]}")
    assert not refused, "\n".join(refused)


def test_the_parameter_counts_are_the_built_models():
    """configuration.md's table of presets against Keras' own count of each preset as built."""
    from stages.core.architectures import build_model, presets

    rows = re.findall(r"^\| `(\w+)`(?: \(default\))? \|[^|]*\| ([\d,]+) \|$", (ROOT / "docs" / "configuration.md")
                      .read_text(), re.MULTILINE)
    documented = {name: int(count.replace(",", "")) for name, count in rows}
    assert set(documented) == set(presets()), "every preset, and only the presets, with a parameter count"
    for name, layers in presets().items():
        assert build_model(layers, name).count_params() == documented[name], name


def test_the_model_cards_known_limits_are_what_the_docs_say():
    """The card quotes the docs verbatim (stages/core/card.py): rewording a page means requoting it there."""
    from stages.core.card import LIMITS

    unsaid = [quote for page, quote in LIMITS if quote not in " ".join((ROOT / page).read_text().split())]
    assert not unsaid, f"docs no longer say what the model card quotes (stages/core/card.py LIMITS): {unsaid}"


def test_the_not_sure_bar_the_docs_quote_is_the_readers():
    """docs/handwriting.md (and the model card, which quotes it) says where "not sure" starts: the reader's own bar."""
    from stages.core.calibration import UNSURE_BELOW

    text = (ROOT / "docs" / "handwriting.md").read_text()
    quoted = re.findall(r"top probability below ([0-9.]+)", text)
    assert quoted and {float(value) for value in quoted} == {UNSURE_BELOW}, quoted
