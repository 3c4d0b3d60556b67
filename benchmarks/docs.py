"""Measured numbers in the docs, one mechanism: every figure (an accuracy, a time, a table, a console) sits in a
marked block of README.md or docs/*.md,

    <!-- numbers:SOURCE.VIEW -->
    (generated text)
    <!-- /numbers -->

rendered by the function VIEWS["SOURCE.VIEW"] from docs/numbers/SOURCE.json, a committed snapshot of what a
measurement wrote (the benchmark's reports/benchmark.json, a run's record). Nobody edits a block by hand:

  python -m benchmarks.docs                       rewrite every block from the snapshots (`make docs`)
  python -m benchmarks.docs --check               name the blocks that differ from their snapshot, exit 1
  python -m benchmarks.docs --take SOURCE FILE    snapshot FILE (JSON) as docs/numbers/SOURCE.json, then rewrite

docs/numbers.md says how to add a block. tests/test_docs.py keeps the blocks well-formed and in sync.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

from benchmarks.first_run import console_excerpt, duration

ROOT = Path(__file__).resolve().parents[1]
SNAPSHOTS = ROOT / "docs" / "numbers"
# A marker is a line of its own, outside code fences (a page may show one as an example inside a fence or `code`).
BLOCK = re.compile(r"^<!-- numbers:(?P<name>[\w.-]+) -->\n(?P<body>.*?)^<!-- /numbers -->$", re.DOTALL | re.MULTILINE)
MARKER = re.compile(r"^<!-- /?numbers\b[^>]*-->$", re.MULTILINE)
FENCE = re.compile(r"^```.*?^```$", re.DOTALL | re.MULTILINE)


def documents(root: Path = ROOT) -> list[Path]:
    """The files that may hold blocks: the front page and every docs page."""
    return [root / "README.md", *sorted((root / "docs").glob("*.md"))]


# --- the views: snapshot -> block text (markdown, ending in a newline) ------------------------------------------


WIDTH = 120  # the docs' line length (tests/test_docs.py)


def paragraph(text: str) -> str:
    return textwrap.fill(text, WIDTH, break_long_words=False, break_on_hyphens=False) + "\n"


def first_run_times(run: dict) -> str:
    repro, machine = run["repro_seconds"], run["machine"]
    return paragraph(
        f"Measured: `make run` took {duration(repro)} on {machine['cores']} CPU cores shared with other work "
        f"(load {machine['load']:.0f}), with the environment already set up; setting it up once installs "
        f"{run['venv_gigabytes']:.1f} GB of packages into `.venv/`. "
        f"Test accuracy {run['metrics']['test_accuracy']:.4f} "
        f"({run['run']['architecture']}, {run['run']['epochs_run']} epochs, {run['metrics']['dataset']}).")


def first_run_console(run: dict) -> str:
    """The console excerpt in a fence, each line longer than the docs' width wrapped after a `\\`."""
    lines = []
    for line in console_excerpt(run["console"]):
        while len(line) > WIDTH:
            lines.append(line[:WIDTH - 1] + "\\")
            line = "    " + line[WIDTH - 1:]
        lines.append(line)
    return "```\n" + "\n".join(lines) + "\n```\n"


def tests_times(tests: dict) -> str:
    fast = tests.get("fast")
    fast_part = f", `make test-fast` ({fast['tests']}) {duration(fast['seconds'])}" if fast else ""
    return paragraph(f"Measured ({tests['source']}): `make test` ({tests['full']['tests']} tests) took "
                     f"{duration(tests['full']['seconds'])}{fast_part}, on {tests['machine']}.")


# What the reader aims at on the photo forms (issue 34): every single-digit form, and numbers read exactly.
DIGIT_TARGET, NUMBER_TARGET = 0.97, 0.93


def photo_forms(snapshot: dict) -> str:
    """benchmarks/photos.py's table: each form's accuracy before and after, against its target."""
    from benchmarks.photos import NUMBER_FORMS, single_forms

    before = snapshot.get("before", {}).get("forms", {})
    order = {form: place for place, form in enumerate([*single_forms(), *NUMBER_FORMS])}  # the benchmark's order
    lines = ["| form | before | after | target |", "|---|---|---|---|"]
    for form in sorted(snapshot["forms"], key=lambda form: (order.get(form, len(order)), form)):
        after = snapshot["forms"][form]
        target = NUMBER_TARGET if form in NUMBER_FORMS else DIGIT_TARGET
        was = f"{before[form]:.1%}" if form in before else "-"
        lines.append(f"| {form} | {was} | {after:.1%} | {target:.0%}: {'met' if after >= target else 'missed'} |")
    return "\n".join(lines) + "\n"


VIEWS: dict[str, Callable[[dict], str]] = {
    "first-run.times": first_run_times,
    "first-run.console": first_run_console,
    "tests.times": tests_times,
    "photo-forms.table": photo_forms,
}


# --- reading and rewriting blocks ---------------------------------------------------------------------------


class NumbersError(ValueError):
    """A malformed block, an unknown view or a missing snapshot: which file, which block, what to do."""


def unfenced(text: str) -> str:
    """`text` with its code fences blanked (same length and lines): markers inside them are examples."""
    return FENCE.sub(lambda match: re.sub(r"[^\n]", " ", match.group()), text)


def check_markers(text: str, where: str) -> None:
    """Every opening marker has its closing one, none nests, and each names a known view."""
    depth = 0
    text = unfenced(text)
    for match in MARKER.finditer(text):
        line = text.count("\n", 0, match.start()) + 1
        closing = match.group().startswith("<!-- /")
        opening = re.fullmatch(r"<!-- numbers:([\w.-]+) -->", match.group())
        if not closing and opening is None:
            raise NumbersError(f"{where}:{line}: {match.group()} is no marker: write <!-- numbers:SOURCE.VIEW -->")
        if not closing and opening.group(1) not in VIEWS:
            raise NumbersError(f"{where}:{line}: no view {opening.group(1)!r} in benchmarks/docs.py VIEWS "
                               f"(known: {', '.join(sorted(VIEWS))})")
        depth += -1 if closing else 1
        if depth not in (0, 1):
            raise NumbersError(f"{where}:{line}: " + ("a block opens inside another" if depth > 1 else
                                                      "<!-- /numbers --> closes no block"))
    if depth:
        raise NumbersError(f"{where}: a block is never closed with <!-- /numbers -->")


def snapshot(source: str, snapshots: Path = SNAPSHOTS) -> dict:
    path = snapshots / f"{source}.json"
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise NumbersError(f"{path} not found: `python -m benchmarks.docs --take {source} FILE`") from None


def render(text: str, where: str, snapshots: Path = SNAPSHOTS) -> str:
    """`text` with every block's body rendered anew from its snapshot."""
    check_markers(text, where)

    rendered, done = [], 0
    for match in BLOCK.finditer(unfenced(text)):  # positions in the blanked text are the text's own
        name = match.group("name")
        body = VIEWS[name](snapshot(name.partition(".")[0], snapshots))
        rendered += [text[done:match.start()], f"<!-- numbers:{name} -->\n{body}<!-- /numbers -->"]
        done = match.end()
    return "".join(rendered) + text[done:]


def stale(root: Path = ROOT, snapshots: Path = SNAPSHOTS) -> list[str]:
    """The documents whose blocks differ from what their snapshots render."""
    return [str(path.relative_to(root)) for path in documents(root)
            if path.is_file() and render(path.read_text(), str(path.relative_to(root)), snapshots) != path.read_text()]


def rewrite(root: Path = ROOT, snapshots: Path = SNAPSHOTS) -> list[str]:
    changed = stale(root, snapshots)
    for name in changed:
        path = root / name
        path.write_text(render(path.read_text(), name, snapshots))
    return changed


def take(source: str, file: Path, snapshots: Path = SNAPSHOTS) -> Path:
    """Snapshot the JSON `file` as the source `source` (sorted keys, so a new measurement diffs cleanly)."""
    if not re.fullmatch(r"[\w-]+", source):
        raise NumbersError(f"source name {source!r}: letters, digits, - and _ only")
    data = json.loads(Path(file).read_text())
    snapshots.mkdir(parents=True, exist_ok=True)
    target = snapshots / f"{source}.json"
    target.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.docs", description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="name the blocks that differ; change nothing")
    parser.add_argument("--take", nargs=2, metavar=("SOURCE", "FILE"), help="snapshot FILE as SOURCE first")
    arguments = parser.parse_args(argv)
    try:
        if arguments.take:
            print(f"wrote {take(arguments.take[0], Path(arguments.take[1])).relative_to(ROOT)}")
        if arguments.check:
            differ = stale()
            for name in differ:
                print(f"{name}: its numbers blocks differ from docs/numbers/: `python -m benchmarks.docs`")
            return 1 if differ else 0
        for name in rewrite():
            print(f"rewrote the numbers blocks of {name}")
    except (NumbersError, OSError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
