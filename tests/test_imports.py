"""How the modules of `stages` import each other: one direction only, so the bottom layer knows nothing above it."""

from __future__ import annotations

import ast

import pytest
from conftest import ROOT

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
