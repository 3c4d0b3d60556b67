"""Every module of stages/ has tests, found by what the test modules import (or run, for a program started with
`python -m`), with the few covered through another module named below; and tests/helpers/__init__.py names every
helper. A module added without a test fails here."""

from __future__ import annotations

import ast
import re

from helpers.project import ROOT

# Covered through another module's tests, not by an import of their own (module: test file, and how).
INDIRECT = {
    "stages.core.mirrors": "test_source.py",  # the source stage probes the mirrors through it
    "stages.core.search.spec": "test_search.py",  # search.load_search and the study's fingerprint
    "stages.core.tracking.study": "test_search.py",  # the study's parent run in MLflow
    "stages.core.project_copy": "test_pipeline.py",  # tests/helpers/project.py's copies, DVC run in them
    "stages.reading.drawing_page": "test_drawing_page.py",  # the page `predict --serve` serves, in a browser
    "stages.reading.paper": "test_images.py",  # the paper's level and grain, through ink and numbers
}


def stages_modules() -> list[str]:
    return sorted(".".join(path.relative_to(ROOT).with_suffix("").parts) for path in (ROOT / "stages").rglob("*.py")
                  if path.name != "__init__.py")


def tested_by() -> dict[str, set[str]]:
    """Module -> the test files that import it or start it as `python -m` (a string naming it)."""
    found: dict[str, set[str]] = {}
    for test in sorted((ROOT / "tests").glob("test_*.py")):
        tree = ast.parse(test.read_text())
        for node in ast.walk(tree):
            names: list[str] = []
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("stages"):
                names = [node.module, *(f"{node.module}.{alias.name}" for alias in node.names)]
            elif isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.Constant) and isinstance(node.value, str):
                names = re.findall(r"\bstages(?:\.\w+)+", node.value)
            for name in names:
                found.setdefault(name, set()).add(test.name)
    for module, test in INDIRECT.items():
        found.setdefault(module, set()).add(test)
    return found


def test_every_stages_module_has_tests():
    covered = tested_by()
    untested = [module for module in stages_modules() if not covered.get(module)]
    assert not untested, f"modules no test imports or runs (add a test, or a line in INDIRECT): {untested}"


def test_the_indirect_map_names_real_modules_and_tests():
    for module, test in INDIRECT.items():
        assert module in stages_modules() and (ROOT / "tests" / test).is_file(), module


def test_the_helpers_package_names_every_helper():
    helpers = ROOT / "tests" / "helpers"
    text = (helpers / "__init__.py").read_text()
    missing = sorted(path.stem for path in helpers.glob("*.py")
                     if path.stem != "__init__" and not re.search(rf"^\s+{path.stem}\s", text, re.MULTILINE))
    assert not missing, f"tests/helpers/__init__.py does not name {missing}"


def test_benchmarks_never_import_tests():
    """The benchmark runs without the test tree. Tests may import the benchmark: its own code's tests, and the reader's
    tests render their photos with the benchmark's forms (benchmarks/photo_forms.py), so both measure the same
    thing; what a stage needs never lives in either (a project copy: stages/core/project_copy.py)."""
    crossings = []
    for path in (ROOT / "benchmarks").rglob("*.py"):
        text = path.read_text()
        if re.search(r"^\s*(from|import) (tests|helpers)\b", text, re.MULTILINE) or '"tests"' in text:
            crossings.append(path.relative_to(ROOT).as_posix())
    assert not crossings, f"benchmarks/ imports tests/ in {crossings}"
