"""How the modules of `stages` import each other: one direction only, so the bottom layer knows nothing above it;
each stage's deps in dvc.yaml cover the code it runs; and the stages that need no TensorFlow run without it."""

from __future__ import annotations

import ast
import subprocess
import sys

import pytest
import yaml
from helpers.params import shrunk_params, write_params
from helpers.project import ROOT

PACKAGE = ROOT / "stages"


def imported_stage_modules(path) -> set[str]:
    """The `stages.*` modules a file imports anywhere (lazy imports in functions too), but not in its
    `if __name__ == "__main__":` block, which runs only when the file is the program rather than the module."""
    tree = ast.parse(path.read_text())
    main_blocks = [node for node in tree.body if isinstance(node, ast.If) and "__main__" in ast.unparse(node.test)]
    skipped = {id(inner) for block in main_blocks for inner in ast.walk(block)}
    found = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.ImportFrom) and node.module:
            if node.module == "stages":
                found.update(f"stages.{alias.name}" for alias in node.names)
            elif node.module.startswith("stages."):
                found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.startswith("stages."))
    return found


def import_graph() -> dict[str, set[str]]:
    return {f"stages.{path.stem}": imported_stage_modules(path) - {f"stages.{path.stem}"}
            for path in sorted(PACKAGE.glob("*.py")) if path.stem != "__init__"}


def test_no_module_imports_itself_back_through_others():
    graph = import_graph()
    done: set[str] = set()

    def visit(module: str, trail: list[str]) -> None:
        if module in trail:
            pytest.fail("import circle: " + " -> ".join([*trail[trail.index(module):], module]))
        if module in done:
            return
        for imported in sorted(graph.get(module, ())):
            visit(imported, [*trail, module])
        done.add(module)

    for module in graph:
        visit(module, [])


def test_common_is_the_bottom_layer_and_entry_sits_above_the_schema():
    graph = import_graph()
    assert graph["stages.common"] == set()
    assert graph["stages.entry"] == {"stages.common", "stages.params"}
    assert "stages.entry" not in graph["stages.tracking"] | graph["stages.params"]


def module_level_imports(module: str) -> set[str]:
    tree = ast.parse((ROOT / (module.replace(".", "/") + ".py")).read_text())
    found = set()
    for node in tree.body:
        if isinstance(node, ast.ImportFrom) and node.module == "stages":
            found.update(f"stages.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("stages."):
            found.add(node.module)
    return found


def test_each_stage_depends_on_the_code_it_runs():
    """A stage's deps in dvc.yaml name its module, everything it imports, and what those import at load time, so
    a code change reruns exactly the stages it touches."""
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    gaps = {}
    for name, stage in stages.items():
        module = stage["cmd"].split("-m", 1)[1].split()[0]
        path = ROOT / (module.replace(".", "/") + ".py")
        tree = ast.parse(path.read_text())
        needed = {module}
        for node in ast.walk(tree):  # the stage's own imports, its `__main__` block's included
            if isinstance(node, ast.ImportFrom) and node.module == "stages":
                needed.update(f"stages.{alias.name}" for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("stages."):
                needed.add(node.module)
        pending = list(needed)
        while pending:
            for imported in module_level_imports(pending.pop()) - needed:
                needed.add(imported)
                pending.append(imported)
        files = {f"{m.replace('.', '/')}.py" for m in needed}
        if files - set(stage["deps"]):
            gaps[name] = sorted(files - set(stage["deps"]))
    assert not gaps, f"stages run code that dvc.yaml does not list in their deps: {gaps}"


# Runs a module as `python -m` would, with TensorFlow and Keras unimportable: a lazy import inside run() counts too.
REFUSE_TENSORFLOW = """
import importlib.abc, runpy, sys

class RefuseTensorFlow(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in ("tensorflow", "keras"):
            print(f"imported {name}", file=sys.stderr, flush=True)
            raise ImportError(f"{name} is refused in this process")
        return None

sys.meta_path.insert(0, RefuseTensorFlow())
sys.argv = sys.argv[1:]
runpy.run_module(sys.argv[0], run_name="__main__", alter_sys=True)
"""


@pytest.fixture(scope="module")
def project_inputs(tmp_path_factory, raw_params, mnist_10k):
    """A folder with params.yaml and every input the TensorFlow-free stages read (evaluate's made up)."""
    from helpers.project import write_stage_inputs

    from stages import download, preprocess, source

    base = tmp_path_factory.mktemp("no-tensorflow")
    params = shrunk_params(raw_params, base, mnist_10k)
    write_params(base, params)
    source.run(params)
    download.run(params)
    preprocess.run(params)
    write_stage_inputs(params)
    return base


@pytest.mark.parametrize("command", [["stages.params"], ["stages.source"], ["stages.download"], ["stages.preprocess"],
                                     ["stages.plots"], ["stages.predict", "--help"]], ids=lambda c: " ".join(c))
def test_runs_without_tensorflow(project_inputs, command):
    result = subprocess.run([sys.executable, "-c", REFUSE_TENSORFLOW, *command], cwd=project_inputs,
                            capture_output=True, text=True, timeout=300, env={"PYTHONPATH": str(ROOT),
                                                                            "PATH": "/usr/bin:/bin"})
    assert "imported " not in result.stderr, result.stderr[-3000:]
    assert result.returncode == 0, result.stderr[-3000:]
