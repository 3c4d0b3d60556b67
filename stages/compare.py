"""Compare every MLflow run of the experiment: which architecture and optimizer did best?

Reads the MLflow experiment `tracking.experiment` (with mlflow.search_runs, through stages.tracking).
Writes {paths.compare} (one row per finished run, best test accuracy first) and {paths.compare_plot}
(test accuracy by architecture, one bar per optimizer).
Run: python -m stages.compare  (not a DVC stage: it reads the tracking store, which DVC does not version)
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from stages.core.entry import tool_main
from stages.core.errors import PipelineError
from stages.core.files import atomic_path, write_text
from stages.core.schema import Params
from stages.core.tracking import store

COLUMNS = {
    "tags.mlflow.runName": "run",
    "tags.dvc.exp_name": "dvc experiment",
    "tags.dataset": "dataset",  # mnist_10k (the shipped sample) is no full-MNIST result
    "params.model.name": "architecture",
    "params.train.optimizer.name": "optimizer",
    "params.train.optimizer.learning_rate": "learning rate",
    "metrics.system/epochs_run": "epochs",
    "params.model.parameters": "parameters",
    "metrics.test_accuracy": "test accuracy",
    "metrics.test_loss": "test loss",
    "metrics.own_test_accuracy": "own test accuracy",  # your own held-out digits (data.own)
    "metrics.system/train_seconds": "training seconds",
    "tags.dataset.train_images": "train images",
    "tags.dataset.test_images": "test images",
}


def comparison_table(runs: pd.DataFrame) -> pd.DataFrame:
    """One row per evaluated run with the columns a reader compares, best test accuracy first."""
    if runs.empty or "metrics.test_accuracy" not in runs:
        return pd.DataFrame(columns=list(COLUMNS.values()))
    evaluated = runs[(runs["status"] == "FINISHED") & runs["metrics.test_accuracy"].notna()]
    table = evaluated.reindex(columns=list(COLUMNS)).rename(columns=COLUMNS)
    for column in ("epochs", "parameters", "train images", "test images"):
        table[column] = pd.to_numeric(table[column]).astype("Int64")
    table["learning rate"] = pd.to_numeric(table["learning rate"])
    return table.sort_values(["test accuracy", "test loss"], ascending=[False, True]).reset_index(drop=True)


def markdown(table: pd.DataFrame, experiment: str) -> str:
    header = f"# Runs of MLflow experiment `{experiment}`, best test accuracy first\n\n"
    if table.empty:
        return header + "No evaluated runs yet: run `dvc repro` or a sweep first.\n"
    shown = table.copy()
    shown["test accuracy"] = shown["test accuracy"].map("{:.4f}".format)
    shown["test loss"] = shown["test loss"].map("{:.4f}".format)
    shown["own test accuracy"] = pd.to_numeric(shown["own test accuracy"]).map(
        lambda value: "" if pd.isna(value) else f"{value:.4f}")
    shown["training seconds"] = shown["training seconds"].map("{:.1f}".format)
    shown = shown.astype(object).fillna("").astype(str)  # runs made before a column existed show blanks
    lines = ["| " + " | ".join(shown.columns) + " |", "|" + "---|" * len(shown.columns)]
    lines += ["| " + " | ".join(row) + " |" for row in shown.itertuples(index=False)]
    return header + "\n".join(lines) + "\n"


def accuracy_figure(table: pd.DataFrame):
    from matplotlib.figure import Figure

    best = table.groupby(["architecture", "optimizer"])["test accuracy"].max().unstack("optimizer")
    figure = Figure(figsize=(max(6.0, 1.6 * len(best) + 2), 4.5), dpi=100, layout="constrained")
    axes = figure.add_subplot()
    width = 0.8 / max(1, len(best.columns))
    positions = np.arange(len(best))
    for offset, optimizer in enumerate(best.columns):
        values = best[optimizer].to_numpy()
        bars = axes.bar(positions + offset * width, values, width, label=optimizer)
        axes.bar_label(bars, labels=[f"{v:.3f}" if np.isfinite(v) else "" for v in values], fontsize=8)
    axes.set_xticks(positions + width * (len(best.columns) - 1) / 2, best.index)
    finite = best.to_numpy()[np.isfinite(best.to_numpy())]
    axes.set_ylim(max(0.0, finite.min() - 0.05), 1.0)
    axes.set_ylabel("test accuracy")
    axes.set_title("Best test accuracy by architecture and optimizer")
    axes.legend(title="optimizer")
    return figure


def run(params: Params) -> pd.DataFrame:
    if not params.tracking.enabled:
        raise PipelineError("tracking.enabled is false: there are no MLflow runs to compare")
    table = comparison_table(store.search_runs(params))
    write_text(params.paths.compare, markdown(table, params.tracking.experiment))
    if not table.empty:
        with atomic_path(params.paths.compare_plot) as tmp:
            accuracy_figure(table).savefig(tmp, format="png")
    print(markdown(table, params.tracking.experiment))
    return table


def main() -> None:
    tool_main(run, fast_exit=True)


if __name__ == "__main__":
    main()
