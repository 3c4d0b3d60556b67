"""stage_main run as a program: exit codes, one line per way of ending, and every exit handler survives the fast exit."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
from conftest import ROOT

STAGE = """
import atexit, os, signal, sys
from stages.common import PipelineError
from stages.entry import KERAS_UNUSED_IMPORTS, stage_main

atexit.register(print, "early exit handler ran")

def run(params):
    atexit.register(print, "exit handler ran")
    {body}

stage_main(run, params_path={params!r}, skip_imports={skip_imports}, fast_exit=True)
"""
HANDLERS = "exit handler ran\nearly exit handler ran\n"  # last registered runs first, as at any Python exit


def run_stage(tmp_path, body: str, skip_imports: str = "()") -> subprocess.CompletedProcess:
    params = ROOT / "params.yaml"
    script = textwrap.dedent(STAGE).format(body=body, params=str(params), skip_imports=skip_imports)
    return subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True,
                          timeout=300, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})


def test_success_flushes_buffered_output_and_runs_exit_handlers(tmp_path):
    result = run_stage(tmp_path, "print('x' * 200_000, end='')")
    assert result.returncode == 0, result.stderr
    assert result.stdout == "x" * 200_000 + HANDLERS


@pytest.mark.parametrize(("body", "code", "stderr"), [
    ("raise PipelineError('data.source: no such folder')", 1, "error: data.source: no such folder\n"),
    ("raise KeyboardInterrupt", 130, "interrupted\n"),
    ("os.kill(os.getpid(), signal.SIGTERM); signal.pause()", 143, "terminated\n"),
    ("sys.exit(3)", 3, ""),
    ("sys.exit()", 0, ""),
])
def test_exit_codes(tmp_path, body, code, stderr):
    result = run_stage(tmp_path, body)
    assert (result.returncode, result.stderr) == (code, stderr)
    assert result.stdout == HANDLERS


def test_unexpected_exception_prints_its_traceback_and_exits_1(tmp_path):
    result = run_stage(tmp_path, "raise ValueError('a bug')")
    assert result.returncode == 1
    assert "Traceback (most recent call last)" in result.stderr and result.stderr.endswith("ValueError: a bug\n")


def test_keras_stage_builds_a_model_without_the_imports_it_skips(tmp_path):
    body = ("from stages.architectures import build_model, resolve_spec; "
            "name, layers = resolve_spec(params.model.architecture, params.model.layers); "
            "model = build_model(layers, name); "
            "print(model.count_params(), sorted(n for n in ('sklearn', 'matplotlib') if sys.modules.get(n)))")
    result = run_stage(tmp_path, body, skip_imports="KERAS_UNUSED_IMPORTS")
    assert result.returncode == 0, result.stderr[-2000:]
    parameters, skipped = result.stdout.splitlines()[0].split(" ", 1)
    assert int(parameters) > 0 and skipped == "[]"


def test_a_running_non_daemon_thread_is_waited_for(tmp_path):
    body = ("import threading, time; "
            "threading.Thread(target=lambda: (time.sleep(0.5), print('thread done', flush=True))).start()")
    result = run_stage(tmp_path, body)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "thread done\n" + HANDLERS
