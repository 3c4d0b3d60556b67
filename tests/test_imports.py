"""The folder is the map (stages/__init__.py): what a user runs on top, `core/` beneath, `reading/` between. A
module imports only below its level (a stage never imports a stage; reading imports core; core imports core), with
no circle, lazy imports and `__main__` blocks included; each stage's dvc.yaml deps cover every module its code
imports; and the stages that need no TensorFlow run without it."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from helpers.params import shrunk_params, write_params
from helpers.project import REFUSE_TENSORFLOW, ROOT, write_stage_inputs

PACKAGE = ROOT / "stages"
TOOLS = {"predict", "compare", "search", "server"}
LEVELS = {"core": 0, "reading": 1}  # everything else in `stages` is a stage or tool: level 2
# Files a module reads beside its code: a change to them is a change to the module.
DATA_FILES = {"stages/core/architectures.py": ["stages/core/architectures.yaml"],
              "stages/reading/drawing_page.py": ["stages/reading/drawing_page.html"]}
# Code that changes no byte of any output, left out of every stage's deps on purpose (dvc.yaml says so): editing the
# console's quieting, the environment's check or MLflow's saved view must rerun nothing. They import no other module
# of the project.
NO_OUTPUT_CHANGES = {"stages/core/quiet.py", "stages/core/venv.py", "stages/core/tracking/views.py"}


def module_file(module: str):
    path = ROOT / module.replace(".", "/")
    for candidate in (path / "__init__.py", path.with_suffix(".py")):
        if candidate.is_file():
            return candidate
    return None


def modules() -> list[str]:
    return sorted(".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
                  for path in PACKAGE.rglob("*.py"))


def imports(module: str) -> set[str]:
    """Every `stages` module the file imports anywhere: at the top, inside functions, in its `__main__` block."""
    found = set()
    for node in ast.walk(ast.parse(module_file(module).read_text())):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("stages"):
            for alias in node.names:  # `from stages.core import tracking` imports the module stages.core.tracking
                name = f"{node.module}.{alias.name}"
                found.add(name if module_file(name) else node.module)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.startswith("stages"))
    return found - {module, "stages"}


def level(module: str) -> int:
    parts = module.split(".")
    return LEVELS.get(parts[1], 2) if len(parts) > 1 else 3


def test_the_top_level_is_exactly_the_stages_and_the_tools():
    stages = {stage["cmd"].split("-m", 1)[1].split()[0].removeprefix("stages.")
              for stage in yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"].values()}
    top = {path.stem for path in PACKAGE.glob("*.py")} - {"__init__"}
    assert top == stages | TOOLS
    assert {path.name for path in PACKAGE.iterdir() if path.is_dir()} - {"__pycache__"} == {"core", "reading",
                                                                                           "mnist_10k"}


def test_packages_hold_nothing_but_their_docstring():
    """So importing a package runs no code, and no dvc.yaml dep needs to list one."""
    for path in PACKAGE.rglob("__init__.py"):
        body = ast.parse(path.read_text()).body
        assert len(body) == 1 and isinstance(body[0], ast.Expr), f"{path} holds code"


def test_each_package_docstring_names_every_module_in_it():
    """The maps in the docstrings stay the tree's: a module added under core/ or reading/ is named there."""
    for package in (PACKAGE / "core", PACKAGE / "reading", PACKAGE / "core" / "tracking", PACKAGE / "core" / "search"):
        text = (package / "__init__.py").read_text()
        named = {path.stem for path in package.glob("*.py")} - {"__init__"}
        named |= {path.name + "/" for path in package.iterdir() if (path / "__init__.py").exists()}
        missing = sorted(name for name in named if not re.search(rf"(?<![\w.]){re.escape(name)}(?!\w)", text))
        assert not missing, f"{package.relative_to(ROOT)}/__init__.py does not name {missing}"
    core = {path.stem for path in (PACKAGE / "core").glob("*.py")} - {"__init__"}
    missing = sorted(name for name in core if not re.search(rf"\b{name}\b", (PACKAGE / "__init__.py").read_text()))
    assert not missing, f"stages/__init__.py's map of core/ does not name {missing}"


def test_imports_point_down_only_and_never_within_the_top_level():
    upward = [f"{module} -> {imported}" for module in modules() for imported in imports(module)
              if level(imported) > level(module) or (level(module) == 2 and level(imported) == 2)]
    assert not upward, "imports up or across the top level: " + "; ".join(upward)


def test_no_import_circle():
    graph = {module: imports(module) for module in modules()}
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


def test_no_import_hides_from_this_check():
    """Modules found by name at run time would escape the import graph above and the deps below."""
    for path in PACKAGE.rglob("*.py"):
        text = path.read_text()
        assert "import_module" not in text and "__import__" not in text, path


def code_files(module: str) -> set[str]:
    """The files of `module` and of everything it imports, transitively (package docstrings aside)."""
    needed, pending = {module}, [module]
    while pending:
        for imported in imports(pending.pop()) - needed:
            needed.add(imported)
            pending.append(imported)
    files = {module_file(m).relative_to(ROOT).as_posix() for m in needed}
    files = {f for f in files if not f.endswith("__init__.py")} - NO_OUTPUT_CHANGES
    return files | {data for f in files for data in DATA_FILES.get(f, [])}


def covered(file: str, deps: set[str]) -> bool:
    return any(file == dep or file.startswith(dep.rstrip("/") + "/") for dep in deps)


def test_each_stage_depends_on_exactly_the_code_it_runs():
    """A stage's deps in dvc.yaml name its module and everything it imports, lazily or not, and no other code, so a
    code change reruns exactly the stages it touches (editing download.py does not rerun source)."""
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    gaps, extra = {}, {}
    for name, stage in stages.items():
        module = stage["cmd"].split("-m", 1)[1].split()[0]
        needed = code_files(module)
        deps = {dep for dep in stage["deps"] if dep.startswith("stages/")}
        if missing := sorted(f for f in needed if not covered(f, deps)):
            gaps[name] = missing
        if unused := sorted(dep for dep in deps if not any(covered(f, {dep}) for f in needed)):
            extra[name] = unused
    assert not gaps, f"stages run code that dvc.yaml does not list in their deps: {gaps}"
    assert not extra, f"dvc.yaml lists code the stages never import: {extra}"


def test_the_image_model_ships_exactly_the_code_it_imports_and_register_depends_on_it():
    """The registered image model carries a copy of these modules: nothing it does not import, and editing any of
    them re-registers it (not retrains: train never imports reading/)."""
    from stages.reading.image_model import ImageClassifier

    shipped = {f"stages/{module}" for module in ImageClassifier.SHIPPED}
    assert shipped == code_files("stages.reading.image_model")
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    assert shipped <= set(stages["register"]["deps"])
    assert not [dep for dep in stages["train"]["deps"] if dep.startswith("stages/reading")]


def test_the_quiet_module_imports_nothing_of_the_project():
    """So leaving it out of the deps leaves nothing else out."""
    assert all(not imports(".".join(Path(f).with_suffix("").parts)) for f in NO_OUTPUT_CHANGES)


@pytest.fixture(scope="module")
def project_inputs(tmp_path_factory, raw_params, mnist_10k):
    """A folder with params.yaml and every input the TensorFlow-free stages read (evaluate's made up)."""

    from stages import download, preprocess, source

    base = tmp_path_factory.mktemp("no-tensorflow")
    params = shrunk_params(raw_params, base, mnist_10k)
    write_params(base, params)
    source.run(params)
    download.run(params)
    preprocess.run(params)
    write_stage_inputs(params)
    return base


@pytest.mark.parametrize("command", [["stages.params"], ["stages.source"], ["stages.download"], ["stages.collect"],
                                     ["stages.preprocess"],
                                     ["stages.plots"], ["stages.predict", "--help"]], ids=lambda c: " ".join(c))
def test_runs_without_tensorflow(project_inputs, command):
    result = subprocess.run([sys.executable, "-c", REFUSE_TENSORFLOW, *command], cwd=project_inputs,
                            capture_output=True, text=True, timeout=300, env={"PYTHONPATH": str(ROOT),
                                                                            "PATH": "/usr/bin:/bin"})
    assert "imported " not in result.stderr, result.stderr[-3000:]
    assert result.returncode == 0, result.stderr[-3000:]


# Over the limit for now, each until its issue splits it (none at present).
LONG_FOR_NOW: dict[str, str] = {}


def test_no_module_is_over_450_lines():
    long = {path.relative_to(ROOT).as_posix(): len(path.read_text().splitlines()) for path in PACKAGE.rglob("*.py")}
    over = {path: lines for path, lines in long.items() if lines > 450 and path not in LONG_FOR_NOW}
    assert not over, f"split these by job: {over}"
