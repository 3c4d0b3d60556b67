"""Compare every MLflow run of the experiment: which architecture and optimizer did best, on which data, in how
many epochs?

Reads the MLflow experiment `tracking.experiment` (with mlflow.search_runs, through stages.tracking).
Writes {paths.compare} (one row per finished run, best test accuracy first, with the champion and why the champion
rule refused a run's version) and {paths.compare_plot}
(test accuracy by architecture and dataset, one bar per optimizer and epoch count), and says where.
Run: python -m stages.compare  (not a DVC stage: it reads the tracking store, which DVC does not version)
"""

from __future__ import annotations

import stages.core.venv  # noqa: F401  (first: without the project's packages, one line, not a traceback)

import argparse
from collections.abc import Sequence

import numpy as np
import pandas as pd

from stages.core.entry import tool_main
from stages.core.errors import PipelineError
from stages.core.files import atomic_path, write_text
from stages.core.schema import Params
from stages.core.tracking import champion, store, versions

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


def comparison_table(runs: pd.DataFrame, said: dict[str, str] | None = None) -> pd.DataFrame:
    """One row per evaluated run with the columns a reader compares, best test accuracy first; `said`: run id ->
    the champion, or why the champion rule refused its version (champion.notes)."""
    if runs.empty or "metrics.test_accuracy" not in runs:
        return pd.DataFrame(columns=[*COLUMNS.values(), "champion"])
    evaluated = runs[(runs["status"] == "FINISHED") & runs["metrics.test_accuracy"].notna()]
    table = evaluated.reindex(columns=list(COLUMNS)).rename(columns=COLUMNS)
    table["champion"] = evaluated.reindex(columns=["run_id"])["run_id"].map(said or {}).to_numpy()
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


def best_bars(table: pd.DataFrame) -> pd.DataFrame:
    """The best test accuracy per (dataset, architecture, optimizer, epochs): one bar each. A 20-epoch run is a bar
    of its own beside 5-epoch ones, and a run on the shipped sample never stands for a full-data one."""
    keyed = table.assign(dataset=table["dataset"].fillna("?"), epochs=table["epochs"].astype("Float64"))
    best = keyed.groupby(["dataset", "architecture", "optimizer", "epochs"], dropna=False)["test accuracy"].max()
    return best.rename("accuracy").reset_index()


def accuracy_figure(table: pd.DataFrame):
    """Bars grouped by architecture and dataset, centred on their tick whatever number each group has; each bar's
    colour is its optimizer, its label the accuracy and the epochs it trained."""
    from matplotlib.figure import Figure

    bars = best_bars(table)
    groups = list(bars.groupby(["dataset", "architecture"], sort=True))
    optimizers = sorted(bars["optimizer"].dropna().unique())
    colours = {name: f"C{index % 10}" for index, name in enumerate(optimizers)}
    widest = max(len(group) for _, group in groups)
    width = 0.8 / widest
    figure = Figure(figsize=(max(6.0, 0.7 * len(bars) + 1.2 * len(groups) + 2), 5), dpi=100, layout="constrained")
    axes = figure.add_subplot()
    labelled: set[str] = set()
    for position, (_, group) in enumerate(groups):
        group = group.sort_values(["optimizer", "epochs"])
        offsets = (np.arange(len(group)) - (len(group) - 1) / 2) * width
        for offset, row in zip(offsets, group.itertuples(index=False), strict=True):
            optimizer = row.optimizer if isinstance(row.optimizer, str) else "?"
            label = None if optimizer in labelled else optimizer
            labelled.add(optimizer)
            bar = axes.bar(position + offset, row.accuracy, width, color=colours.get(optimizer, "grey"), label=label)
            epochs = "" if pd.isna(row.epochs) else f"\n{int(row.epochs)} ep"
            axes.bar_label(bar, labels=[f"{row.accuracy:.3f}{epochs}"], fontsize=8)
    axes.set_xticks(np.arange(len(groups)), [f"{architecture}\n{dataset}" for (dataset, architecture), _ in groups])
    lower = max(0.0, bars["accuracy"].min() - 0.05)
    axes.set_ylim(lower, 1.04)  # room above a bar for its two-line label, and no tick above 1
    axes.set_yticks([tick for tick in axes.get_yticks() if lower <= tick <= 1.0])
    axes.set_ylabel("test accuracy")
    axes.set_title("Best test accuracy by architecture and dataset (label: accuracy, epochs)")
    handles = sorted(zip(*axes.get_legend_handles_labels(), strict=True), key=lambda pair: pair[1])
    axes.legend(*zip(*handles, strict=True), title="optimizer", loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return figure


def run(params: Params) -> pd.DataFrame:
    if not params.tracking.enabled:
        raise PipelineError("tracking.enabled is false: there are no MLflow runs to compare")
    runs = store.search_runs(params)
    client, _ = store.connect(params)
    datasets = runs["tags.dataset"].dropna().unique() if "tags.dataset" in runs else []
    names = [versions.registered_name(params, dataset) for dataset in datasets]
    table = comparison_table(runs, champion.notes(client, names))
    text = markdown(table, params.tracking.experiment)
    write_text(params.paths.compare, text)
    written = [params.paths.compare]
    if not table.empty:
        with atomic_path(params.paths.compare_plot) as tmp:
            accuracy_figure(table).savefig(tmp, format="png")
        written.append(params.paths.compare_plot)
    print(text)
    print(f"wrote {' and '.join(map(str, written))} ({len(table)} evaluated run{'s' * (len(table) != 1)})")
    return table


def parse_arguments(argv: Sequence[str] | None) -> argparse.Namespace:
    summary, _, details = __doc__.partition("\n\n")
    parser = argparse.ArgumentParser(prog="python -m stages.compare", description=" ".join(summary.split()),
                                     epilog=details, formatter_class=argparse.RawDescriptionHelpFormatter)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    parse_arguments(argv)
    tool_main(run, fast_exit=True)


if __name__ == "__main__":
    main()
