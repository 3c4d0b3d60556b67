"""The one slow rule (conftest.slow_because), checked against what the fixtures do rather than their names: a
fixture that starts a process that outlives its call (subprocess.Popen: a server, a page, a stage to kill) or a
browser is in the slow layer, by its own name or through a fixture it takes."""

from __future__ import annotations

import ast

from conftest import slow_because
from helpers.project import ROOT


def test_every_fixture_that_starts_a_process_or_a_browser_is_slow():
    starting, unmarked = [], []
    for path in sorted((ROOT / "tests").glob("**/*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if not (isinstance(node, ast.FunctionDef)
                    and any("fixture" in ast.unparse(decorator) for decorator in node.decorator_list)):
                continue
            code = ast.unparse(node)
            if "Popen(" in code or ".launch(" in code:
                starting.append(node.name)
                if not slow_because([node.name, *(argument.arg for argument in node.args.args)]):
                    unmarked.append(f"{path.relative_to(ROOT)}::{node.name}")
    assert {"page_server", "model_server", "browser"} <= set(starting), starting  # the scan still finds them
    assert not unmarked, f"fixtures that start a process or a browser but are not slow by the rule: {unmarked}"
