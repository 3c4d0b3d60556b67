"""docs/design.md's "you edit X → these stages rerun" table, checked by DVC itself: in a scratch copy of the
project whose dvc.lock records every stage as up to date, each edit is made in turn and `dvc status` names the
stages it changes (what their new outputs feed reruns after them, as `dvc repro` goes)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from helpers.project import ROOT, sh

# docs/design.md's section holds a Markdown table: | you edit | these stages rerun |.
TABLE_HEADING = "## You edit X: these stages rerun"


def readme_table() -> dict[str, set[str]]:
    text = (ROOT / "docs" / "design.md").read_text()
    section = text[text.index(TABLE_HEADING):].split("\n\n", 2)[1]
    rows = {}
    for line in section.splitlines()[2:]:
        edited, stages = (cell.strip() for cell in line.strip("|").split("|"))
        rows[edited.strip("`")] = set(re.findall(r"`(\w+)`", stages))
    return rows


def edit(project: Path, what: str) -> None:
    """Make the edit the table's row names: a comment line in a code or data file, a value in params.yaml."""
    if what == "params.yaml: plots":
        text = (project / "params.yaml").read_text()
        (project / "params.yaml").write_text(re.sub(r"(?m)^(  dpi: )\d+", r"\g<1>101", text, count=1))
        return
    path = project / what
    comment = "<!-- edited -->" if path.suffix == ".html" else "# edited"
    path.write_text(path.read_text() + f"\n{comment}\n")


@pytest.fixture(scope="module")
def locked(tmp_path_factory, project_copy):
    """A copy whose every stage's deps and outs exist (made up: only their hashes matter here), committed to
    dvc.lock by `dvc commit -f`, so `dvc status` starts clean."""
    from dvc.repo import Repo

    project = project_copy(tmp_path_factory.mktemp("reruns"), {})
    with Repo(str(project)) as repo:
        stages = list(repo.index.stages)
        paths = [Path(str(item.fs_path)) for stage in stages for item in (*stage.deps, *stage.outs)]
    for path in paths:
        if path.exists():
            continue
        if path.suffix:  # a file
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(f"{path.name}\n")
        else:  # a folder: one file in it
            path.mkdir(parents=True, exist_ok=True)
            (path / "made-up").write_text("made up\n")
    sh(project, "dvc", "commit", "-f", "-q")
    assert json.loads(sh(project, "dvc", "status", "--json").stdout) == {}
    return project


def changed_stages(project: Path) -> set[str]:
    return set(json.loads(sh(project, "dvc", "status", "--json").stdout))


def test_the_readme_table_is_what_dvc_reruns(locked):
    table = readme_table()
    assert {"stages/reading/drawing_page.html", "stages/reading/framing.py", "stages/core/augment.py",
            "stages/core/architectures.yaml", "stages/core/quiet.py", "stages/export.py",
            "params.yaml: plots"} <= set(table)
    found = {}
    for what in table:
        target = locked / ("params.yaml" if what.startswith("params.yaml") else what)
        original = target.read_bytes()
        edit(locked, what)
        found[what] = changed_stages(locked)
        target.write_bytes(original)
    assert found == table
    assert not found["stages/reading/drawing_page.html"] & {"train", "evaluate", "export", "register"}
