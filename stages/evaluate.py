"""Evaluate stage: score the trained model on the test set and save what the plots stage draws.

Reads `{paths.processed}/test.npz`, `own_test.npz`, `dataset.json` and `{paths.model}`; params `evaluate.*`,
`data.dataset`, `paths.*`.
Writes, each atomically, to the `paths.*` key of the same name:
  metrics          test_accuracy, test_loss (cross-entropy, no label smoothing), macro_f1, images_per_s
                   (inference throughput), dataset (e.g. mnist_10k, the shipped sample), and with data.own
                   own_test_accuracy (your own held-out digits, {paths.processed}/own_test.npz): flat, so
                   `dvc metrics show` and `dvc exp show` list them, and few, so they fit a 120-column terminal
                   (split sizes: dataset.json and run.json; per-class precision and recall: per_class)
  predictions      index, actual, predicted, confidence, prob_0..prob_9 (one row per test image)
  confusion        counts, rows = actual class, columns = predicted class
  per_class        class, name, precision, recall, f1, support
  activations      the first Conv2D layer's filters and its outputs for the first `evaluate.activation_images`
                   test images, so plots can draw feature maps without TensorFlow

Run alone with `python -m stages.evaluate` (after `dvc repro train`).
"""

from __future__ import annotations

import stages.core.venv  # noqa: F401  (first: without the project's packages, one line, not a traceback)

import time
from pathlib import Path

import numpy as np
import pandas as pd

from stages.core.architectures import load_model
from stages.core.datasets import class_names, split_sizes
from stages.core.entry import KERAS_UNUSED_IMPORTS, stage_main
from stages.core.files import require_files, save_npz, write_csv
from stages.core.records import (
    confusion_file,
    metrics_file,
    per_class_file,
    read_dataset_info,
    read_split,
    split_files,
    write_confusion,
    write_metrics,
    write_per_class,
)
from stages.core.tracking import store, training

# Keras clips probabilities to [epsilon, 1 - epsilon] before the log (keras.config.epsilon()); the same clip here
# keeps a confidently wrong prediction from giving an infinite loss and matches model.evaluate.
EPSILON = 1e-7


def predict_timed(model, images: np.ndarray, batch_size: int) -> tuple[np.ndarray, float]:
    """Class probabilities for every image, and the inference throughput in images per second.

    Untimed warm-up calls first trace the predict function (and, with XLA, compile it) for a full batch and for
    the last partial one, so the timed pass measures inference rather than one-off set-up.
    """
    warm_up_sizes = {min(batch_size, len(images)), len(images) % batch_size} - {0}
    for size in sorted(warm_up_sizes):
        model.predict(images[:size], batch_size=batch_size, verbose=0)
    start = time.perf_counter()
    probabilities = model.predict(images, batch_size=batch_size, verbose=0)
    seconds = time.perf_counter() - start
    return np.asarray(probabilities, dtype=np.float32), len(images) / seconds


def confusion_matrix(actual, predicted, num_classes: int) -> np.ndarray:
    """num_classes x num_classes counts: row = actual class, column = predicted class."""
    actual = np.asarray(actual).astype(np.int64).ravel()
    predicted = np.asarray(predicted).astype(np.int64).ravel()
    if actual.shape != predicted.shape:
        raise ValueError(f"actual has {actual.size} labels but predicted has {predicted.size}")
    for name, values in (("actual", actual), ("predicted", predicted)):
        if values.size and (values.min() < 0 or values.max() >= num_classes):
            raise ValueError(f"{name} labels must lie in 0..{num_classes - 1}, got {values.min()}..{values.max()}")
    counts = np.bincount(actual * num_classes + predicted, minlength=num_classes * num_classes)
    return counts.reshape(num_classes, num_classes)


def class_scores(confusion: np.ndarray) -> dict[str, np.ndarray]:
    """Per-class precision, recall, F1 and support from a confusion matrix; an undefined ratio (0/0) counts as 0."""
    confusion = np.asarray(confusion, dtype=np.float64)
    true_positives = np.diag(confusion)
    support = confusion.sum(axis=1)
    predicted_count = confusion.sum(axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = np.where(predicted_count > 0, true_positives / predicted_count, 0.0)
        recall = np.where(support > 0, true_positives / support, 0.0)
        # 2TP / (2TP + FP + FN) equals the harmonic mean of precision and recall wherever that is defined.
        f1_denominator = support + predicted_count
        f1 = np.where(f1_denominator > 0, 2 * true_positives / f1_denominator, 0.0)
    return {"precision": precision, "recall": recall, "f1": f1, "support": support.astype(np.int64),
            "predicted_count": predicted_count.astype(np.int64)}


def cross_entropy(labels: np.ndarray, probabilities: np.ndarray) -> float:
    """Mean categorical cross-entropy of the probabilities against one-hot labels, computed as Keras does."""
    probabilities = probabilities / probabilities.sum(axis=1, keepdims=True)
    true_class_probability = probabilities[np.arange(len(labels)), labels]
    return float(-np.log(np.clip(true_class_probability, EPSILON, 1.0 - EPSILON)).mean())


def compute_metrics(labels, probabilities) -> dict[str, float | int]:
    """Test accuracy, loss and macro F1 from integer labels and N x classes probabilities (each class's precision
    and recall: per_class_table; as macro averages they would widen `dvc metrics show` past a terminal).

    The macro average runs over the classes that occur among the labels or the predictions (scikit-learn's default),
    so a class absent from a small test set does not count as a zero score.
    """
    labels = np.asarray(labels).astype(np.int64).ravel()
    probabilities = np.asarray(probabilities, dtype=np.float64)
    if probabilities.ndim != 2 or len(probabilities) != len(labels) or len(labels) == 0:
        raise ValueError(f"expected N labels and N x classes probabilities with N > 0, got labels {labels.shape} "
                         f"and probabilities {probabilities.shape}")
    num_classes = probabilities.shape[1]
    predicted = probabilities.argmax(axis=1)
    scores = class_scores(confusion_matrix(labels, predicted, num_classes))
    present = (scores["support"] > 0) | (scores["predicted_count"] > 0)
    return {  # test accuracy first: `dvc exp show` keeps this order
        "test_accuracy": float(np.mean(predicted == labels)),
        "test_loss": cross_entropy(labels, probabilities),
        "macro_f1": float(scores["f1"][present].mean()),
        "test_images": int(len(labels)),
    }


def per_class_table(confusion: np.ndarray, names: list[str]) -> pd.DataFrame:
    """One row per class: class id, name, precision, recall, f1, support."""
    scores = class_scores(confusion)
    return pd.DataFrame({
        "class": np.arange(len(names)),
        "name": names,
        "precision": scores["precision"],
        "recall": scores["recall"],
        "f1": scores["f1"],
        "support": scores["support"],
    })


def predictions_table(labels: np.ndarray, probabilities: np.ndarray) -> pd.DataFrame:
    """One row per test image: its index in test.npz, actual and predicted class ids, confidence, probabilities."""
    predicted = probabilities.argmax(axis=1)
    table = pd.DataFrame({
        "index": np.arange(len(labels)),
        "actual": labels,
        "predicted": predicted,
        "confidence": probabilities.max(axis=1),
    })
    # Six decimals keep the CSV readable and a tenth of the size; argmax was taken on the full probabilities.
    columns = pd.DataFrame(probabilities, columns=[f"prob_{k}" for k in range(probabilities.shape[1])])
    return pd.concat([table, columns], axis=1).round(6)


def confusion_table(confusion: np.ndarray, names: list[str]) -> pd.DataFrame:
    """The confusion matrix with an `actual` column of class names and one column per predicted class name."""
    table = pd.DataFrame(confusion, columns=names)
    table.insert(0, "actual", names)
    return table


def first_conv_layer(model):
    """The model's first Conv2D layer (augmentation or normalisation layers may come before it), or None."""
    import keras

    return next((layer for layer in model.layers if isinstance(layer, keras.layers.Conv2D)), None)


def conv_activations(model, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The first Conv2D layer's kernel (kh x kw x in x filters) and its outputs for `images` (N x H x W x filters).

    A model without a Conv2D layer gives empty arrays, which the plots stage reports instead of drawing.
    """
    import keras

    layer = first_conv_layer(model)
    if layer is None:
        return np.zeros((0, 0, 1, 0), np.float32), np.zeros((len(images), 0, 0, 0), np.float32)
    # A Sequential loaded from file has no `model.input` until called, but its `inputs` list is set once built.
    feature_model = keras.Model(model.inputs[0], layer.output)
    activations = keras.ops.convert_to_numpy(feature_model(images, training=False))
    # Under mixed precision the outputs are bfloat16 or float16, which NumPy files and matplotlib handle poorly.
    return (np.asarray(keras.ops.convert_to_numpy(layer.kernel), dtype=np.float32),
            np.asarray(activations, dtype=np.float32))


def own_test_metrics(model, paths, batch_size: int, info: dict) -> dict[str, float]:
    """{"own_test_accuracy"} on your own held-out digits; empty without any (data.own off, or none held out)."""
    if "own_test" not in info["splits"]:  # data.own off: own_test.npz is preprocess's empty placeholder
        return {}
    arrays = read_split(paths, "own_test", empty_ok=True, info=info)
    if not len(arrays["labels"]):
        return {}
    predicted = model.predict(arrays["x"], batch_size=batch_size, verbose=0).argmax(axis=1)
    return {"own_test_accuracy": float(np.mean(predicted == arrays["labels"]))}


def run(params) -> dict[str, float | int]:
    """Evaluate the trained model on the test set, write the reports, and return the metrics."""
    paths = params.paths
    [test_path], model_path = split_files(paths, "test"), Path(paths.model)
    require_files({test_path: "preprocess", model_path: "train"})
    names = class_names(params.data.dataset)
    info = read_dataset_info(paths)
    store.check_writes(params)  # before any work: a READ-only user is one line now, not a 403 at the end
    data = split_sizes(info)

    test = read_split(paths, "test", info=info)
    images, labels = test["x"], test["labels"].astype(np.int64)
    model = load_model(model_path, len(names), advice="rerun `dvc repro train`")
    probabilities, images_per_second = predict_timed(model, images, params.evaluate.batch_size)

    scores = compute_metrics(labels, probabilities)
    test_images = scores.pop("test_images")
    # The data's name, for `dvc exp show` and `dvc metrics show`; its split sizes stay in dataset.json and run.json
    # (as metrics they would widen `dvc metrics show` past a terminal).
    metrics = {**scores, "images_per_s": round(images_per_second, 1), "dataset": data["dataset"]}
    metrics.update(own_test_metrics(model, paths, params.evaluate.batch_size, info))
    confusion = confusion_matrix(labels, probabilities.argmax(axis=1), len(names))

    count = min(params.evaluate.activation_images, len(images))
    filters, activations = conv_activations(model, images[:count])

    write_csv(paths.predictions, predictions_table(labels, probabilities))
    write_confusion(paths, confusion_table(confusion, names))
    write_per_class(paths, per_class_table(confusion, names))
    save_npz(paths.activations, filters=filters, images=images[:count, :, :, 0],
             labels=labels[:count], activations=activations)
    # metrics.json last: its presence means every other report of this run is complete.
    write_metrics(paths, metrics)
    with store.refused_is_an_error(store.tracking_uri(params), params.tracking.experiment):
        training.log_evaluation(params, metrics, [metrics_file(paths), Path(paths.predictions), confusion_file(paths),
                                                  per_class_file(paths)], data_info=info)
    # Training's loss may include label smoothing, which lifts it well above this one for the same model.
    print(f"test accuracy {metrics['test_accuracy']:.4f}, cross-entropy {metrics['test_loss']:.4f} (no label "
          f"smoothing), macro F1 {metrics['macro_f1']:.4f} on {test_images:,} {data['dataset']} images; "
          f"{images_per_second:,.0f} images/s")
    if "own_test_accuracy" in metrics:
        print(f"own_test accuracy {metrics['own_test_accuracy']:.4f} on {data['own_test_images']} of your digits")
    return metrics


def main() -> None:
    stage_main(run, skip_imports=KERAS_UNUSED_IMPORTS, fast_exit=True, quiet_tensorflow=True)


if __name__ == "__main__":
    main()
