"""The Keras callbacks of a training, and the resume state they keep in its resume folder.

Imports Keras at load time: import it from inside a stage's `run()`, after TensorFlow has started quietly.
"""

from __future__ import annotations

import os
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import keras
import numpy as np
import pandas as pd

from stages.core.files import atomic_path, write_csv
from stages.core.schema import Params, minimised

BEST_WEIGHTS = "best.weights.npz"  # in the resume folder: the best epoch's weights (np.savez order)
HISTORY_FILE = "history.csv"  # in the resume folder: the finished epochs' rows
STATE_FILE = "state.npz"  # in the resume folder: the last finished epoch's variables (ResumeState)
PREVIOUS_STATE = "state.prev.npz"  # the epoch before it: the fall-back when the newest cannot be read
HISTORY_COLUMNS = ["epoch", "loss", "accuracy", "val_loss", "val_accuracy", "learning_rate", "seconds"]


class EpochLog(keras.callbacks.Callback):
    """Appends each finished epoch (with its learning rate and duration) to the resumable history file, and prints
    it as one line of fixed format (Keras' own line mixes number formats and prints `seconds` like a metric)."""

    def __init__(self, path: Path, history: pd.DataFrame, epochs: int):
        super().__init__()
        self.path, self.rows, self.epochs = path, history.to_dict("records"), epochs

    def on_epoch_begin(self, epoch, logs=None):
        self.started = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        logs = logs if logs is not None else {}
        row = {"epoch": epoch + 1, **{k: float(logs[k]) for k in HISTORY_COLUMNS[1:5] if k in logs}}
        row["learning_rate"] = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))
        row["seconds"] = time.perf_counter() - self.started
        self.rows.append(row)
        write_csv(self.path, pd.DataFrame(self.rows, columns=HISTORY_COLUMNS))
        logs["learning_rate"], logs["seconds"] = row["learning_rate"], row["seconds"]
        print(epoch_line(row, self.epochs), flush=True)


def epoch_line(row: dict, epochs: int) -> str:
    """`epoch  3/20  loss 0.6731  accuracy 0.9312  val_loss 0.6502  val_accuracy 0.9425  lr 1.81e-03  13.4 s`"""
    width = len(str(epochs))
    scores = "  ".join(f"{key} {row[key]:.4f}" for key in HISTORY_COLUMNS[1:5] if key in row)
    return f"epoch {row['epoch']:>{width}}/{epochs}  {scores}  lr {row['learning_rate']:.2e}  {row['seconds']:.1f} s"


class StopAtAccuracy(keras.callbacks.Callback):
    """The course's callback: stop once the monitored accuracy reaches the target."""

    def __init__(self, monitor: str, target: float):
        super().__init__()
        self.monitor, self.target = monitor, target

    def on_epoch_end(self, epoch, logs=None):
        if (logs or {}).get(self.monitor, 0.0) >= self.target:
            print(f"{self.monitor} reached {self.target}: stopping after epoch {epoch + 1}")
            self.model.stop_training = True


class EpochSeeds(keras.callbacks.Callback):
    """Reseeds dropout and augmentation from (seed, epoch, layer) at each epoch's start.

    Keyed by the epoch, each epoch draws the same whatever ran before it in this process, so a resume from any
    saved state (the newest or the one before) replays what the uninterrupted training drew.
    """

    def __init__(self, seed: int):
        super().__init__()
        self.seed = seed

    def on_epoch_begin(self, epoch, logs=None):
        # Keras: `variables` are the weights plus the random seeds' states (metrics live elsewhere).
        weights = {id(variable) for variable in self.model.weights}
        states = [variable for variable in self.model.variables if id(variable) not in weights]
        for index, state in enumerate(states):
            start = np.random.SeedSequence((self.seed, epoch, index)).generate_state(1)[0]
            state.assign(np.array([start, 0], dtype=state.dtype))


class BestCheckpoint(keras.callbacks.Callback):
    """Keeps the best epoch's weights by `monitor`, written atomically: ModelCheckpoint writes in place, and a
    kill or a full disk during the write would leave a broken file that a resumed run then loads.

    Only the weights, as one .npz: the fit ends by loading them into the model it has. Keras's own writers walk
    every object of the model and optimizer, about a second per write on 2 cores, a tenth of a small model's
    epoch; this write takes a few milliseconds.
    """

    def __init__(self, path: Path, monitor: str, best: float | None):
        super().__init__()
        self.path, self.monitor, self.lower_is_better = path, monitor, minimised(monitor)
        self.best = best if best is not None else (np.inf if self.lower_is_better else -np.inf)

    def on_epoch_end(self, epoch, logs=None):
        value = (logs or {}).get(self.monitor)
        if value is None or not (value < self.best if self.lower_is_better else value > self.best):
            return  # NaN never improves
        with atomic_path(self.path) as tmp:
            np.savez(tmp, *self.model.get_weights())
        self.best = float(value)


class LiveMetrics(keras.callbacks.Callback):
    """Hands each finished epoch to the tracking run, so curves grow live in `mlflow ui`.

    When the run's server has gone away, training stops after this epoch's backup (the backup callback runs after
    this one) and the run says so when training ends; the resumed training logs what was missed. A loss the run's
    heartbeat finds mid-epoch ends the training at the next batch (the state keeps the finished epochs).
    """

    def __init__(self, run):
        super().__init__()
        self.run = run

    def on_epoch_end(self, epoch, logs=None):
        if not self.run.log_epoch(epoch, logs or {}):
            self.model.stop_training = True

    def on_train_end(self, logs=None):
        self.run.raise_if_lost()

    # Batch begin, not end: Keras dispatches batch-end hooks in a thread only while no callback has one.
    def on_train_batch_begin(self, batch, logs=None):
        self.run.check_heartbeat()

    def on_test_batch_begin(self, batch, logs=None):
        self.run.check_heartbeat()


def load_best_weights(model, resume_dir: Path) -> None:
    """Load the best epoch's weights BestCheckpoint kept, if it kept any."""
    best = resume_dir / BEST_WEIGHTS
    if best.exists():
        with np.load(best) as weights:
            model.set_weights([weights[f"arr_{index}"] for index in range(len(weights.files))])


class ResumeState(keras.callbacks.Callback):
    """After each epoch, everything a resume needs in one file, `state.npz`: the model's variables (weights and the
    random seeds' states), the optimizer's (its step and moments) and the epoch.

    Not Keras' BackupAndRestore: it rewrites its .h5 file in place through h5py, so a kill or a full disk mid-write
    leaves a file that later resumes fail on (or load with the optimizer reset), and h5py crashes the interpreter
    at exit (segmentation fault) after a failed write. Here plain NumPy writes a temp file beside the state,
    fsyncs it and renames it over the state (atomic_path: a full disk is one line), after moving the current state
    to `state.prev.npz`: a kill at any moment leaves the newest or the previous epoch's state whole.
    """

    def __init__(self, folder: Path):
        super().__init__()
        self.path, self.previous = folder / STATE_FILE, folder / PREVIOUS_STATE

    def on_epoch_end(self, epoch, logs=None):
        arrays = [keras.ops.convert_to_numpy(variable) for variable in state_variables(self.model)]
        with atomic_path(self.path) as tmp:
            with open(tmp, "wb") as handle:
                np.savez(handle, *arrays, epoch=np.int64(epoch + 1))
                handle.flush()
                os.fsync(handle.fileno())
            if self.path.exists():
                os.replace(self.path, self.previous)


def state_variables(model) -> list:
    """What ResumeState saves, in a fixed order; builds the optimizer's variables if no step has made them yet."""
    with model.distribute_strategy.scope():  # a MirroredStrategy's optimizer variables are mirrored too
        model.optimizer.build(model.trainable_variables)
    return [*model.variables, *model.optimizer.variables]


def restore_state(model, folder: Path) -> int:
    """Load the newest whole resume state that fits the model into it; the epochs it had finished (0: none).

    A state that cannot be read (a kill or a full disk in an older version's write, a damaged disk) or does not
    fit (another model) is passed over for the previous one, and without either the training starts over.
    """
    targets = state_variables(model)
    for path in (folder / STATE_FILE, folder / PREVIOUS_STATE):
        if not path.exists():
            continue
        try:
            with np.load(path) as state:
                epoch = int(state["epoch"])
                arrays = [state[f"arr_{index}"] for index in range(len(state.files) - 1)]
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as error:
            print(f"resume state {path} is unreadable ({error}): trying an older one")
            continue
        if len(arrays) != len(targets) or any(array.shape != tuple(target.shape)
                                              for array, target in zip(arrays, targets, strict=True)):
            print(f"resume state {path} does not fit this model: trying an older one")
            continue
        for target, array in zip(targets, arrays, strict=True):
            target.assign(array)
        return epoch
    return 0


@dataclass
class Callbacks:
    """What fit hands to Keras (`ordered`), the history rows kept so far, and the epochs already finished."""

    epoch_log: EpochLog  # its `rows` are the history
    finished: int  # epochs a resumed training skips
    ordered: list = field(default_factory=list)


def make_callbacks(params: Params, model, resume_dir: Path, run, extra: list[Any] = ()) -> Callbacks:
    """The training's callbacks in the order they must run: history, seeds, best weights, the course's stops,
    TensorBoard, the tracking run's live metrics, the resume state (last of the training's own, so an epoch counts
    as finished only once its history row and checkpoint exist), then `extra` (the benchmark's clock). With
    train.resume, the model gets the saved state's variables first."""
    settings = params.train
    resume_dir.mkdir(parents=True, exist_ok=True)
    history_path = resume_dir / HISTORY_FILE
    initial = pd.read_csv(history_path) if settings.resume and history_path.exists() else pd.DataFrame()
    finished = restore_state(model, resume_dir) if settings.resume else 0
    if len(initial):
        # Rows of an epoch whose state never landed (a kill, a full disk) are replayed: keep the restored epochs.
        # Their best alone counts: a replayed epoch that was best but whose weights were not saved must save them.
        initial = initial[initial["epoch"] <= finished]
    monitor = settings.checkpoint_monitor
    best = None
    if monitor in initial and len(initial):
        # A resumed run must not overwrite the best checkpoint with a worse epoch.
        best = float(initial[monitor].min() if minimised(monitor) else initial[monitor].max())
    epoch_log = EpochLog(history_path, initial, settings.epochs)
    ordered = [epoch_log, EpochSeeds(params.seed), BestCheckpoint(resume_dir / BEST_WEIGHTS, monitor, best)]
    if settings.early_stopping.enabled:
        stopping = settings.early_stopping
        ordered.append(keras.callbacks.EarlyStopping(
            monitor=stopping.monitor, patience=stopping.patience, restore_best_weights=stopping.restore_best_weights
        ))
    if settings.target_accuracy is not None:
        ordered.append(StopAtAccuracy(settings.target_monitor, settings.target_accuracy))
    if settings.tensorboard:
        ordered.append(keras.callbacks.TensorBoard(log_dir=params.paths.tensorboard))
    ordered.append(LiveMetrics(run))
    if settings.resume:
        ordered.append(ResumeState(resume_dir))
    ordered.extend(extra)
    return Callbacks(epoch_log, finished, ordered)
