"""compare: the table of MLflow runs, from a frame shaped like mlflow.search_runs' answer.

The end-to-end check (real queued experiments, real store) is in test_pipeline.py.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from stages import compare


def test_comparison_table_lists_evaluated_runs_best_first():
    runs = pd.DataFrame({
        "status": ["FINISHED", "FINISHED", "FAILED", "FINISHED"],
        "tags.mlflow.runName": ["a", "b", "c", "d"],
        "tags.dvc.exp_name": ["exp-a", "exp-b", None, None],
        "params.model.name": ["lenet", "conv32", "lenet", "custom"],
        "params.train.optimizer.name": ["adam", "adadelta", "adam", "sgd"],
        "params.train.optimizer.learning_rate": ["0.001", "1.0", "0.001", "0.1"],
        "metrics.system/epochs_run": [2.0, 2.0, 1.0, 2.0],
        "params.model.parameters": ["1256080", "693962", "1256080", "100"],
        "metrics.test_accuracy": [0.95, 0.97, np.nan, 0.5],
        "metrics.test_loss": [0.2, 0.1, np.nan, 1.5],
        "metrics.system/train_seconds": [10.0, 8.0, 1.0, 3.0],
        "tags.dataset": ["mnist", "mnist_10k", "mnist", None],  # d: made before runs named their data
        "tags.dataset.train_images": ["48000", "6400", "48000", None],
        "tags.dataset.test_images": ["10000", "2000", "10000", None],
        "metrics.own_test_accuracy": [np.nan, 0.9, np.nan, np.nan],  # b learned its person's digits (data.own)
    })
    table = compare.comparison_table(runs)
    assert table["run"].tolist() == ["b", "a", "d"]
    assert table["dataset"].tolist()[:2] == ["mnist_10k", "mnist"]
    assert table["test images"].tolist()[:2] == [2000, 10000]
    assert table["architecture"].tolist() == ["conv32", "lenet", "custom"]
    assert table["parameters"].tolist() == [693962, 1256080, 100]
    text = compare.markdown(table, "mnist")
    assert text.index("| b |") < text.index("| a |")
    assert "| b | exp-b | mnist_10k | conv32 |" in text
    assert "| 0.9700 | 0.1000 | 0.9000 |" in text and "| 0.9500 | 0.2000 |  |" in text  # own test accuracy
