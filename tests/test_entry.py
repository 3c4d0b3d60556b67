"""stage_main and tool_main run as a program: exit codes, one line per way of ending, and every exit handler survives
the fast exit."""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap

import psutil
import pytest
from helpers.params import write_params
from helpers.project import ROOT

from stages.core.entry import STAGE_STOPPED, TOOL_STOPPED
from stages.core.schema import read_yaml, set_dotted

STAGE = """
import atexit, os, signal, sys
from stages.core.errors import PipelineError
from stages.core.entry import KERAS_UNUSED_IMPORTS, stage_main

atexit.register(print, "early exit handler ran")

def run(params):
    atexit.register(print, "exit handler ran")
    {body}

stage_main(run, params_path={params!r}, skip_imports={skip_imports}, fast_exit=True)
"""
HANDLERS = "exit handler ran\nearly exit handler ran\n"  # last registered runs first, as at any Python exit


def run_stage(tmp_path, body: str, skip_imports: str = "()", params_edit: dict | None = None,
              main: str = "stage_main") -> subprocess.CompletedProcess:
    params = ROOT / "params.yaml"
    if params_edit:
        raw = read_yaml(params)
        for key, value in params_edit.items():
            set_dotted(raw, key, value)
        params = write_params(tmp_path, raw)
    script = textwrap.dedent(STAGE).format(body=body, params=str(params), skip_imports=skip_imports)
    script = script.replace("stage_main", main)
    return subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True,
                          timeout=300, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})


def test_success_flushes_buffered_output_and_runs_exit_handlers(tmp_path):
    result = run_stage(tmp_path, "print('x' * 200_000, end='')")
    assert result.returncode == 0, result.stderr
    assert result.stdout == "x" * 200_000 + HANDLERS


@pytest.mark.parametrize(("body", "code", "stderr"), [
    ("raise PipelineError('data.source: no such folder')", 1, "error: data.source: no such folder\n"),
    ("os.kill(os.getpid(), signal.SIGINT); signal.pause()", 130, f"interrupted (SIGINT); {STAGE_STOPPED}\n"),
    ("os.kill(os.getpid(), signal.SIGTERM); signal.pause()", 143, f"terminated (SIGTERM); {STAGE_STOPPED}\n"),
    # A second signal while the first one's cleanup runs is ignored: the cleanup finishes.
    ("try:\n        os.kill(os.getpid(), signal.SIGTERM); signal.pause()\n    finally:\n"
     "        os.kill(os.getpid(), signal.SIGTERM); os.kill(os.getpid(), signal.SIGINT); print('cleaned up')",
     143, f"terminated (SIGTERM); {STAGE_STOPPED}\n"),
    ("sys.exit(3)", 3, ""),
    ("sys.exit()", 0, ""),
])
def test_exit_codes(tmp_path, body, code, stderr):
    result = run_stage(tmp_path, body)
    assert (result.returncode, result.stderr) == (code, stderr)
    assert result.stdout.removeprefix("cleaned up\n") == HANDLERS


@pytest.mark.parametrize(("signum", "code", "name"), [("SIGINT", 130, "interrupted"), ("SIGTERM", 143, "terminated")])
def test_a_tool_stops_in_a_tools_words(tmp_path, signum, code, name):
    """compare or a search worker stopped by Ctrl-C: no advice to rerun `dvc repro`, which is not what was running."""
    result = run_stage(tmp_path, f"os.kill(os.getpid(), signal.{signum}); signal.pause()", main="tool_main")
    assert (result.returncode, result.stderr) == (code, f"{name} ({signum}); {TOOL_STOPPED}\n")
    assert "dvc repro" not in result.stderr


def test_a_stage_leaves_when_the_process_that_started_it_is_gone(tmp_path):
    """As when `dvc repro` is killed: the stage cleans up and exits instead of finishing as an orphan (under DVC,
    which sets DVC_STAGE; a stage started by hand keeps the shell's rules)."""
    stage = textwrap.dedent(STAGE).format(body="print('started', flush=True); signal.pause()",
                                          params=str(ROOT / "params.yaml"), skip_imports="()")
    # A stand-in for dvc: it starts the stage through `sh -c` as DVC does (a shell that stays, not one that execs),
    # then dies without a word to it.
    starter = (f"import subprocess, sys, time; subprocess.Popen(['sh', '-c', '\"$0\" -c \"$1\"; exit $?', "
               f"sys.executable, {stage!r}]); time.sleep(600)")
    process = subprocess.Popen([sys.executable, "-c", starter], cwd=tmp_path, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True,
                               env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", "DVC_STAGE": "train"})
    try:
        assert process.stdout.readline() == "started\n"
        [stage_process] = [child for child in psutil.Process(process.pid).children(recursive=True)
                           if child.cmdline()[:2] == [sys.executable, "-c"]]
        process.kill()
        process.wait()
        stage_process.wait(timeout=30)
        # The pipes close once the stage, which holds them too, has exited.
        assert process.stdout.read() == HANDLERS
        assert re.fullmatch(rf"terminated: the process that started this stage \(python3?[\d.]*, pid {process.pid}\) "
                            rf"is gone; {re.escape(STAGE_STOPPED)}\n", process.stderr.read())
    finally:
        for child in psutil.Process().children(recursive=True):
            child.kill()


def test_paths_outside_the_project_are_refused_before_the_stage_runs(tmp_path):
    result = run_stage(tmp_path, "print('the stage ran')", params_edit={"paths.model": "../outside/model.keras"})
    assert result.returncode == 1
    assert result.stderr == (f"error: paths.model: ../outside/model.keras is outside the project ({tmp_path.resolve()})"
                             ": DVC tracks only outputs inside the repository; use a path inside it\n")
    assert "the stage ran" not in result.stdout


def test_unexpected_exception_prints_its_traceback_and_exits_1(tmp_path):
    result = run_stage(tmp_path, "raise ValueError('a bug')")
    assert result.returncode == 1
    assert "Traceback (most recent call last)" in result.stderr and result.stderr.endswith("ValueError: a bug\n")


def test_keras_stage_builds_a_model_without_the_imports_it_skips(tmp_path):
    body = ("from stages.core.architectures import build_model, resolve_spec; "
            "architecture = resolve_spec(params.model.architecture, params.model.layers); "
            "model = build_model(architecture.layers, architecture.name); "
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


# The lines TensorFlow 2.21 printed on this CPU-only machine, each start (timestamps and thread ids vary).
TENSORFLOW_NOISE = [
    "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR",
    "I0000 00:00:1795816565.450220   15855 port.cc:153] oneDNN custom operations are on. You may see slightly "
    "different numerical results due to floating-point round-off errors from different computation orders. To turn "
    "them off, set the environment variable `TF_ENABLE_ONEDNN_OPTS=0`.",
    "I0000 00:00:1795816565.450707   15855 cudart_stub.cc:31] Could not find cuda drivers on your machine, GPU will "
    "not be used.",
    "I0000 00:00:1795816565.779473   15855 cpu_feature_guard.cc:227] This TensorFlow binary is optimized to use "
    "available CPU instructions in performance-critical operations.",
    "To enable the following instructions: AVX2 AVX512F FMA, in other operations, rebuild TensorFlow with the "
    "appropriate compiler flags.",
]
CUINIT = ("E0000 00:00:1795816584.410293   15855 cuda_platform.cc:52] failed call to cuInit: INTERNAL: CUDA error: "
          "Failed call to cuInit: UNKNOWN ERROR (303)")
REAL_ERROR = "E0000 00:00:1795817015.048704   23083 node_def_util.cc:682] something real went wrong"


def test_tensorflow_startup_noise_is_exactly_the_known_lines():
    from stages.core.quiet import startup_noise

    assert all(startup_noise(line, gpu_present=False) for line in [*TENSORFLOW_NOISE, CUINIT])
    assert not startup_noise(CUINIT, gpu_present=True)  # where a GPU exists, a failing cuInit is news
    for line in (REAL_ERROR, "Traceback (most recent call last):", "warning: no official mnist mirror",
                 "E0000 00:00:1.0 1 cuda_platform.cc:52] failed to load libcuda"):
        assert not startup_noise(line, gpu_present=False), line


# The first model.predict on NumPy under op determinism (TensorFlow 2.20's runtime, Keras' graph), shortened here.
NODE_DEF = ("E0000 00:00:1796286399.651667   12741 node_def_util.cc:682] NodeDef mentions attribute "
            "use_unbounded_threadpool which is not in the op definition: Op<name=MapDataset; signature=...> This may "
            "be expected if your graph generating binary is newer  than this binary. Unknown attributes will be "
            "ignored. NodeDef: {{node ParallelMapDatasetV2/_14}}")


def test_one_quiet_policy_drops_the_known_lines_of_any_moment_and_keeps_real_errors():
    from stages.core.quiet import tensorflow_noise

    assert all(tensorflow_noise(line, gpu_present=False) for line in [*TENSORFLOW_NOISE, CUINIT, NODE_DEF])
    assert tensorflow_noise(NODE_DEF, gpu_present=True) and not tensorflow_noise(CUINIT, gpu_present=True)
    assert not tensorflow_noise(REAL_ERROR, gpu_present=False)  # the same source file, another message


def test_held_back_stderr_keeps_everything_but_the_noise_even_from_c_code(tmp_path):
    """What the C++ side writes to file descriptor 2 is filtered too; every other line comes through, in order."""
    lines = [*TENSORFLOW_NOISE[:2], REAL_ERROR, CUINIT, "a Python warning"]
    script = textwrap.dedent(f"""
        import os, sys
        from stages.core.quiet import startup_noise, stderr_without
        with stderr_without(lambda line: startup_noise(line, gpu_present=False)):
            for line in {lines[:4]!r}:
                os.write(2, (line + "\\n").encode())  # as TensorFlow's logger does, under Python's feet
            print({lines[4]!r}, file=sys.stderr)
        print("after", file=sys.stderr)
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60,
                            env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert result.returncode == 0
    assert result.stderr.splitlines() == [REAL_ERROR, "a Python warning", "after"]


def test_tensorflows_retracing_advice_is_dropped_and_its_other_warnings_kept(tmp_path):
    script = textwrap.dedent("""
        from stages.core.quiet import start_tensorflow_quietly
        start_tensorflow_quietly()
        import tensorflow as tf
        for size in range(1, 9):  # a new shape each call: retracing, as a few one-off predicts do
            tf.function(lambda x: x * 2)(tf.zeros([size]))
            step = tf.function(lambda x: x + 1)
            step(tf.zeros([size]))
        tf.get_logger().warning("another tensorflow warning")
    """)
    result = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True,
                            timeout=300, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert result.returncode == 0, result.stderr[-2000:]
    assert "another tensorflow warning" in result.stderr
    assert "retracing" not in result.stderr, result.stderr[-2000:]
