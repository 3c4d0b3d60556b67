"""stages/core/records.py: each file one stage hands to another has one reader and one writer, in that module only,
and a missing or malformed one is one line naming the file and the stage that writes it."""

from __future__ import annotations

import ast
import json
import re

import numpy as np
import pytest
from helpers.project import ROOT

from stages.core import records
from stages.core.errors import PipelineError

# The handed files by name, and the paths.* keys that locate them: found in stages/core/records.py only.
HANDED_NAMES = ("registered.json", "run.json", "dataset.json", "source.json", "manifest.json", "metrics.json",
                "history.csv", "export.json", "train.npz", "val.npz", "test.npz", "own_test.npz")
HANDED_KEYS = ("run", "processed", "source", "raw", "metrics", "history", "export", "export_dir", "registered",
               "per_class", "confusion", "model_card")
HOME = "stages/core/records.py"
# Not handed: train's own copy of its history rows in its resume folder (paths.resume), which only train reads.
PRIVATE = {"stages/core/callbacks.py": {"history.csv"}}


def docstrings(tree: ast.AST) -> set[int]:
    """ids of the string constants that are docstrings (a module's, a class's, a function's)."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                found.add(id(first.value))
    return found


def mentions(tree: ast.AST) -> set[str]:
    """The handed files' names in string constants (f-strings' `{split}.npz` too) and `paths.<key>` accesses."""
    skip = docstrings(tree)
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in skip:
            found |= {name for name in HANDED_NAMES if re.search(rf"(?<![\w.]){re.escape(name)}", node.value)}
            if node.value.startswith(".npz"):
                found.add("{split}.npz")
        elif isinstance(node, ast.Attribute) and node.attr in HANDED_KEYS:
            owner = node.value
            if (isinstance(owner, ast.Name) and owner.id == "paths") or (
                    isinstance(owner, ast.Attribute) and owner.attr == "paths"):
                found.add(f"paths.{node.attr}")
    return found


def test_each_handed_file_is_named_in_one_module_only():
    """Its name (a literal) or its paths.* key, outside docstrings and comments."""
    strays = {}
    for path in sorted((ROOT / "stages").rglob("*.py")):
        where = path.relative_to(ROOT).as_posix()
        if where != HOME and (found := mentions(ast.parse(path.read_text())) - PRIVATE.get(where, set())):
            strays[where] = sorted(found)
    assert not strays, f"handed files read or written outside {HOME}: {strays}"
    assert {"paths.run", "paths.processed", "paths.metrics", "dataset.json"} <= mentions(
        ast.parse((ROOT / HOME).read_text()))


def test_the_check_finds_a_stray_reader():
    tree = ast.parse('"""doc: run.json"""\nimport json\ndef f(params):\n    return open(params.paths.run)\n'
                     'g = "data/dataset.json"\n')
    assert mentions(tree) == {"paths.run", "dataset.json"}


class Paths:
    def __init__(self, folder):
        self.source, self.run, self.metrics = folder / "source.json", folder / "run.json", folder / "metrics.json"
        self.history, self.export, self.processed, self.raw = (folder / "history.csv", folder / "export.json",
                                                               folder / "processed", folder / "raw")
        self.per_class, self.confusion = folder / "per_class.csv", folder / "confusion.csv"


@pytest.mark.parametrize(("reader", "file", "writer"), [
    (records.read_source, "source", "source"), (records.read_run, "run", "train"),
    (records.read_metrics, "metrics", "evaluate"), (records.read_history, "history", "train"),
    (records.read_export, "export", "export"), (records.read_dataset_info, "processed", "preprocess"),
    (records.read_per_class, "per_class", "evaluate"), (lambda paths: records.read_confusion(paths, ["0", "1"]),
                                                       "confusion", "evaluate"),
])
def test_a_missing_or_malformed_file_is_one_line_naming_it_and_its_stage(tmp_path, reader, file, writer):
    paths = Paths(tmp_path)
    with pytest.raises(PipelineError) as missing:
        reader(paths)
    assert f"run the {writer} stage first (`dvc repro {writer}`)" in str(missing.value)
    target = getattr(paths, file)
    target = target / "dataset.json" if file == "processed" else target
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text("[1, 2" if file != "history" else "")
    with pytest.raises(PipelineError) as damaged:
        reader(paths)
    message = str(damaged.value)
    assert "\n" not in message and str(target) in message and message.endswith(f"rerun `dvc repro {writer}`")


def test_run_json_reads_back_with_the_one_set_of_defaults(tmp_path):
    paths = Paths(tmp_path)
    assert records.read_run(paths, missing_ok=True) is None
    records.write_run(paths, {"architecture": "lenet", "temperature": 0.5, "run_id": "abc", "epochs_run": 3})
    run = records.read_run(paths)
    assert (run.architecture, run.temperature, run.run_id, run.model_id, run.fields["epochs_run"]) == (
        "lenet", 0.5, "abc", None, 3)
    assert json.loads(paths.run.read_text())["epochs_run"] == 3


def test_a_split_of_the_wrong_shape_is_refused(tmp_path):
    paths = Paths(tmp_path)
    records.write_split(paths, "test", x=np.zeros((3, 28, 28), np.float32), labels=np.zeros(3, np.uint8))
    with pytest.raises(PipelineError, match=r"test.npz: expected N x 28 x 28 x 1 images .* x \(3, 28, 28\)"):
        records.read_split(paths, "test")
    records.write_split(paths, "test", x=np.zeros((3, 28, 28, 3), np.float32), labels=np.zeros(3, np.uint8))
    with pytest.raises(PipelineError, match=r"x \(3, 28, 28, 3\)"):  # colour images: right rank, wrong shape
        records.read_split(paths, "test")
    records.write_split(paths, "test", x=np.zeros((3, 28, 28, 1), np.float32), labels=np.zeros(2, np.uint8))
    with pytest.raises(PipelineError, match=r"labels \(2,\)"):  # three images, two labels
        records.read_split(paths, "test")
    records.write_split(paths, "test", x=np.zeros((3, 28, 28, 1), np.float32), labels=np.zeros(3, np.uint8))
    assert len(records.read_split(paths, "test")["labels"]) == 3
    with pytest.raises(PipelineError, match="holds 3 images but dataset.json beside it says 4"):
        records.read_split(paths, "test", info={"splits": {"test": {"images": 4}}})
