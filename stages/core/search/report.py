"""The finished study's report: the trials table (best first), Optuna's plots as PNGs, the best params as a ready
`dvc exp run -S ...` line."""

from __future__ import annotations

import shlex
import warnings
from pathlib import Path

from stages.core.files import write_csv, write_text
from stages.core.search.spec import SearchSpec
from stages.core.search.trials import set_arguments

PLOTS = {
    "optimization_history.png": "plot_optimization_history",
    "param_importances.png": "plot_param_importances",
    "slice.png": "plot_slice",
}


def complete_trials(study) -> list:
    from optuna.trial import TrialState

    return study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))


def trials_table(study):
    """Every trial, COMPLETE ones first and best first, with what each produced."""
    frame = study.trials_dataframe(attrs=("number", "value", "state", "duration", "params", "user_attrs",
                                          "system_attrs"))
    frame = frame.rename(columns=lambda column: column.removeprefix("user_attrs_").removeprefix("params_"))
    frame = frame.rename(columns={"system_attrs_failed_trial": "retry_of"})
    if "not_needed" in frame:  # trials started after n_trials were under way: never run, not part of the study
        frame = frame[frame["not_needed"] != True].drop(columns="not_needed")  # noqa: E712 (NaN for the others)
    if "retry_of" in frame:
        frame["retry_of"] = frame["retry_of"].astype("Int64")  # a trial number, blank when not a retry
    frame = frame.drop(columns=[c for c in frame.columns if c.startswith("system_attrs_")])
    frame["complete"] = frame["state"] == "COMPLETE"
    ascending = study.direction.name == "MINIMIZE"
    frame = frame.sort_values(["complete", "value"], ascending=[False, ascending]).drop(columns="complete")
    frame["duration"] = frame["duration"].dt.total_seconds().round(1)
    return frame.rename(columns={"duration": "seconds"}).reset_index(drop=True)


def legible_slices(figure) -> None:
    """Optuna's slice plot as it can be read: trial 0 is drawn white on white in its colour map, a log axis labels
    its minor ticks on top of each other, and the panels' axis titles run into one line at the default size."""
    import matplotlib
    import numpy as np
    from matplotlib.colors import ListedColormap
    from matplotlib.ticker import FuncFormatter

    visible = ListedColormap(matplotlib.colormaps["Blues"](np.linspace(0.35, 1.0, 256)))
    panels = [axes for axes in figure.axes if axes.get_label() != "<colorbar>"]
    for axes in panels:
        for points in axes.collections:
            points.set_cmap(visible)  # the colour bar follows its scatter
            points.set_edgecolor("dimgrey")
        if axes.get_xscale() == "log":  # written out (0.002, not 2×10⁻³); 2 and 5 too over at most two decades
            low, high = sorted(axes.get_xlim())
            minor = (2, 5) if np.log10(high / low) <= 2 else ()
            axes.xaxis.set_major_formatter(FuncFormatter(lambda x, _: f"{x:g}"))
            axes.xaxis.set_minor_formatter(FuncFormatter(
                lambda x, _, minor=minor: f"{x:g}" if round(x / 10 ** np.floor(np.log10(x))) in minor else ""))
        axes.tick_params(axis="x", which="both", labelrotation=30)
    figure.set_size_inches(1.5 + 4 * len(panels), 4.5)


def write_report(study, spec: SearchSpec, folder: Path) -> list[Path]:
    """trials.csv, Optuna's plots and best.txt in `folder`; returns the files written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import optuna
    import optuna.visualization.matplotlib as optuna_plots

    folder.mkdir(parents=True, exist_ok=True)
    written = [folder / "trials.csv"]
    table = trials_table(study)
    write_csv(written[0], table)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    for file_name, function in PLOTS.items():
        try:
            with warnings.catch_warnings():  # one trial: "identical low and high xlims", widened by matplotlib
                warnings.simplefilter("ignore", UserWarning)
                axes = getattr(optuna_plots, function)(study)
        except (ValueError, RuntimeError) as error:  # e.g. importances need two COMPLETE trials
            print(f"search report: {file_name} skipped ({error})")
            continue
        figure = (axes.flat[0] if hasattr(axes, "flat") else axes).figure
        if function == "plot_slice":
            legible_slices(figure)
        figure.savefig(folder / file_name, dpi=100, bbox_inches="tight")
        plt.close(figure)
        written.append(folder / file_name)
    best = study.best_trial
    lines = [
        f"# best of {len(complete_trials(study))} COMPLETE trials in study {spec.study}: trial {best.number}, "
        f"{spec.metric} {best.value:.4f}, test_accuracy {best.user_attrs.get('test_accuracy')}",
        f"# its DVC experiment: dvc exp apply {best.user_attrs.get('dvc_exp')}",
        shlex.join(["dvc", "exp", "run", *set_arguments(best.params)]),
    ]
    write_text(folder / "best.txt", "\n".join(lines) + "\n")
    written.append(folder / "best.txt")
    with_columns = [c for c in ("number", "state", "value", *spec.space, "test_accuracy", "restored") if c in table]
    print(table[with_columns].head(10).to_string(index=False))
    print("\n".join(lines))
    return written
