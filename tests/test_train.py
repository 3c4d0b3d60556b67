"""Train stage: optimizers, callbacks, determinism and resume after a kill (architectures: test_architectures.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from helpers.params import shrunk_params, write_params
from helpers.project import ROOT, project_env, run_data_stages

from stages import train
from stages.core import devices, records
from stages.core.architectures import build_model, presets, resolve_spec
from stages.core.errors import PipelineError


def xy(folder: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    arrays = records.load_split(folder, split, ("x", "y"))
    return arrays["x"], arrays["y"]


def test_bad_optimizer_argument_is_a_clear_error(make_params):
    params = make_params(train__optimizer__kwargs={"momentun": 0.9}, train__optimizer__name="sgd")
    with pytest.raises(PipelineError, match=r"train\.optimizer\.kwargs: .*momentun"):
        train.make_optimizer(params, steps=10)


def test_bf16_detection_reads_cpu_flags():
    assert devices.cpu_has_native_bf16("flags\t: fpu avx2 avx512_bf16 sse\n")
    assert devices.cpu_has_native_bf16("flags\t: fpu amx_bf16 amx_tile\n")
    assert not devices.cpu_has_native_bf16("flags\t: fpu avx2 avx512f\n")
    assert devices.choose_precision("float32") == "float32"


def test_auto_precision_can_be_forced_either_way(monkeypatch):
    for forced in ("mixed_bfloat16", "float32"):
        monkeypatch.setenv(devices.AUTO_PRECISION_VARIABLE, forced)
        assert devices.choose_precision("auto") == forced
        assert devices.choose_precision("float32") == "float32"  # an explicit precision is never overridden
    monkeypatch.setenv(devices.AUTO_PRECISION_VARIABLE, "bf16")
    with pytest.raises(PipelineError, match="STAGES_AUTO_PRECISION='bf16': expected one of mixed_bfloat16, float32"):
        devices.choose_precision("auto")


def test_one_epoch_lowers_the_loss_and_writes_outputs(make_params, processed_dir):
    import keras

    params = make_params(paths__processed=str(processed_dir), model__architecture="conv32")
    x_val, y_val = xy(processed_dir, "val")
    keras.utils.set_random_seed(params.seed)  # before building: the weights the training starts from
    untrained = build_model(presets()["conv32"])
    untrained.compile(loss="categorical_crossentropy")
    initial_loss = untrained.evaluate(x_val, y_val, verbose=0)

    result = train.run(params)

    paths = params.paths
    history = pd.read_csv(paths.history)
    from stages.core import callbacks

    assert list(history.columns) == callbacks.HISTORY_COLUMNS
    assert history["val_loss"].iloc[-1] < initial_loss
    assert result["parameters"] == keras.saving.load_model(paths.model, safe_mode=True).count_params()
    assert "Total params" in Path(paths.summary).read_text()
    recorded = json.loads(Path(paths.run).read_text())
    # Which data, from preprocess's dataset.json: processed_dir holds the MNIST sample (800 + 200 of its digits).
    data = {"dataset": "mnist_10k", "train_images": 800, "val_images": 200, "test_images": 2000}
    # and the temperature calibrating its probabilities on the validation digits, with the error it leaves
    calibration = {key: recorded[key] for key in ("temperature", "val_ece", "val_ece_calibrated")}
    assert calibration["temperature"] > 0 and 0 <= calibration["val_ece_calibrated"] <= 1
    # and the settings a model card shows, as params.yaml's train section says them
    settings = {"optimizer": "adam", "learning_rate": 2e-3, "lr_schedule": "cosine", "epochs": 1, "batch_size": 128,
                "label_smoothing": 0.1, "augment": True, "own_weight": 3.0}
    assert recorded == {**result, **data, **calibration, "run_id": None, "settings": settings}
    assert recorded["epochs_run"] == len(history) == 1
    assert not any(Path(paths.model).parent.glob(".*tmp*")), "no temp files left behind"


def test_target_accuracy_stops_training_early(make_params, processed_dir):
    params = make_params(paths__processed=str(processed_dir), model__architecture="conv32", train__epochs=5,
                         train__target_accuracy=0.3)
    assert train.run(params)["epochs_run"] == 1


def test_early_stopping_stops_a_diverging_run(make_params, processed_dir):
    params = make_params(paths__processed=str(processed_dir), model__architecture="conv10", train__epochs=8,
                         train__optimizer__name="sgd", train__optimizer__learning_rate=8.0,
                         train__lr_schedule="constant", train__early_stopping__enabled=True,
                         train__early_stopping__patience=0)
    assert train.run(params)["epochs_run"] < 8


def test_same_seed_gives_identical_history_and_weights(raw_params, mnist_10k, processed_dir, tmp_path):
    import keras

    runs = []
    for name in ("first", "second"):
        params = shrunk_params(raw_params, tmp_path / name, mnist_10k, paths__processed=str(processed_dir),
                               model__architecture="conv10", train__epochs=2)
        train.run(params)
        history = pd.read_csv(params.paths.history).drop(columns="seconds")
        weights = keras.saving.load_model(params.paths.model).get_weights()
        runs.append((history, weights))
    pd.testing.assert_frame_equal(runs[0][0], runs[1][0], check_exact=True)
    for first, second in zip(runs[0][1], runs[1][1], strict=True):
        np.testing.assert_array_equal(first, second)


def tiny_model(seed: int = 0, units: int = 2):
    import keras

    keras.utils.set_random_seed(seed)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dropout(0.2), keras.layers.Dense(units)])
    model.compile(optimizer="adam", loss="mse")
    return model


def fit_tiny(model, folder: Path, epochs: int, initial_epoch: int = 0):
    from stages.core.callbacks import ResumeState

    data = np.random.default_rng(0).random((32, 4)), np.random.default_rng(1).random((32, 2))
    model.fit(*data, epochs=epochs, initial_epoch=initial_epoch, batch_size=8, shuffle=False, verbose=0,
              callbacks=[ResumeState(folder)])


@pytest.mark.parametrize("damage", ["truncated", "garbage"])
def test_a_damaged_resume_state_falls_back_to_the_epoch_before(tmp_path, damage):
    from stages.core.callbacks import PREVIOUS_STATE, STATE_FILE, restore_state

    reference = tiny_model()
    fit_tiny(reference, tmp_path / "reference", 3)
    interrupted = tiny_model()
    fit_tiny(interrupted, tmp_path, 2)
    state = tmp_path / STATE_FILE
    {"truncated": lambda: state.write_bytes(state.read_bytes()[:500]),
     "garbage": lambda: state.write_bytes(b"\x89HDF\r\n" * 100)}[damage]()

    resumed = tiny_model(seed=7)  # other initial weights: all of them must come from the state
    assert restore_state(resumed, tmp_path) == 1
    fit_tiny(resumed, tmp_path, 3, initial_epoch=1)
    for got, want in zip(resumed.get_weights(), reference.get_weights(), strict=True):
        np.testing.assert_array_equal(got, want)
    assert int(resumed.optimizer.iterations.numpy()) == int(reference.optimizer.iterations.numpy())
    assert {path.name for path in tmp_path.iterdir()} >= {STATE_FILE, PREVIOUS_STATE}


def test_no_usable_resume_state_starts_over(tmp_path):
    from stages.core.callbacks import PREVIOUS_STATE, STATE_FILE, restore_state

    assert restore_state(tiny_model(), tmp_path) == 0  # nothing saved
    fit_tiny(tiny_model(), tmp_path, 2)
    assert restore_state(tiny_model(units=3), tmp_path) == 0  # another model's state
    (tmp_path / STATE_FILE).write_bytes(b"")
    (tmp_path / PREVIOUS_STATE).write_bytes(b"PK")
    assert restore_state(tiny_model(), tmp_path) == 0


# Dropout in the model; augmentation from params.yaml's train.augment (on by default).
RANDOM_LAYERS = [{"type": "Conv2D", "filters": 4, "kernel_size": 3, "activation": "relu"},
                 {"type": "MaxPooling2D", "pool_size": 2}, {"type": "Flatten"}, {"type": "Dropout", "rate": 0.3},
                 {"type": "Dense", "units": 10}]


def test_resumed_fit_is_bit_identical_to_an_uninterrupted_one(make_params, processed_dir, tmp_path):
    """Shuffle order, dropout and augmentation draws and the optimizer's step all continue where they stopped."""
    import keras

    params = make_params(model__layers=RANDOM_LAYERS, train__epochs=4, train__batch_size=32,
                         train__precision="float32")
    data = xy(processed_dir, "train"), xy(processed_dir, "val")
    steps = train.steps_per_epoch(len(data[0][0]), params.train.batch_size)
    architecture = resolve_spec(params.model.architecture, params.model.layers)

    class Interrupt(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if epoch + 1 == 2:
                raise RuntimeError("interrupted after epoch 2")

    def fit(resume_dir, extra=()):
        devices.seed_and_set_precision(params.seed, params.train.deterministic, params.train.precision)
        return train.fit(params, train.build(params, architecture, steps), *data, resume_dir,
                         extra_callbacks=list(extra))

    whole_model, whole_history = fit(tmp_path / "whole")
    with pytest.raises(RuntimeError, match="interrupted"):
        fit(tmp_path / "resumed", [Interrupt()])
    resumed_model, resumed_history = fit(tmp_path / "resumed")

    pd.testing.assert_frame_equal(whole_history.drop(columns="seconds"), resumed_history.drop(columns="seconds"),
                                  check_exact=True)
    for whole, resumed in zip(whole_model.get_weights(), resumed_model.get_weights(), strict=True):
        np.testing.assert_array_equal(whole, resumed)


@pytest.mark.parametrize(("damage", "reason"), [
    (lambda path: path.write_bytes(path.read_bytes()[:1000]), "File is not a zip file"),
    (lambda path: np.savez(path, x=np.array([object()] * 2), y=np.zeros(2)), "Object arrays cannot be loaded"),
])
def test_a_damaged_split_is_one_line_naming_the_file(tmp_path, damage, reason):
    path = tmp_path / "train.npz"
    np.savez(path, x=np.zeros((2, 28, 28, 1), np.float32), y=np.zeros((2, 10), np.float32))
    damage(path)
    with pytest.raises(PipelineError) as caught:
        xy(tmp_path, "train")
    message = str(caught.value)
    assert "\n" not in message and str(path) in message and reason in message
    assert message.endswith("rerun `dvc repro preprocess`")


def test_two_replicas_on_two_logical_cpus_match_one_and_write_one_set_of_outputs(raw_params, mnist_10k, tmp_path):
    """train.distribute: mirrored on the CPU split in two (the test hook) against one replica, same seed and batch."""
    import keras
    import mlflow

    data = shrunk_params(raw_params, tmp_path / "data", mnist_10k, preprocess__limit=2000)
    run_data_stages(data)
    accuracies = {}
    for replicas in (1, 2):
        folder = tmp_path / f"replicas-{replicas}"
        folder.mkdir()
        params = shrunk_params(
            raw_params, folder, mnist_10k, paths__processed=data.paths.processed, model__architecture="lenet",
            train__epochs=3,
            preprocess__limit=2000, train__batch_size=32, train__precision="float32",
            train__distribute="mirrored" if replicas > 1 else "off",
            tracking__enabled=replicas > 1, tracking__uri=f"sqlite:///{folder / 'mlflow.db'}",
        )
        write_params(tmp_path, params)  # tmp_path: the project
        env = {**os.environ, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "2",
               devices.TEST_CPU_DEVICES_VARIABLE: str(replicas)}
        result = subprocess.run([sys.executable, "-m", "stages.train"], cwd=tmp_path, env=env, capture_output=True,
                                text=True, timeout=600)
        assert result.returncode == 0, result.stderr[-3000:]
        assert f"{replicas} replica" in result.stdout

        history = pd.read_csv(params.paths.history)
        assert history["epoch"].tolist() == [1, 2, 3], "one history row per epoch, not per replica"
        model = keras.saving.load_model(params.paths.model)
        x_test, y_test = xy(Path(data.paths.processed), "test")
        accuracies[replicas] = float(np.mean(model.predict(x_test, verbose=0).argmax(1) == y_test.argmax(1)))
        assert not list(Path(params.paths.resume).glob("*")), "resume state cleared once training completed"

    assert sorted(p.name for p in Path(params.paths.model).parent.iterdir()) == \
        ["history.csv", "model.keras", "run.json", "summary.txt"]
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'replicas-2' / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name(params.tracking.experiment).experiment_id])
    assert [(run.info.status, run.data.tags.get("replicas")) for run in runs] == [("FINISHED", "2")]
    assert accuracies[1] > 0.8, accuracies
    assert abs(accuracies[2] - accuracies[1]) <= 0.01, accuracies


def test_parallel_jobs_share_the_cores():
    assert devices.thread_share(None, 8) is None  # TensorFlow's default: every core
    assert devices.thread_share("2", 8) == 4
    assert devices.thread_share("3", 2) == 1
    with pytest.raises(PipelineError, match=r"STAGES_JOBS='two': expected the number of parallel trainings"):
        devices.thread_share("two", 8)
    with pytest.raises(PipelineError, match=r"STAGES_JOBS='0'"):
        devices.thread_share("0", 8)


DETERMINISM_PROBE = """
import hashlib, sys
from stages.core import devices
devices.configure_devices()
devices.seed_and_set_precision(0, True, "float32")
import keras
from helpers.digits import mnist_digits
from stages.core.architectures import build_model, presets
from stages.preprocess import one_hot
digits, labels = mnist_digits(__import__("pathlib").Path(sys.argv[1]), "train")
model = build_model(presets()["bn_cnn"], name="bn_cnn")
model.compile(optimizer="adam", loss="categorical_crossentropy")
model.fit(digits[:512], one_hot(labels[:512]), epochs=1, batch_size=128, verbose=0)
print(hashlib.sha256(b"".join(w.tobytes() for w in model.get_weights())).hexdigest())
"""


def test_the_thread_count_does_not_change_the_weights(mnist_10k):
    """STAGES_JOBS sizes the inter-op pool only: the intra-op pool's size changes how reductions are split."""
    digests = {}
    for jobs in ("", "2"):
        env = project_env([ROOT, ROOT / "tests"], STAGES_JOBS=jobs)
        done = subprocess.run([sys.executable, "-c", DETERMINISM_PROBE, str(mnist_10k)], env=env, cwd=ROOT,
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
        digests[jobs] = done.stdout.split()[-1]
    assert digests[""] == digests["2"]


def test_own_digits_carry_their_weight_in_the_batches(tmp_path):
    """train.npz's `own` mask becomes per-image loss weights that travel with their images through the shuffle."""
    x = np.arange(10, dtype=np.float32).reshape(10, 1, 1, 1) * np.ones((10, 28, 28, 1), np.float32)
    y = np.eye(10, dtype=np.float32)
    np.savez(tmp_path / "train.npz", x=x, y=y, labels=np.arange(10, dtype=np.uint8))
    own = records.load_split(tmp_path, "train", optional=("own",)).get("own")
    assert train.own_weights(own, 5.0) is None  # no own digits: no weights, the batches are (x, y) as before
    np.savez(tmp_path / "train.npz", x=x, y=y, labels=np.arange(10, dtype=np.uint8), own=np.arange(10) >= 7)
    weights = train.own_weights(records.load_split(tmp_path, "train", optional=("own",))["own"], 5.0)
    np.testing.assert_array_equal(weights, [1] * 7 + [5] * 3)
    batches = list(train.make_training_dataset(x, y, 4, seed=0, epochs=range(0, 1), weights=weights))
    images = np.concatenate([batch[0].numpy()[:, 0, 0, 0] for batch in batches])
    given = np.concatenate([batch[2].numpy() for batch in batches])
    assert sorted(images.tolist()) == list(range(10))
    np.testing.assert_array_equal(given, np.where(images >= 7, 5.0, 1.0))
