"""The first import of every stage and tool: in a Python without the project's packages (a shell where `.venv` is
not active), one line saying how to get them and exit 1, instead of a traceback from the first third-party import.

Standard library only, and it changes no output: dvc.yaml leaves it out of the stages' deps on purpose. Ruff keeps
it first (pyproject.toml: its own isort section, right after `from __future__`).
"""

import importlib.util
import sys
from pathlib import Path

# What every stage and tool imports before its own work: params.yaml's loader, the entry point, NumPy.
REQUIRED = ("yaml", "pydantic", "numpy", "psutil")
VENV = Path(__file__).resolve().parents[2] / ".venv"


def advice(missing: list, venv_exists: bool) -> str:
    what = f"this Python ({sys.executable}) lacks the project's packages ({', '.join(missing)})"
    if venv_exists:
        return f"error: {what}: run `. .venv/bin/activate` first (or `make run`)"
    return f"error: {what}: `make run` sets them up in .venv, then `. .venv/bin/activate`"


_missing = [name for name in REQUIRED if importlib.util.find_spec(name) is None]
if _missing:
    print(advice(_missing, VENV.is_dir()), file=sys.stderr)
    sys.exit(1)
