"""The checkout, commands in a copy of the project, and what the stages before a stage leave behind."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from helpers.digits import mnist_digits
from stages.core.datasets import NUM_CLASSES, class_names
from stages.core.files import save_npz, write_csv, write_json
from stages.core.project_copy import ROOT, copy_project, project_env, set_params, sh  # noqa: F401  (for tests)
from stages.core.schema import Params
from stages.evaluate import confusion_matrix, confusion_table, predictions_table
from stages.preprocess import one_hot

# Runs a module as `python -m` would, with TensorFlow and Keras unimportable: a lazy import inside run() counts too.
REFUSE_TENSORFLOW = """
import importlib.abc, runpy, sys

class RefuseTensorFlow(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in ("tensorflow", "keras"):
            print(f"imported {name}", file=sys.stderr, flush=True)
            raise ImportError(f"{name} is refused in this process")
        return None

sys.meta_path.insert(0, RefuseTensorFlow())
sys.argv = sys.argv[1:]
runpy.run_module(sys.argv[0], run_name="__main__", alter_sys=True)
"""


def project_paths(project: Path):
    """`paths:` of a project copy's params.yaml, each under the project: where its stages write."""
    from types import SimpleNamespace

    from stages.core.schema import PARAMS_FILE, read_yaml

    return SimpleNamespace(**{key: project / value for key, value in read_yaml(project / PARAMS_FILE)["paths"].items()})


def run_data_stages(params: Params) -> Path:
    """The real source, download and preprocess stages, in DVC's order; returns the processed folder."""
    from stages import download, preprocess, source

    source.run(params)
    download.run(params)
    preprocess.run(params)
    return Path(params.paths.processed)


def write_stage_inputs(params: Params, num_images: int = 60, correct: bool = False) -> None:
    """The files train, preprocess and evaluate leave behind, from real test digits (data.source) and made-up
    predictions, where params says."""
    paths = params.paths
    images, labels = mnist_digits(Path(params.data.source), "test", num_images)
    save_npz(Path(paths.processed) / "test.npz", x=images, y=one_hot(labels), labels=labels)

    epochs = np.arange(1, 6)
    write_csv(paths.history, pd.DataFrame({
        "epoch": epochs, "loss": 1 / epochs, "accuracy": 1 - 0.5 / epochs, "val_loss": 1.2 / epochs,
        "val_accuracy": 1 - 0.6 / epochs, "learning_rate": 1e-3 * (1 + np.cos(np.pi * epochs / 6)) / 2,
        "seconds": 2.0}))
    write_json(paths.run, {"architecture": "lenet", "dataset": "mnist_10k", "kept_epoch": 4, "run_id": None})

    rng = np.random.default_rng(0)
    logits = rng.normal(size=(num_images, NUM_CLASSES))
    logits[np.arange(num_images), labels] += 10.0 if correct else 1.5
    probabilities = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    write_csv(paths.predictions, predictions_table(labels, probabilities))
    confusion = confusion_matrix(labels, probabilities.argmax(axis=1), NUM_CLASSES)
    write_csv(paths.confusion, confusion_table(confusion, class_names(params.data.dataset)))
    save_npz(paths.activations, filters=rng.normal(size=(3, 3, 1, 12)).astype(np.float32),
             images=images[:4, :, :, 0], labels=labels[:4], activations=rng.random((4, 26, 26, 12), dtype=np.float32))
