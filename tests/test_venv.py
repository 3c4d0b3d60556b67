"""Every stage and tool, run by a Python without the project's packages, says in one line how to get them."""

from __future__ import annotations

import ast
import subprocess
import sys

import pytest
from helpers.project import ROOT

from stages.core import venv

ENTRY_POINTS = sorted(path.stem for path in (ROOT / "stages").glob("*.py") if path.stem != "__init__")


@pytest.mark.parametrize("name", ENTRY_POINTS)
def test_the_check_is_the_first_import(name):
    body = ast.parse((ROOT / "stages" / f"{name}.py").read_text()).body
    imports = [node for node in body if isinstance(node, ast.Import | ast.ImportFrom)]
    first = imports[1] if isinstance(imports[0], ast.ImportFrom) and imports[0].module == "__future__" else imports[0]
    assert isinstance(first, ast.Import) and [alias.name for alias in first.names] == ["stages.core.venv"], name


@pytest.mark.parametrize("name", ENTRY_POINTS)
def test_without_the_packages_one_line_names_the_environment(name):
    """`-S`: no site-packages at all, as a system Python without the project's packages (`env -i PATH=/usr/bin:/bin
    python3 -m stages.predict x.png` on a machine whose python3 has no NumPy)."""
    result = subprocess.run([sys.executable, "-S", "-m", f"stages.{name}", "x.png"], cwd=ROOT, capture_output=True,
                            text=True, timeout=60, env={"PATH": "/usr/bin:/bin"})
    assert result.returncode == 1 and result.stdout == "", result
    [line] = result.stderr.splitlines()
    assert line.startswith("error: ") and ". .venv/bin/activate" in line and "numpy" in line, line


def test_the_advice_follows_whether_the_environment_exists():
    assert "run `. .venv/bin/activate` first" in venv.advice(["numpy"], venv_exists=True)
    assert "`make run` sets them up in .venv" in venv.advice(["numpy"], venv_exists=False)
