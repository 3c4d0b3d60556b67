"""How every stage and tool runs as a program: `python -m stages.<name>` calls `stage_main(run, ...)` (a DVC
stage) or `tool_main(run, ...)` (a command-line tool) from its `main()`.

Both load params.yaml, run and turn what ended the run into one line on stderr and an exit code:

  PipelineError         `error: <what is wrong, what to do>`                                    1
  Ctrl-C / SIGINT       `interrupted (SIGINT); ...`                                              130
  SIGTERM               `terminated (SIGTERM); ...`                                              143
  the parent is gone    `terminated: the process that started this stage (dvc, pid N) is gone`   143
  any other bug         Python's traceback                                                       1

A stage's stop line ends "rerun `dvc repro` to continue"; a tool's says only that nothing half-written was left.

One signal policy for every stage: SIGTERM raises `Terminated` and SIGINT `KeyboardInterrupt` in the main thread, so
`finally` blocks and context managers clean up (the atomic writer removes its temp file, tracking ends the MLflow
run KILLED); further signals are ignored until that cleanup is done. A stage also leaves when the process that
started it is gone (`dvc repro` killed): it would otherwise finish as an orphan and write outputs dvc.lock never
records. Before any work, every `paths.*` must lie inside the project (DVC tracks only outputs inside the repository).
What a stage does beyond that is an argument at its call site, never guessed:

  skip_imports  modules made unimportable before the stage starts (see KERAS_UNUSED_IMPORTS)
  quiet_tensorflow  import TensorFlow and find its devices first, dropping the lines it prints on every start of a
                CPU-only machine (see TENSORFLOW_STARTUP_NOISE); any other line it prints still shows
  fast_exit     end the process with `exit_without_teardown` instead of returning: for `main()` only, since it
                ends the calling process (tests call `run()` or start `python -m stages.<name>`)
"""

from __future__ import annotations

import atexit
import contextlib
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import psutil

from stages.core.errors import PipelineError, Terminated
from stages.core.files import project_root
from stages.core.quiet import start_tensorflow_quietly
from stages.core.schema import PARAMS_FILE, load_params

# Keras imports these at start-up for helpers no stage uses (scikit-learn wrappers, image galleries): ~1 s a stage.
KERAS_UNUSED_IMPORTS = ("sklearn", "matplotlib")



def stage_main(run: Callable[[Any], Any], **options) -> None:
    """Run the DVC stage `run(load_params())`; exit with the code above (0 on success when fast_exit)."""
    _main(run, after_stop=STAGE_STOPPED, **options)


def tool_main(run: Callable[[Any], Any], **options) -> None:
    """Run the command-line tool `run(load_params())`; exit with the code above (0 on success when fast_exit)."""
    _main(run, after_stop=TOOL_STOPPED, **options)


def _main(
    run: Callable[[Any], Any],
    *,
    after_stop: str,
    skip_imports: Iterable[str] = (),
    fast_exit: bool = False,
    quiet_tensorflow: bool = False,
    params_path: str = PARAMS_FILE,
) -> None:
    for name in skip_imports:
        sys.modules.setdefault(name, None)  # an ImportError on import, which Keras catches and skips
    policy = SignalPolicy()
    try:
        with policy.installed(), leave_when_parent_is_gone(policy):
            params = load_params_told(params_path)  # a bad params.yaml fails before TensorFlow's seconds of start-up
            check_paths_inside(params.paths.model_dump(), project_root())
            if quiet_tensorflow:
                start_tensorflow_quietly()
            run(params)
        code = 0
    except PipelineError as error:
        print(f"error: {error}", file=sys.stderr)
        code = 1
    except KeyboardInterrupt:
        print(f"interrupted (SIGINT); {after_stop}", file=sys.stderr)
        code = 130
    except Terminated:
        reason = policy.parent_gone
        print(f"terminated: the process that started this stage ({reason}) is gone; {after_stop}" if reason else
              f"terminated (SIGTERM); {after_stop}", file=sys.stderr)
        code = 143
    if fast_exit:
        exit_without_teardown(code)
    if code:
        sys.exit(code)


# `dvc exp run -S +key=value` writes the override into params.yaml before any stage runs, and leaves it there when a
# stage refuses it; restoring automatically would also drop the user's own uncommitted edits.
EXP_RUN_RESTORE = ("`dvc exp run` wrote its -S overrides into params.yaml and left them there: restore it with "
                   "`git checkout params.yaml` (this also drops uncommitted edits), then rerun with the key fixed")


def load_params_told(path: str):
    """load_params; inside `dvc exp run` (DVC sets DVC_EXP_NAME), a refusal also says how to restore params.yaml."""
    try:
        return load_params(path)
    except PipelineError as error:
        if os.environ.get("DVC_EXP_NAME"):
            raise PipelineError(f"{error}\n{EXP_RUN_RESTORE}") from None
        raise


TOOL_STOPPED = "nothing half-written was left"
STAGE_STOPPED = f"{TOOL_STOPPED}; rerun `dvc repro` to continue"


class SignalPolicy:
    """SIGTERM raises Terminated and SIGINT KeyboardInterrupt in the main thread, once: Python's default for SIGTERM
    would end the process without running `finally` blocks, and a second signal must not cut the cleanup short."""

    def __init__(self):
        self.parent_gone: str | None = None  # set by the parent watch before it sends SIGTERM

    def on_signal(self, signum, frame):
        for handled in (signal.SIGTERM, signal.SIGINT):
            signal.signal(handled, signal.SIG_IGN)
        if signum == signal.SIGINT:
            raise KeyboardInterrupt
        raise Terminated(signum)

    @contextlib.contextmanager
    def installed(self) -> Iterator[None]:
        """The policy within the block; the previous handlers come back afterwards."""
        if threading.current_thread() is not threading.main_thread():
            yield  # signal handlers can only be set from the main thread
            return
        previous = {signum: signal.getsignal(signum) for signum in (signal.SIGTERM, signal.SIGINT)}
        for signum, handler in previous.items():
            if handler is not signal.SIG_IGN:  # a SIGINT ignored by the caller (a background job) stays ignored
                signal.signal(signum, self.on_signal)
        try:
            yield
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)


# DVC runs a stage's command as `$SHELL -c "<cmd>"`: the process that started the stage is the one behind that shell.
SHELLS = frozenset({"sh", "bash", "dash", "zsh", "fish", "ksh"})
PARENT_POLL_SECONDS = 0.5


def starter() -> psutil.Process | None:
    """The process that started this one, looking through the `sh -c` DVC runs a command in; None for init."""
    parent = psutil.Process().parent()
    with contextlib.suppress(psutil.Error):
        if parent is not None and parent.name() in SHELLS and "-c" in parent.cmdline()[1:]:
            parent = parent.parent() or parent
    return parent if parent is not None and parent.pid != 1 else None


@contextlib.contextmanager
def leave_when_parent_is_gone(policy: SignalPolicy) -> Iterator[None]:
    """Within the block, SIGTERM this process once the dvc that started it has gone (killed `dvc repro`, closed
    queue worker): the signal policy then cleans up as for any SIGTERM. Polls, since Linux's parent-death signal
    would follow the `sh -c` in between and not dvc. Only under DVC (which sets DVC_STAGE): a stage started by
    hand keeps the shell's rules, so `nohup python -m stages.train &` survives a logout."""
    try:
        watched = starter() if os.environ.get("DVC_STAGE") else None
        description = f"{watched.name()}, pid {watched.pid}" if watched else ""
    except psutil.Error:
        watched = None
    if watched is None:
        yield
        return

    def gone() -> bool:
        try:
            return not watched.is_running() or watched.status() == psutil.STATUS_ZOMBIE
        except psutil.Error:
            return True

    stop = threading.Event()

    def watch() -> None:
        while not stop.wait(PARENT_POLL_SECONDS):
            if gone():
                policy.parent_gone = description
                os.kill(os.getpid(), signal.SIGTERM)
                return

    thread = threading.Thread(target=watch, name="parent-watch", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()


def check_paths_inside(paths: dict[str, str], root: Path) -> None:
    """Refuse `paths.*` outside the project before any work: DVC (>= 3.0) tracks only outputs inside the
    repository, so such a stage would run to the end, write there, and only then fail."""
    outside = [f"paths.{key}: {value}" for key, value in paths.items()
               if not Path(value).resolve().is_relative_to(root)]
    if outside:
        raise PipelineError(f"{'; '.join(outside)} {'is' if len(outside) == 1 else 'are'} outside the project "
                            f"({root}): DVC tracks only outputs inside the repository; use a path inside it")


def exit_without_teardown(code: int) -> None:
    """End the process as Python would (exit handlers run, streams flushed) but without unloading every module.

    Unloading TensorFlow, MLflow or matplotlib module by module costs 1-2 s a stage, and every output is already
    written atomically and closed. Returns, leaving the usual exit to Python, while another non-daemon thread runs
    (Python joins those first) or where CPython's exit-handler runner is missing.
    """
    run_exit_handlers = getattr(atexit, "_run_exitfuncs", None)
    current = threading.current_thread()
    if run_exit_handlers is None or any(
        thread is not current and not thread.daemon and thread.is_alive() for thread in threading.enumerate()
    ):
        return
    run_exit_handlers()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(code)


def dies_with_parent(command: list[str], signal_name: str) -> list[str]:
    """`command` started so that Linux sends it `signal_name` when the process that started it dies, SIGKILL
    included (util-linux's setpriv sets the parent-death signal, then execs it): no orphan outlives its starter."""
    return ["setpriv", "--pdeathsig", signal_name, *command]
