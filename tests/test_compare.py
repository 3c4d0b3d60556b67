"""compare: the table of MLflow runs, from a frame shaped like mlflow.search_runs' answer.

The end-to-end check (real queued experiments, real store) is in test_pipeline.py.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from helpers.project import ROOT

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


def runs_frame(**columns) -> pd.DataFrame:
    """Finished, evaluated runs shaped like mlflow.search_runs' answer; `columns` override the defaults."""
    count = len(next(iter(columns.values())))
    defaults = {"status": ["FINISHED"] * count, "tags.mlflow.runName": [f"run{i}" for i in range(count)],
                "params.train.optimizer.learning_rate": ["0.002"] * count, "params.model.parameters": ["1"] * count,
                "metrics.test_loss": [0.1] * count, "metrics.system/train_seconds": [1.0] * count}
    return pd.DataFrame({**defaults, **columns})


def test_the_chart_shows_epochs_and_dataset_and_centres_each_group_on_its_tick():
    """A 20-epoch run is its own bar beside a 5-epoch one, labelled with its epochs; each architecture's tick names
    its dataset; a group's bars sit centred on its tick whether it holds one bar or three (measured on the bars
    matplotlib drew)."""
    table = compare.comparison_table(runs_frame(**{
        "tags.dataset": ["mnist_10k", "mnist_10k", "mnist_10k", "mnist", "mnist_10k", "mnist_10k"],
        "params.model.name": ["bn_cnn", "bn_cnn", "lenet", "bn_cnn", "conv32", "lenet"],
        "params.train.optimizer.name": ["adam", "adam", "adam", "adam", "adadelta", "sgd"],
        "metrics.system/epochs_run": [20.0, 5.0, 5.0, 20.0, 5.0, 5.0],
        "metrics.test_accuracy": [0.99, 0.975, 0.96, 0.993, 0.91, 0.95],
    }))
    figure = compare.accuracy_figure(table)
    axes = figure.axes[0]
    ticks = dict(zip([label.get_text() for label in axes.get_xticklabels()], axes.get_xticks(), strict=True))
    assert set(ticks) == {"bn_cnn\nmnist", "bn_cnn\nmnist_10k", "conv32\nmnist_10k", "lenet\nmnist_10k"}
    centres = [patch.get_x() + patch.get_width() / 2 for patch in axes.patches]
    sizes = {}
    for name, tick in ticks.items():
        group = [centre for centre in centres if abs(centre - tick) < 0.5]
        sizes[name] = len(group)
        assert np.mean(group) == pytest.approx(tick), name
    assert sizes == {"bn_cnn\nmnist": 1, "bn_cnn\nmnist_10k": 2, "conv32\nmnist_10k": 1, "lenet\nmnist_10k": 2}
    labels = {text.get_text() for text in axes.texts}
    assert {"0.990\n20 ep", "0.975\n5 ep", "0.993\n20 ep"} <= labels
    assert [text.get_text() for text in axes.get_legend().get_texts()] == ["adadelta", "adam", "sgd"]


def test_help_prints_usage_and_touches_nothing(tmp_path):
    result = subprocess.run([sys.executable, "-m", "stages.compare", "--help"], cwd=tmp_path, capture_output=True,
                            text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: python -m stages.compare"), result.stdout
    assert "| run |" not in result.stdout and list(tmp_path.iterdir()) == []


def test_run_writes_the_table_and_the_chart_and_says_where(make_params, tmp_path, capsys):
    import mlflow

    params = make_params(tracking__enabled=True, tracking__uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    # The registry too: an earlier test's connect() leaves MLflow's global registry URI on its own store.
    client = mlflow.MlflowClient(params.tracking.uri, params.tracking.uri)
    experiment = client.create_experiment(params.tracking.experiment)
    client.create_registered_model("mnist_10k-cnn")
    for architecture, accuracy in (("lenet", 0.9), ("conv32", 0.95)):
        run = client.create_run(experiment, run_name=architecture, tags={"dataset": "mnist_10k"})
        client.log_param(run.info.run_id, "model.name", architecture)
        client.log_param(run.info.run_id, "train.optimizer.name", "adam")
        client.log_metric(run.info.run_id, "test_accuracy", accuracy)
        client.log_metric(run.info.run_id, "system/epochs_run", 2)
        client.set_terminated(run.info.run_id)
        client.create_model_version("mnist_10k-cnn", f"runs:/{run.info.run_id}/model", run_id=run.info.run_id)
    client.set_registered_model_alias("mnist_10k-cnn", "champion", "1")
    client.set_model_version_tag("mnist_10k-cnn", "2", "champion_refused", "refused by the test")
    table = compare.run(params)
    assert table["architecture"].tolist() == ["conv32", "lenet"]
    assert table["champion"].tolist() == ["v2 refused by the test", "champion (mnist_10k-cnn v1)"]
    assert "| champion (mnist_10k-cnn v1) |" in Path(params.paths.compare).read_text()
    last = capsys.readouterr().out.splitlines()[-1]
    assert last == f"wrote {params.paths.compare} and {params.paths.compare_plot} (2 evaluated runs)"
    assert Path(params.paths.compare_plot).read_bytes()[:4] == b"\x89PNG"
