"""benchmarks/docs.py, the one mechanism for measured numbers in the docs: the blocks of README.md and docs/ well
formed and in sync with their snapshots in docs/numbers/, a malformed block one message naming where, a snapshot
taken and rendered into its block; and benchmarks/first_run.py's console excerpt."""

from __future__ import annotations

import json
import re

import pytest
from helpers.project import ROOT

from benchmarks import docs, first_run

README = ROOT / "README.md"
PAGES = sorted((ROOT / "docs").glob("*.md"))


def test_every_numbers_block_is_well_formed_and_in_sync_with_its_snapshot():
    for page in [README, *PAGES]:
        docs.check_markers(page.read_text(), page.name)
    assert docs.stale() == [], "run `python -m benchmarks.docs` (make docs) and commit the result"
    used = {match.group("name").partition(".")[0] for page in [README, *PAGES]
            for match in docs.BLOCK.finditer(docs.unfenced(page.read_text()))}
    assert {path.stem for path in docs.SNAPSHOTS.glob("*.json")} <= used | {"benchmark"}, "an unused snapshot"


@pytest.mark.parametrize(("text", "problem"), [
    ("<!-- numbers:first-run.times -->\nx\n", "never closed"),
    ("<!-- /numbers -->\n", "closes no block"),
    ("<!-- numbers:first-run.times -->\n<!-- numbers:first-run.times -->\n<!-- /numbers -->\n<!-- /numbers -->\n",
     "inside another"),
    ("<!-- numbers:first-run.nothing -->\n<!-- /numbers -->\n", "no view 'first-run.nothing'"),
    ("<!-- numbers first-run.times -->\n", "is no marker"),
])
def test_a_malformed_block_is_one_message_naming_where(text, problem):
    with pytest.raises(docs.NumbersError, match=re.escape(problem)):
        docs.check_markers("intro\n" + text, "page.md")


def test_take_then_render_rewrites_the_block_and_only_the_block(tmp_path):
    snapshots = tmp_path / "docs" / "numbers"
    measured = {"source": "CI, commit abc", "machine": "2 cores", "full": {"tests": 400, "seconds": 780},
                "fast": {"tests": 300, "seconds": 200}}
    (tmp_path / "measured.json").write_text(json.dumps(measured))
    docs.take("tests", tmp_path / "measured.json", snapshots)
    example = "```\n<!-- numbers:tests.times -->\nan example, inside a fence\n<!-- /numbers -->\n```\n"
    page = "Before.\n<!-- numbers:tests.times -->\nold figures\n<!-- /numbers -->\nAfter.\n" + example
    (tmp_path / "README.md").write_text(page)
    assert docs.stale(tmp_path, snapshots) == ["README.md"]
    docs.rewrite(tmp_path, snapshots)
    assert (tmp_path / "README.md").read_text() == (
        "Before.\n<!-- numbers:tests.times -->\nMeasured (CI, commit abc): `make test` (400 tests) took 13 min, "
        "`make test-fast` (300) 3 min, on 2 cores.\n<!-- /numbers -->\nAfter.\n" + example)
    assert docs.stale(tmp_path, snapshots) == []


def test_the_console_excerpt_leaves_out_the_middle_epochs():
    console = "\n".join(["Running stage 'params':", "ok", "Running stage 'train':", "training bn_cnn ..."]
                        + [f"epoch {n}/20  loss 0.1" for n in range(1, 21)] + ["trained bn_cnn", "Test accuracy 0.99"])
    excerpt = first_run.console_excerpt(console)
    assert excerpt[0] == "Running stage 'train':" and excerpt[-1] == "Test accuracy 0.99"
    assert [line for line in excerpt if line.startswith("epoch")] == [
        "epoch 1/20  loss 0.1", "epoch 2/20  loss 0.1", "epoch 19/20  loss 0.1", "epoch 20/20  loss 0.1"]
    assert "... (16 epochs)" in excerpt
