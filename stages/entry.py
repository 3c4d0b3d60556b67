"""How every stage runs as a program: `python -m stages.<name>` calls `stage_main(run, ...)` from its `main()`.

`stage_main` loads params.yaml, runs the stage and turns what ended it into one line on stderr and an exit code:

  PipelineError   `error: <what is wrong, what to do>`   1
  Ctrl-C          `interrupted`                            130
  SIGTERM         `terminated`                             143
  any other bug   Python's traceback                       1

SIGTERM raises `Terminated` in the main thread for the whole stage, so `finally` blocks and context managers clean
up (tracking ends its MLflow run KILLED) as they do for Ctrl-C. What a stage does beyond that is an argument at its
call site, never guessed:

  skip_imports  modules made unimportable before the stage starts (see KERAS_UNUSED_IMPORTS)
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
from typing import Any

from stages.common import PipelineError, Terminated
from stages.params import load_params

# Keras imports these at start-up for helpers no stage uses (scikit-learn wrappers, image galleries): ~1 s a stage.
KERAS_UNUSED_IMPORTS = ("sklearn", "matplotlib")


def stage_main(
    run: Callable[[Any], Any],
    *,
    skip_imports: Iterable[str] = (),
    fast_exit: bool = False,
    params_path: str = "params.yaml",
) -> None:
    """Run `run(load_params(params_path))`; exit with the code above (0 on success when fast_exit)."""
    for name in skip_imports:
        sys.modules.setdefault(name, None)  # an ImportError on import, which Keras catches and skips
    try:
        with terminate_on_sigterm():
            run(load_params(params_path))
        code = 0
    except PipelineError as error:
        print(f"error: {error}", file=sys.stderr)
        code = 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        code = 130
    except Terminated:
        print("terminated", file=sys.stderr)
        code = 143
    if fast_exit:
        exit_without_teardown(code)
    if code:
        sys.exit(code)


@contextlib.contextmanager
def terminate_on_sigterm() -> Iterator[None]:
    """Within the block, SIGTERM raises Terminated in the main thread (Python's default would end the process
    without running `finally` blocks); the previous handler comes back afterwards."""
    if threading.current_thread() is not threading.main_thread():
        yield  # signal handlers can only be set from the main thread
        return

    def on_sigterm(signum, frame):
        raise Terminated(signum)

    previous = signal.signal(signal.SIGTERM, on_sigterm)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


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
