"""A throwaway git copy of this project with params overridden: the sandbox of the end-to-end tests and of the
benchmark (here, so that tests/ and benchmarks/ never import each other). No stage imports it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from stages.core.files import CODE_ROOT as ROOT
from stages.core.schema import set_dotted


def project_env(pythonpath: list[Path], **extra: str) -> dict[str, str]:
    """The environment of a process run on a copy: the venv first on PATH, no inherited MLflow or DVC settings, and
    no outer make's (under `make test`, MAKELEVEL would turn a copy's `make run` into a sub-make that prints
    "Entering directory" first)."""
    inherited = ("MLFLOW_", "DVC_", "MAKEFLAGS", "MAKELEVEL", "MAKEOVERRIDES", "MFLAGS")
    env = {key: value for key, value in os.environ.items() if not key.startswith(inherited)}
    env.update({
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
        "PYTHONPATH": os.pathsep.join(str(path) for path in pythonpath),
        "PYTHONUNBUFFERED": "1",
        "TF_CPP_MIN_LOG_LEVEL": "2",
        "GIT_AUTHOR_NAME": "mnist-pipeline", "GIT_AUTHOR_EMAIL": "mnist-pipeline@example.com",
        "GIT_COMMITTER_NAME": "mnist-pipeline", "GIT_COMMITTER_EMAIL": "mnist-pipeline@example.com",
    })
    env.update(extra)
    return env


def paths_under(raw_params: dict, base: Path) -> dict[str, str]:
    """Dotted overrides that move every `paths.*` of params.yaml under `base`, keeping the layout below it."""
    return {f"paths.{key}": str(base / value) for key, value in raw_params["paths"].items()}


def set_params(project: Path, overrides: dict[str, Any]) -> None:
    """Edit params.yaml in place with ruamel's round trip, keeping its comments."""
    from ruamel.yaml import YAML

    yaml_rt = YAML()
    params = yaml_rt.load((project / "params.yaml").read_text())
    for key, value in overrides.items():
        set_dotted(params, key, value)
    with open(project / "params.yaml", "w") as handle:
        yaml_rt.dump(params, handle)


def copy_project(destination: Path, overrides: dict[str, Any]) -> Path:
    """A fresh git repository with the project's tracked files (as in the working tree) and params overridden."""
    tracked = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, text=True, check=True)
    for name in filter(None, tracked.stdout.split("\0")):
        source = ROOT / name
        if source.is_file():
            (destination / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, destination / name)
    set_params(destination, overrides)
    env = project_env([destination])
    for command in (["git", "init", "-q"], ["git", "add", "-A"], ["git", "commit", "-qm", "baseline"]):
        subprocess.run(command, cwd=destination, env=env, check=True, capture_output=True)
    return destination


def sh(project: Path, *command: str, env: dict | None = None, check: bool = True, timeout: float = 900,
       **variables: str) -> subprocess.CompletedProcess:
    """Run a command in a copy (environment: `env`, or the copy's own plus `variables`); unless `check` is off, a
    failure raises with the command's output."""
    result = subprocess.run(command, cwd=project, env=env or project_env([project], **variables), capture_output=True,
                            text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(map(str, command))} failed ({result.returncode}):\n{result.stdout[-3000:]}\n"
                             f"{result.stderr[-3000:]}")
    return result
