"""Tests of the evaluate stage: metrics on hand-made and random predictions (scikit-learn as the oracle), and the
whole stage on a small conv10 model trained for one epoch on real digits from the shipped mnist-10k sample
(stages/mnist_10k)."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from helpers.digits import mnist_digits
from sklearn import metrics as sk_metrics

from stages.core.errors import PipelineError
from stages.evaluate import (
    EPSILON,
    compute_metrics,
    confusion_matrix,
    conv_activations,
    per_class_table,
    predictions_table,
    run,
)
from stages.preprocess import one_hot

NUM_CLASSES = 10
# Test accuracy first (`dvc exp show` keeps the file's order); the split sizes live in dataset.json, not here.
METRIC_KEYS = ["test_accuracy", "test_loss", "macro_f1", "images_per_s", "dataset"]

# Five predictions over three classes, small enough to score by hand:
#   true 0 -> 0 (p_true .7)   true 0 -> 1 (p_true .2)   true 1 -> 1 (.8)   true 1 -> 1 (.6)   true 2 -> 0 (p_true .4)
HAND_LABELS = np.array([0, 0, 1, 1, 2])
HAND_PROBABILITIES = np.array([
    [0.7, 0.2, 0.1],
    [0.2, 0.5, 0.3],
    [0.1, 0.8, 0.1],
    [0.1, 0.6, 0.3],
    [0.5, 0.1, 0.4],
])


def random_predictions(seed: int, count: int = 500) -> tuple[np.ndarray, np.ndarray]:
    """Labels and probabilities that agree more often than chance, so every score is away from 0 and 1."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, NUM_CLASSES, count)
    logits = rng.normal(size=(count, NUM_CLASSES))
    logits[np.arange(count), labels] += 1.5
    probabilities = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    return labels, probabilities


def test_metrics_match_hand_computed_values():
    metrics = compute_metrics(HAND_LABELS, HAND_PROBABILITIES)

    assert metrics["test_images"] == 5
    assert metrics["test_accuracy"] == pytest.approx(3 / 5)
    assert metrics["test_loss"] == pytest.approx(-(math.log(0.7) + math.log(0.2) + math.log(0.8) + math.log(0.6)
                                                   + math.log(0.4)) / 5)
    # precision: class 0 1/2, class 1 2/3, class 2 never predicted -> 0; recall: 1/2, 2/2, 0/1;
    # f1: 1/2, 2*(2/3*1)/(2/3+1) = 4/5, 0.
    assert metrics["macro_f1"] == pytest.approx((1 / 2 + 4 / 5 + 0) / 3)


def test_hand_confusion_matrix_and_per_class_table():
    confusion = confusion_matrix(HAND_LABELS, HAND_PROBABILITIES.argmax(axis=1), 3)
    np.testing.assert_array_equal(confusion, [[1, 1, 0], [0, 2, 0], [1, 0, 0]])

    table = per_class_table(confusion, ["zero", "one", "two"])
    assert list(table.columns) == ["class", "name", "precision", "recall", "f1", "support"]
    assert table["name"].tolist() == ["zero", "one", "two"]
    np.testing.assert_allclose(table["precision"], [1 / 2, 2 / 3, 0])
    np.testing.assert_allclose(table["recall"], [1 / 2, 1, 0])
    np.testing.assert_allclose(table["f1"], [1 / 2, 4 / 5, 0])
    assert table["support"].tolist() == [2, 2, 1]


def test_metrics_match_scikit_learn_on_random_predictions():
    labels, probabilities = random_predictions(seed=0)
    predicted = probabilities.argmax(axis=1)
    metrics = compute_metrics(labels, probabilities)

    assert metrics["test_accuracy"] == pytest.approx(sk_metrics.accuracy_score(labels, predicted))
    assert metrics["test_loss"] == pytest.approx(sk_metrics.log_loss(labels, probabilities,
                                                                     labels=range(NUM_CLASSES)), rel=1e-9)
    assert metrics["macro_f1"] == pytest.approx(sk_metrics.f1_score(labels, predicted, average="macro",
                                                                    zero_division=0))


def test_per_class_table_and_confusion_match_scikit_learn():
    labels, probabilities = random_predictions(seed=1)
    predicted = probabilities.argmax(axis=1)
    confusion = confusion_matrix(labels, predicted, NUM_CLASSES)
    np.testing.assert_array_equal(confusion, sk_metrics.confusion_matrix(labels, predicted,
                                                                         labels=range(NUM_CLASSES)))

    table = per_class_table(confusion, [str(k) for k in range(NUM_CLASSES)])
    precision, recall, f1, support = sk_metrics.precision_recall_fscore_support(
        labels, predicted, labels=range(NUM_CLASSES), zero_division=0)
    np.testing.assert_allclose(table["precision"], precision)
    np.testing.assert_allclose(table["recall"], recall)
    np.testing.assert_allclose(table["f1"], f1)
    np.testing.assert_array_equal(table["support"], support)


def test_confusion_matrix_sums_to_count_and_matches_class_counts():
    labels, probabilities = random_predictions(seed=2, count=321)
    predicted = probabilities.argmax(axis=1)
    confusion = confusion_matrix(labels, predicted, NUM_CLASSES)

    assert confusion.shape == (NUM_CLASSES, NUM_CLASSES)
    assert confusion.sum() == 321
    np.testing.assert_array_equal(confusion.sum(axis=1), np.bincount(labels, minlength=NUM_CLASSES))
    np.testing.assert_array_equal(confusion.sum(axis=0), np.bincount(predicted, minlength=NUM_CLASSES))
    assert np.trace(confusion) == np.sum(labels == predicted)


def test_confusion_matrix_rejects_labels_out_of_range():
    with pytest.raises(ValueError, match="predicted labels must lie in 0..9"):
        confusion_matrix([0, 1], [0, 10], NUM_CLASSES)
    with pytest.raises(ValueError, match="2 labels"):
        confusion_matrix([0, 1], [0], NUM_CLASSES)


def test_macro_averages_skip_classes_absent_from_labels_and_predictions():
    probabilities = np.array([[0.9, 0.05, 0.05], [0.1, 0.8, 0.1]])
    metrics = compute_metrics([0, 1], probabilities)
    assert metrics["macro_f1"] == 1.0


def test_loss_matches_keras_cross_entropy_including_zero_probabilities():
    import keras

    labels, probabilities = random_predictions(seed=3, count=50)
    # A confidently wrong prediction whose true-class probability underflowed to 0: Keras clips, so must we.
    probabilities[0] = np.eye(NUM_CLASSES)[(labels[0] + 1) % NUM_CLASSES]
    one_hot = np.eye(NUM_CLASSES)[labels]
    expected = keras.ops.convert_to_numpy(keras.losses.categorical_crossentropy(
        one_hot.astype("float32"), probabilities.astype("float32"))).mean()
    assert compute_metrics(labels, probabilities)["test_loss"] == pytest.approx(expected, rel=1e-5)
    assert compute_metrics(labels, probabilities)["test_loss"] >= -math.log(EPSILON) / 50


def test_predictions_table_layout():
    table = predictions_table(HAND_LABELS, HAND_PROBABILITIES)
    assert list(table.columns) == ["index", "actual", "predicted", "confidence", "prob_0", "prob_1", "prob_2"]
    assert table["predicted"].tolist() == [0, 1, 1, 1, 0]
    np.testing.assert_allclose(table["confidence"], [0.7, 0.5, 0.8, 0.6, 0.5])


def test_conv_activations_skip_leading_layers_and_handle_models_without_convolutions():
    from stages.core.architectures import build_model

    images = np.random.default_rng(0).random((3, 28, 28, 1), dtype=np.float32)
    augmented = build_model([
        {"type": "SpatialDropout2D", "rate": 0.5},
        {"type": "Conv2D", "filters": 4, "kernel_size": 5, "padding": "same"},
        {"type": "Flatten"},
        {"type": "Dense", "units": 10},
    ])
    filters, activations = conv_activations(augmented, images)
    assert filters.shape == (5, 5, 1, 4) and activations.shape == (3, 28, 28, 4)
    # Dropout is off at inference, so the maps are the same on every call.
    np.testing.assert_array_equal(activations, conv_activations(augmented, images)[1])

    dense_only = build_model([{"type": "Flatten"}, {"type": "Dense", "units": 10}])
    filters, activations = conv_activations(dense_only, images)
    assert filters.size == 0 and activations.shape[0] == 3 and activations.size == 0


# --- the whole stage on a real (tiny) model ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def mnist_test_images(mnist_10k) -> tuple[np.ndarray, np.ndarray]:
    """200 real test digits as the preprocess stage writes them: float32 in [0, 1], N x 28 x 28 x 1."""
    return mnist_digits(mnist_10k, "test", 200)


@pytest.fixture(scope="module")
def trained_model_file(tmp_path_factory, mnist_10k):
    """A conv10 model fitted for one epoch on 300 real training digits, saved as a .keras file."""
    import keras

    from stages.core.architectures import build_model, presets

    images, labels = mnist_digits(mnist_10k, "train", 300)
    keras.utils.set_random_seed(0)
    model = build_model(presets()["conv10"])
    model.compile(optimizer="adam", loss="categorical_crossentropy", metrics=["accuracy"])
    model.fit(images, one_hot(labels),
              batch_size=32, epochs=1, verbose=0)
    path = tmp_path_factory.mktemp("trained") / "model.keras"
    model.save(path)
    return path


@pytest.fixture
def stage_params(make_params, trained_model_file, mnist_test_images, tmp_path):
    """Params whose paths hold the trained model and a real test.npz, as the train and preprocess stages leave them."""
    params = make_params()
    images, labels = mnist_test_images
    processed = Path(params.paths.processed)
    processed.mkdir(parents=True)
    np.savez(processed / "test.npz", x=images, y=np.eye(NUM_CLASSES, dtype=np.float32)[labels], labels=labels)
    splits = {"train": 300, "val": 60, "test": len(labels)}
    (processed / "dataset.json").write_text(json.dumps({"dataset": "mnist_10k", "content_hash": "0" * 64, "splits": {
        split: {"name": split, "images": images_count, "sha256": "0" * 64, "origin": "stages/mnist_10k"}
        for split, images_count in splits.items()}}))
    Path(params.paths.model).parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(trained_model_file, params.paths.model)
    return params


def test_run_writes_every_report_consistent_with_keras(stage_params, mnist_test_images, tmp_path):
    import keras

    images, labels = mnist_test_images
    metrics = run(stage_params)
    assert list(metrics) == METRIC_KEYS
    assert json.loads(Path(stage_params.paths.metrics).read_text()) == metrics
    assert all(type(metrics[key]) is float for key in METRIC_KEYS[:4])
    # Which data, from dataset.json: the sample is never reported as MNIST.
    assert metrics["dataset"] == "mnist_10k"
    assert metrics["images_per_s"] > 0
    # The oracle: Keras scoring the same model on the same images.
    keras_loss, keras_accuracy = keras.saving.load_model(stage_params.paths.model).evaluate(
        images, np.eye(NUM_CLASSES)[labels], verbose=0)
    assert metrics["test_loss"] == pytest.approx(keras_loss, abs=1e-4)
    assert metrics["test_accuracy"] == pytest.approx(keras_accuracy, abs=1e-6)
    assert metrics["test_accuracy"] > 0.3, "one epoch on 300 digits should beat chance by far"

    predictions = pd.read_csv(stage_params.paths.predictions)
    assert list(predictions.columns) == ["index", "actual", "predicted", "confidence",
                                         *[f"prob_{k}" for k in range(NUM_CLASSES)]]
    probabilities = predictions[[f"prob_{k}" for k in range(NUM_CLASSES)]].to_numpy()
    np.testing.assert_array_equal(predictions["index"], np.arange(200))
    np.testing.assert_array_equal(predictions["actual"], labels)
    np.testing.assert_array_equal(predictions["predicted"], probabilities.argmax(axis=1))
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-4)
    np.testing.assert_allclose(predictions["confidence"], probabilities.max(axis=1), atol=1e-6)
    assert np.mean(predictions["actual"] == predictions["predicted"]) == metrics["test_accuracy"]

    confusion = pd.read_csv(stage_params.paths.confusion, index_col="actual")
    assert confusion.index.astype(str).tolist() == confusion.columns.tolist() == [str(k) for k in range(10)]
    assert confusion.to_numpy().sum() == 200
    np.testing.assert_array_equal(confusion.to_numpy().sum(axis=1), np.bincount(labels, minlength=NUM_CLASSES))
    np.testing.assert_array_equal(confusion.to_numpy(), pd.crosstab(predictions["actual"], predictions["predicted"])
                                  .reindex(index=range(10), columns=range(10), fill_value=0).to_numpy())

    per_class = pd.read_csv(stage_params.paths.per_class)
    assert list(per_class.columns) == ["class", "name", "precision", "recall", "f1", "support"]
    assert per_class["support"].sum() == 200
    assert per_class["f1"][per_class["support"] > 0].mean() == pytest.approx(metrics["macro_f1"])


def test_run_saves_first_conv_layer_filters_and_activations(stage_params, mnist_test_images, tmp_path):
    import keras

    images, labels = mnist_test_images
    run(stage_params)
    count = stage_params.evaluate.activation_images
    with np.load(stage_params.paths.activations) as saved:
        filters, activations = saved["filters"], saved["activations"]
        np.testing.assert_array_equal(saved["images"], images[:count, :, :, 0])
        np.testing.assert_array_equal(saved["labels"], labels[:count])
    assert filters.shape == (3, 3, 1, 10) and activations.shape == (count, 26, 26, 10)

    # The oracle: the first layer (3x3 'valid' convolution + bias + ReLU) redone in NumPy.
    conv = keras.saving.load_model(stage_params.paths.model).layers[0]
    np.testing.assert_array_equal(filters, keras.ops.convert_to_numpy(conv.kernel))
    windows = np.lib.stride_tricks.sliding_window_view(images[:count, :, :, 0], (3, 3), axis=(1, 2))
    expected = np.einsum("nhwij,ijf->nhwf", windows, filters[:, :, 0, :]) + keras.ops.convert_to_numpy(conv.bias)
    np.testing.assert_allclose(activations, np.maximum(expected, 0), atol=1e-5)


def test_own_test_accuracy_beside_the_test_metrics(stage_params, mnist_test_images):
    """With data.own, dataset.json lists own_test and evaluate scores the model on those digits too."""
    import keras

    images, labels = mnist_test_images
    processed = Path(stage_params.paths.processed)
    own_images, own_labels = images[:30], labels[:30]
    np.savez(processed / "own_test.npz", x=own_images, y=np.eye(NUM_CLASSES, dtype=np.float32)[own_labels],
             labels=own_labels)
    info = json.loads((processed / "dataset.json").read_text())
    info["splits"]["own_test"] = {"name": "own_test", "images": 30, "sha256": "0" * 64, "origin": "data/own"}
    (processed / "dataset.json").write_text(json.dumps(info))
    metrics = run(stage_params)
    _, expected = keras.saving.load_model(stage_params.paths.model).evaluate(
        own_images, np.eye(NUM_CLASSES)[own_labels], verbose=0)
    assert metrics["own_test_accuracy"] == pytest.approx(expected, abs=1e-6)
    assert json.loads(Path(stage_params.paths.metrics).read_text())["own_test_accuracy"] == metrics["own_test_accuracy"]

    info["splits"]["own_test"]["images"] = 31
    (processed / "dataset.json").write_text(json.dumps(info))
    with pytest.raises(PipelineError, match="own_test.npz holds 30 images but dataset.json beside it says 31"):
        run(stage_params)


@pytest.mark.parametrize(("missing", "stage"), [(lambda paths: Path(paths.model), "train"),
                                                 (lambda paths: Path(paths.processed) / "test.npz", "preprocess")])
def test_missing_input_names_the_file_and_the_stage(stage_params, missing, stage):
    path = missing(stage_params.paths)
    path.unlink()
    with pytest.raises(PipelineError, match=rf"{path.name} \(written by the {stage} stage\).*dvc repro"):
        run(stage_params)
    assert not Path(stage_params.paths.metrics).exists()


def test_corrupt_model_file_is_a_pipeline_error(stage_params, tmp_path):
    Path(stage_params.paths.model).write_bytes(b"not a zip archive")
    with pytest.raises(PipelineError, match="not a loadable Keras model.*dvc repro train"):
        run(stage_params)
