"""Train stage: build the Keras model params.yaml describes and fit it on the processed data.

Reads  {paths.processed}/train.npz, val.npz, dataset.json; params seed, model.*, train.*, tracking.*
       (your own digits in train.npz count train.own_weight times a dataset image in the loss)
Writes {paths.model} (best epoch by train.checkpoint_monitor), {paths.history}, {paths.summary}, {paths.run}
       (run.json also names the data: the dataset and its split sizes, from dataset.json; and the temperature that
       calibrates the model's probabilities, fitted on the validation digits: stages/core/calibration.py)
Run alone: python -m stages.train

Resuming. An interrupted training continues from its last finished epoch, with the same weights and numbers as an
uninterrupted one. The pieces that cooperate:
  - the resume key (`resume_key` below): {paths.resume}/<key>/ holds one training's state, keyed by the model,
    training params and data, outside DVC's outs (which DVC deletes before rerunning a stage); removed once the
    training completes;
  - the resume state (<key>/state.npz and the epoch before it, state.prev.npz: weights, seed states, optimizer,
    epoch; stages/core/callbacks.py: ResumeState writes it, `restore_state` loads the newest whole one), and
    fit's `initial_epoch`;
  - the best weights (<key>/best.weights.npz, BestCheckpoint) and the history rows (<key>/history.csv, EpochLog),
    cut back to the restored epochs on resume;
  - the epoch seeds (EpochSeeds; and the data order, `make_training_dataset`): each epoch's randomness is keyed by
    the epoch, not by how many epochs this process has run;
  - the MLflow run lost to a server that went away (stages/core/tracking/training.py keeps its id in <key>/), which
    the resumed training completes instead of opening a second one.
Devices, precision and thread pools: stages/core/devices.py (STAGES_JOBS lives there).
"""

from __future__ import annotations

import stages.core.venv  # noqa: F401  (first: without the project's packages, one line, not a traceback)

import contextlib
import hashlib
import json
import shutil
import time
from pathlib import Path

import numpy as np

from stages.core import devices
from stages.core.architectures import Architecture, SpecError, build_model, check_model, resolve_spec
from stages.core.datasets import split_sizes
from stages.core.entry import KERAS_UNUSED_IMPORTS, stage_main
from stages.core.errors import PipelineError
from stages.core.files import atomic_path, sha256_of_files, write_text
from stages.core.quiet import tensorflow_quietly
from stages.core.records import read_dataset_info, read_split, split_files, write_history, write_run
from stages.core.schema import Augment, Params, minimised, refuse
from stages.core.tracking import training as tracking


def own_weights(own: np.ndarray | None, own_weight: float) -> np.ndarray | None:
    """Per-image loss weights of train.npz from its `own` mask: `own_weight` for your own digits, 1 for the
    dataset's; None without own digits (preprocess writes the mask only when data.own added some)."""
    if own is None or not own.any():
        return None
    return np.where(own, np.float32(own_weight), np.float32(1.0)).astype(np.float32)


def steps_per_epoch(images: int, batch_size: int) -> int:
    return int(np.ceil(images / batch_size))


def make_optimizer(params: Params, steps: int):
    import keras

    settings = params.train.optimizer
    classes = {
        "adam": keras.optimizers.Adam, "adamw": keras.optimizers.AdamW, "nadam": keras.optimizers.Nadam,
        "sgd": keras.optimizers.SGD, "rmsprop": keras.optimizers.RMSprop, "adadelta": keras.optimizers.Adadelta,
        "adagrad": keras.optimizers.Adagrad, "adamax": keras.optimizers.Adamax, "lion": keras.optimizers.Lion,
    }
    learning_rate = settings.learning_rate
    if params.train.lr_schedule == "cosine":
        learning_rate = keras.optimizers.schedules.CosineDecay(learning_rate, decay_steps=params.train.epochs * steps)
    try:
        return classes[settings.name](learning_rate=learning_rate, **settings.kwargs)
    except (TypeError, ValueError) as error:
        raise PipelineError(f"train.optimizer.kwargs: {error} (optimizer {settings.name!r})") from None


def make_dataset(x: np.ndarray, y: np.ndarray, batch_size: int):
    """A tf.data pipeline over in-memory arrays, in order: batched, prefetched (for validation)."""
    import tensorflow as tf

    return tf.data.Dataset.from_tensor_slices((x, y)).batch(batch_size).prefetch(tf.data.AUTOTUNE)


def make_training_dataset(x: np.ndarray, y: np.ndarray, batch_size: int, seed: int, epochs: range,
                          weights: np.ndarray | None = None, augment: Augment | None = None):
    """The batches of all `epochs` in one stream, each epoch shuffled by a permutation of (seed, epoch) alone; with
    `weights`, each batch carries its images' loss weights (Keras' sample_weight); each batch is augmented (when
    `augment` is enabled) by draws keyed by (seed, epoch, batch).

    tf.data's own reshuffle draws each epoch's order from how often the dataset was iterated before, so a resumed
    run (a fresh iterator) would see epoch 1's order again; keyed by the epoch, a resume sees the same batches.
    """
    import tensorflow as tf

    count = len(x)
    images, labels = tf.constant(x), tf.constant(y)

    def epoch_batches(epoch):
        order = tf.random.experimental.stateless_shuffle(tf.range(count, dtype=tf.int64),
                                                         seed=tf.stack([tf.constant(seed, tf.int64), epoch]))
        batches = tf.data.Dataset.from_tensor_slices(order).batch(batch_size).enumerate()
        return batches.map(lambda batch, index: (epoch, batch, index))

    sample_weights = None if weights is None else tf.constant(weights)

    def gather(epoch, batch, index):
        batch_images = tf.gather(images, index)
        if augment is not None and augment.enabled:
            from stages.core import augment as augmentation

            batch_images = augmentation.augment(batch_images, augmentation.batch_seed(seed, epoch, batch), augment)
        if sample_weights is not None:
            return batch_images, tf.gather(labels, index), tf.gather(sample_weights, index)
        return batch_images, tf.gather(labels, index)

    stream = tf.data.Dataset.range(epochs.start, epochs.stop).flat_map(epoch_batches)
    # Stateless draws: parallel calls give the same batches, in order.
    return stream.map(gather, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True).prefetch(tf.data.AUTOTUNE)


def resume_key(params: Params, data_hash: str) -> str:
    """Identify a training run by what determines it, so a resume never mixes two different runs."""
    spec = {"seed": params.seed, "model": params.model.model_dump(), "train": params.train.model_dump(),
            "data": data_hash}
    return hashlib.sha256(json.dumps(spec, sort_keys=True, default=str).encode()).hexdigest()[:16]


def build(params: Params, architecture: Architecture, steps: int, strategy=None):
    """The compiled model params describe, its variables placed by `strategy` if any; a bad layer, shape or
    optimizer argument raises PipelineError."""
    import keras

    with strategy.scope() if strategy else contextlib.nullcontext():
        try:
            model = build_model(architecture.layers, name=architecture.name, where=architecture.where)
        except SpecError as error:
            raise PipelineError(str(error)) from None
        model.compile(
            optimizer=make_optimizer(params, steps),
            loss=keras.losses.CategoricalCrossentropy(label_smoothing=params.train.label_smoothing),
            metrics=["accuracy"],
        )
    return model


def fit(params: Params, model, train: tuple, val: tuple, resume_dir: Path, run=None, extra_callbacks=(),
        weights: np.ndarray | None = None):
    """Fit the compiled model, resuming if resume_dir holds a backup; returns (model at its best epoch, history).
    `weights`: per training image, how much it counts in the loss (own digits, train.own_weight).

    One process drives every replica of a MirroredStrategy and Keras calls each callback once per epoch with the
    replicas' metrics already combined: the history, checkpoint, resume state and MLflow callbacks each write once.
    """
    from stages.core.callbacks import HISTORY_COLUMNS, load_best_weights, make_callbacks

    settings = params.train
    callbacks = make_callbacks(params, model, resume_dir, run or tracking.NullRun(), list(extra_callbacks))
    if callbacks.finished:
        print(f"resuming after epoch {callbacks.finished} from {resume_dir}")
    # Batches of the global batch_size: the strategy splits each across its replicas.
    with tracking.fail_fast():
        model.fit(
            make_training_dataset(*train, settings.batch_size, params.seed,
                                  range(callbacks.finished, settings.epochs), weights, settings.augment),
            validation_data=make_dataset(*val, settings.batch_size),
            epochs=settings.epochs,
            initial_epoch=callbacks.finished,
            # One stream: Keras keeps its iterator.
            steps_per_epoch=steps_per_epoch(len(train[0]), settings.batch_size),
            shuffle=False,  # the stream is already shuffled, per epoch
            callbacks=callbacks.ordered,
            verbose=0,  # EpochLog prints one line per epoch in its own fixed format, in a terminal or a log alike
        )
    if not (settings.early_stopping.enabled and settings.early_stopping.restore_best_weights):
        load_best_weights(model, resume_dir)
    import pandas as pd

    return model, pd.DataFrame(callbacks.epoch_log.rows, columns=HISTORY_COLUMNS)


def kept_epoch(params: Params, history) -> int | None:
    """The epoch whose weights the saved model has: early stopping's best when it restores them, else the best by
    train.checkpoint_monitor (the fit ends by loading that checkpoint). None when no epoch measured the metric."""
    stopping = params.train.early_stopping
    restored = stopping.enabled and stopping.restore_best_weights
    monitor = stopping.monitor if restored else params.train.checkpoint_monitor
    if monitor not in history or history[monitor].isna().all():
        return None
    best = history[monitor].idxmin() if minimised(monitor) else history[monitor].idxmax()
    return int(history.loc[best, "epoch"])


def announcement(architecture: str, parameters: int, precision: str, replicas: int, data: dict, params: Params) -> str:
    """The line before the first epoch: what trains, on what, for how long."""
    settings = params.train
    return (f"training {architecture} ({parameters:,} parameters, {precision}, {replicas} "
            f"replica{'s' if replicas > 1 else ''}) on {data['dataset']}: {data['train_images']:,} training and "
            f"{data['val_images']:,} validation images, {settings.epochs} epochs of batch {settings.batch_size}, "
            f"{settings.optimizer.name} at learning rate {settings.optimizer.learning_rate:g} ({settings.lr_schedule})")


def settings_record(settings) -> dict:
    """The training settings a reader of the model card weighs (run.json's `settings`; every knob: MLflow's params)."""
    return {"optimizer": settings.optimizer.name, "learning_rate": settings.optimizer.learning_rate,
            "lr_schedule": settings.lr_schedule, "epochs": settings.epochs, "batch_size": settings.batch_size,
            "label_smoothing": settings.label_smoothing, "augment": settings.augment.enabled,
            "own_weight": settings.own_weight}


def summary_text(model) -> str:
    lines: list[str] = []
    model.summary(print_fn=lambda line, *args, **kwargs: lines.append(line), line_length=100)
    return "\n".join(lines) + "\n"


def run(params: Params, extra_callbacks=()) -> dict:
    """Load → build → fit → save. `extra_callbacks` run after every other callback (the benchmark's clock)."""
    refuse(check_model(params.model))
    devices.configure_devices()
    paths = params.paths
    train_arrays = read_split(paths, "train", ("x", "y"), optional=("own",))
    train, val = (train_arrays["x"], train_arrays["y"]), tuple(read_split(paths, "val", ("x", "y")).values())
    weights = own_weights(train_arrays.get("own"), params.train.own_weight)
    data_hash = sha256_of_files(split_files(paths, "train", "val"))
    data_info = read_dataset_info(paths)
    tracking.check_tracking(params, data_info["dataset"])  # seconds, before TensorFlow starts

    precision = devices.seed_and_set_precision(params.seed, params.train.deterministic, params.train.precision)
    strategy = devices.choose_strategy(params.train.distribute)
    architecture = resolve_spec(params.model.architecture, params.model.layers)
    # Built before the MLflow run opens: a configuration error leaves no run behind.
    model = build(params, architecture, steps_per_epoch(len(train[0]), params.train.batch_size), strategy)
    resume_dir = Path(paths.resume) / resume_key(params, data_hash)
    if not params.train.resume:
        shutil.rmtree(resume_dir, ignore_errors=True)

    with tracking.training_run(params, architecture.name, data_hash, data_info, resume_dir) as run_handle:
        print(announcement(architecture.name, int(model.count_params()), precision, devices.replicas(strategy),
                           split_sizes(data_info), params), flush=True)
        started = time.perf_counter()
        model, history = fit(params, model, train, val, resume_dir, run_handle, extra_callbacks, weights)
        seconds = time.perf_counter() - started
        # The temperature that calibrates the kept model's probabilities on the validation digits (predict uses it).
        from stages.core.calibration import calibrate

        with tensorflow_quietly():  # the first predict on NumPy under op determinism logs a harmless error line
            probabilities = model.predict(val[0], batch_size=params.train.batch_size, verbose=0)
        calibration = calibrate(probabilities, val[1].argmax(axis=1))

        with atomic_path(paths.model) as tmp:
            model.save(tmp)
        write_history(paths, history)
        write_text(paths.summary, summary_text(model))
        result = {
            "architecture": architecture.name,
            "parameters": int(model.count_params()),
            "precision": precision,
            "replicas": devices.replicas(strategy),
            "epochs_run": len(history),
            "train_seconds": round(seconds, 2),
            "best_val_accuracy": float(history["val_accuracy"].max()),
            "kept_epoch": kept_epoch(params, history),
        }
        # run.json last: evaluate, plots and register attach to the MLflow run it names.
        logged = run_handle.log_training(params, model, result, example=val[0][:5], data_info=data_info,
                                         temperature=calibration["temperature"])
        write_run(paths, {**result, **split_sizes(data_info), **calibration, **logged,
                          "settings": settings_record(params.train)})
        shutil.rmtree(resume_dir, ignore_errors=True)
    kept = f"kept epoch {result['kept_epoch']}" if result["kept_epoch"] else "kept the last epoch"
    print(f"trained {result['architecture']} for {result['epochs_run']} epochs in {seconds:.1f} s; {kept}, "
          f"best val_accuracy {result['best_val_accuracy']:.4f} -> {paths.model}")
    return result


def main() -> None:
    stage_main(run, skip_imports=KERAS_UNUSED_IMPORTS, fast_exit=True, quiet_tensorflow=True)


if __name__ == "__main__":
    main()
