"""The console's quieting, in one place: the known harmless lines and progress bars of TensorFlow, LiteRT, the
converters and MLflow are dropped, and every other line they print still shows.

It changes no byte of any output (only what reaches the terminal), so no compute stage lists this module in its
dvc.yaml deps (tests/test_imports.py exempts it by name): editing a filter reruns nothing. It imports no other module
of the project, and neither mlflow nor TensorFlow until a block that needs them runs.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
import tempfile
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

# What TensorFlow's C++ side prints on every start on a CPU-only machine. Raising TF_CPP_MIN_LOG_LEVEL would also
# hide real errors (cuInit's line is logged at ERROR), so these exact lines are dropped and everything else kept.
TENSORFLOW_STARTUP_NOISE = re.compile("|".join([
    r"WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR",
    r"I\d{4} [\d:. ]+\d+ port\.cc:\d+\] oneDNN custom operations are on\. .*",
    r"I\d{4} [\d:. ]+\d+ cudart_stub\.cc:\d+\] Could not find cuda drivers on your machine, GPU will not be used\.",
    r"I\d{4} [\d:. ]+\d+ cpu_feature_guard\.cc:\d+\] This TensorFlow binary is optimized to use available CPU .*",
    r"To enable the following instructions: .* rebuild TensorFlow with the appropriate compiler flags\.",
]))
# cuInit failing is news where an NVIDIA device exists, and start-up noise where none does.
CUINIT_FAILURE = re.compile(r"E\d{4} [\d:. ]+\d+ cuda_\w+\.cc:\d+\] failed call to cuInit: .*")
# Logged at ERROR by the first model.predict on NumPy input under op determinism (TensorFlow 2.20's runtime is older
# than the graph Keras builds); harmless, and read as an error by everyone who sees it.
NODE_DEF_NOISE = re.compile(r"E\d{4} [\d:. ]+\d+ node_def_util\.cc:\d+\] NodeDef mentions attribute "
                            r"use_unbounded_threadpool which is not in the op definition: .*")
# What the LiteRT interpreter prints on every start on a CPU (its default delegate); anything else still shows.
LITERT_NOISE = "INFO: Created TensorFlow Lite XNNPACK delegate for CPU."
# absl INFO and WARNING lines, the LiteRT int8 converter's summary line, and ONNX Runtime's advice to pre-process
# before quantising (done: its calibration step gives the advice about its own augmented copy)
CONVERTER_CHATTER = re.compile(r"[IW]\d{4} [\d:. ]+\d+ [\w.]+:\d+\] .*|fully_quantize: |WARNING:root:Please consider ")


def has_nvidia_device() -> bool:
    return any(Path("/dev").glob("nvidia[0-9]*")) or Path("/proc/driver/nvidia").exists()


def startup_noise(line: str, gpu_present: bool) -> bool:
    return bool(TENSORFLOW_STARTUP_NOISE.fullmatch(line) or (not gpu_present and CUINIT_FAILURE.fullmatch(line)))


def tensorflow_noise(line: str, gpu_present: bool | None = None) -> bool:
    """The one quiet policy of every TensorFlow process: a known harmless line of TensorFlow's C++ side."""
    gpu_present = has_nvidia_device() if gpu_present is None else gpu_present
    return startup_noise(line, gpu_present) or bool(NODE_DEF_NOISE.fullmatch(line))


@contextlib.contextmanager
def tensorflow_quietly() -> Iterator[None]:
    """Run a block that may wake TensorFlow's C++ side (start-up, a first predict, a model save) without its known
    harmless lines; every other line it writes to stderr still shows."""
    gpu_present = has_nvidia_device()
    with stderr_without(lambda line: tensorflow_noise(line, gpu_present)):
        yield


@contextlib.contextmanager
def stderr_without(noise: Callable[[str], bool]) -> Iterator[None]:
    """Hold back what the block writes to stderr, then write every line of it for which `noise` is false.

    TensorFlow's C++ side writes to file descriptor 2 directly, so the descriptor itself points at a temporary
    file for the block (a file, not a pipe: a full pipe would block TensorFlow while it holds the GIL).
    """
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            kept = [line for line in captured.read().decode(errors="replace").splitlines(keepends=True)
                    if not noise(line.rstrip("\n"))]
            if kept:
                sys.stderr.write("".join(kept))
                sys.stderr.flush()


def start_tensorflow_quietly() -> None:
    """Import TensorFlow and find its devices (where it looks for a GPU) without its CPU-only start-up lines."""
    with tensorflow_quietly():
        import tensorflow as tf

        tf.config.list_physical_devices("GPU")
    drop_retracing_advice()


def drop_retracing_advice() -> None:
    """Keras traces a model once per new batch shape or exporter (calibration, the logged models' examples, each
    export format); TensorFlow then warns about "retracing" in a paragraph of advice meant for loops, not for a
    handful of one-off calls. Its other warnings still show. Installed once, however often it is called."""
    import logging

    logger = logging.getLogger("tensorflow")  # tf.get_logger()'s, without importing TensorFlow here
    if _not_retracing_advice not in logger.filters:
        logger.addFilter(_not_retracing_advice)


def _not_retracing_advice(record) -> bool:
    return "triggered tf.function retracing" not in record.getMessage()


NOISY_MLFLOW_LOGGERS = ("mlflow.store.db.utils", "mlflow.models.model", "mlflow.pyfunc")


class ModelLoggingChatter(logging.Filter):
    """MLflow's INFO lines while a model is logged and its CloudPickle advice (the image model is a class of this
    project, pickled on purpose, with its code shipped beside it); its real warnings pass."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING and "serialized using CloudPickle" not in record.getMessage()


@contextlib.contextmanager
def quietly_logging_models() -> Iterator[None]:
    """Keep MLflow's and Keras' chatter while a model is logged out of the stage's output, and only that: progress
    bars, INFO lines, the integer-schema hint (the image model answers class ids: integers on purpose) and the
    harmless lines of TensorFlow's C++ side (stages/core/entry.py). Real warnings and errors still show."""
    import keras

    chatter = ModelLoggingChatter()
    loggers = [logging.getLogger(name) for name in NOISY_MLFLOW_LOGGERS]
    for logger in loggers:
        logger.addFilter(chatter)
    interactive = keras.config.is_interactive_logging_enabled()
    keras.config.disable_interactive_logging()  # no predict progress bar with ANSI codes in a log file
    try:
        with warnings.catch_warnings(), tensorflow_quietly(), no_progress_bars():
            warnings.filterwarnings("ignore", message="Hint: Inferred schema contains integer column",
                                    category=UserWarning)
            yield
    finally:
        if interactive:
            keras.config.enable_interactive_logging()
        for logger in loggers:
            logger.removeFilter(chatter)


@contextlib.contextmanager
def no_progress_bars() -> Iterator[None]:
    """No MLflow progress bar within the block (MLflow reads the variable at each transfer): a stage's log and
    predict's answers are not for them."""
    variable = "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"
    saved = os.environ.get(variable)
    os.environ[variable] = "false"
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop(variable, None)
        else:
            os.environ[variable] = saved
