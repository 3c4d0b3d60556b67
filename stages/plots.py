"""Plots stage: draw the training curves, confusion matrix, worst mistakes and first-layer feature maps as PNGs.

Reads `{paths.history}`, `{paths.run}` (the model's name, its data, the kept epoch), `{paths.predictions}`,
`{paths.confusion}`, `{paths.activations}` and `{paths.processed}/test.npz`; params `plots.*`, `data.dataset` (class
names) and `paths.*`.
Writes, each atomically, plots.width inches wide at plots.dpi and as tall as its content needs (at most
plots.height), under `{paths.plots}/`, each titled with the model and its data:
  curves.png            loss, accuracy and learning rate by epoch, training vs validation, the kept epoch marked
  confusion_matrix.png  annotated counts and the row-normalised matrix (recall per class) side by side
  misclassified.png     the most confident mistakes, each titled true / predicted / probability
  feature_maps.png      the first conv layer's filters and their activation maps for a few test images, with
                        colour bars for the weights and the activations

Never imports TensorFlow: it draws only from the files evaluate wrote. Matplotlib renders through Agg via
`matplotlib.figure.Figure`, so no GUI backend or pyplot global state is involved.
Run alone with `python -m stages.plots` (after `dvc repro evaluate`).
"""

from __future__ import annotations

import stages.core.venv  # noqa: F401  (first: without the project's packages, one line, not a traceback)

import difflib
import math
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from stages.core.datasets import class_names
from stages.core.entry import stage_main
from stages.core.errors import PipelineError
from stages.core.files import atomic_path, load_npz, require_files
from stages.core.records import Run, read_confusion, read_history, read_run, read_split, split_files
from stages.core.tracking import store

HISTORY_CURVES = {"loss": ("loss", "val_loss"), "accuracy": ("accuracy", "val_accuracy")}
PREDICTION_COLUMNS = ("index", "actual", "predicted", "confidence")
# Average width of a character relative to the font size, to fit titles and annotations in their cells.
CHARACTER_WIDTH = 0.6
POINTS_PER_INCH = 72


def check_colormap(name: str) -> None:
    if name not in matplotlib.colormaps:
        close = difflib.get_close_matches(name, list(matplotlib.colormaps), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else " (see matplotlib's colormap reference)"
        raise PipelineError(f"plots.cmap: unknown matplotlib colormap {name!r}{hint}")


def read_table(path: Path, columns, stage: str) -> pd.DataFrame:
    """A CSV with the given columns, or a PipelineError telling the user to rerun the stage that writes it."""
    try:
        table = pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as error:
        raise PipelineError(f"{path} is unreadable ({error}); rerun `dvc repro {stage}`") from None
    absent = [column for column in columns if column not in table.columns]
    if absent:
        raise PipelineError(f"{path} lacks the column(s) {', '.join(absent)}; rerun `dvc repro {stage}`")
    return table


def fitting_font_size(width_inches: float, characters: int, largest: float = 10.0, smallest: float = 4.0) -> float:
    """The font size at which `characters` characters fill at most nine tenths of `width_inches`."""
    size = 0.9 * width_inches * POINTS_PER_INCH / (CHARACTER_WIDTH * max(characters, 1))
    return float(np.clip(size, smallest, largest))


def message_figure(text: str, figsize: tuple[float, float], dpi: int) -> Figure:
    """A figure that says why there is nothing to draw, so the output exists and explains itself."""
    figure = Figure(figsize=figsize, dpi=dpi)
    figure.text(0.5, 0.5, text, ha="center", va="center", fontsize=14, wrap=True)
    return figure


def curves_figure(history: pd.DataFrame, model: Run, width: float, max_height: float, dpi: int) -> Figure:
    """Loss, accuracy and learning rate against epoch (training and validation), the kept epoch marked."""
    figure = Figure(figsize=(width, min(max_height, 0.4 * width)), dpi=dpi, layout="constrained")
    axes = figure.subplots(1, 3)
    panels = {**HISTORY_CURVES, "learning rate": ("learning_rate",)}
    kept = model.kept_epoch
    for ax, (title, columns) in zip(axes, panels.items(), strict=True):
        for column, style in zip(columns, ("-o", "--s"), strict=False):
            if column in history and history[column].notna().any():
                # Markers keep a one-epoch run visible as points instead of an empty axis.
                ax.plot(history["epoch"], history[column], style, markersize=4, label=column)
        if kept is not None:
            ax.axvline(kept, color="grey", linestyle=":", linewidth=1.5, label=f"kept epoch {kept}")
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=8)
    axes[2].ticklabel_format(axis="y", style="sci", scilimits=(-2, 2))
    epochs = len(history)
    figure.suptitle(f"{model_title(model)}: training history ({epochs} epoch{'s' if epochs != 1 else ''}"
                    f"{f', kept epoch {kept}' if kept is not None else ''})")
    return figure


def model_title(model: Run) -> str:
    """`bn_cnn on mnist_10k`: what every figure's title names (run.json's architecture and dataset)."""
    return f"{model.architecture or 'model'} on {model.dataset or 'the test set'}"


def row_normalised(confusion: np.ndarray) -> np.ndarray:
    """Each row divided by its total (the recall of each class); a class with no test images stays 0."""
    totals = confusion.sum(axis=1, keepdims=True)
    return np.divide(confusion, totals, out=np.zeros(confusion.shape, dtype=np.float64), where=totals > 0)


def percent_label(share: float) -> str:
    """A whole percentage, at most three characters so it fits a cell; "<1" keeps rare confusions visible."""
    return "<1" if 0 < share < 0.5 else f"{share:.0f}"


def confusion_figure(confusion: np.ndarray, names: list[str], cmap: str, figsize: tuple[float, float],
                     dpi: int, heading: str = "") -> Figure:
    """Two annotated heatmaps side by side: counts, and the share of each actual class (row-normalised).

    Two square panels with their colour bars fill a figure about half as tall as it is wide: no taller, so no band
    of blank canvas above and below them."""
    width, max_height = figsize
    figure = Figure(figsize=(width, min(max_height, 0.5 * width)), dpi=dpi, layout="constrained")
    axes = figure.subplots(1, 2)
    num_classes = len(names)
    colormap = matplotlib.colormaps[cmap]
    long_names = max(len(name) for name in names) > 2
    views = [(confusion, "Counts", str, None),
             (row_normalised(confusion) * 100, "Share of each actual class (%)", percent_label, (0, 100))]
    annotations = []
    for ax, (matrix, title, label, limits) in zip(axes, views, strict=True):
        low, high = limits or (0, max(int(matrix.max()), 1))
        image = ax.imshow(matrix, cmap=colormap, vmin=low, vmax=high)
        figure.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
        texts = []
        for row in range(num_classes):
            for column in range(num_classes):
                value = matrix[row, column]
                red, green, blue, _ = colormap((value - low) / (high - low))
                # Dark text on light cells and light text on dark ones, whatever the colormap.
                color = "white" if 0.299 * red + 0.587 * green + 0.114 * blue < 0.5 else "black"
                texts.append(ax.text(column, row, label(value.item()), ha="center", va="center", color=color))
        annotations.append(texts)
        ax.set_title(title)
        ax.set_xlabel("predicted")
        ax.set_ylabel("actual")
        ax.set_xticks(range(num_classes))
        ax.set_yticks(range(num_classes))
        ax.set_xticklabels(names, rotation=45 if long_names else 0, ha="right" if long_names else "center",
                           rotation_mode="anchor")
        ax.set_yticklabels(names)
    correct = int(np.trace(confusion))
    figure.suptitle(f"{heading + ': ' if heading else ''}confusion matrix on {int(confusion.sum()):,} test images "
                    f"({correct:,} correct)")
    # Long class names squeeze the heatmaps, so size the numbers from each cell's width once the layout is done.
    figure.draw_without_rendering()
    for ax, texts in zip(axes, annotations, strict=True):
        cell_inches = ax.get_window_extent().width / figure.dpi / num_classes
        size = fitting_font_size(cell_inches, max(len(text.get_text()) for text in texts), largest=9)
        for text in texts:
            text.set_fontsize(size)
    return figure


def most_confident_mistakes(predictions: pd.DataFrame, count: int) -> pd.DataFrame:
    """The `count` misclassified rows with the highest predicted probability, most confident first."""
    mistakes = predictions[predictions["actual"] != predictions["predicted"]]
    return mistakes.sort_values("confidence", ascending=False, kind="stable").head(count)


def grid_shape(count: int) -> tuple[int, int]:
    """Rows and columns of the squarest grid that holds `count` panels."""
    columns = math.ceil(math.sqrt(count))
    return math.ceil(count / columns), columns


def misclassified_figure(mistakes: pd.DataFrame, images: np.ndarray, names: list[str], total_mistakes: int,
                         test_images: int, figsize: tuple[float, float], dpi: int, heading: str = "") -> Figure:
    """A grid of the given mistakes, each image titled with its true class, predicted class and probability."""
    if mistakes.empty:
        return message_figure(f"No misclassified images: all {test_images:,} test images are correct.", figsize, dpi)
    rows, columns = grid_shape(len(mistakes))
    width, max_height = figsize
    # Square images under two title lines, and the figure's title: the grid's own height.
    figure = Figure(figsize=(width, min(max_height, rows * width / columns * 1.25 + 0.4)), dpi=dpi,
                    layout="constrained")
    titles = [f"true {names[row.actual]}\npred {names[row.predicted]} ({row.confidence:.0%})"
              for row in mistakes.itertuples()]
    title_size = fitting_font_size(figsize[0] / columns, max(len(line) for t in titles for line in t.split("\n")))
    axes = figure.subplots(rows, columns, squeeze=False).ravel()
    for ax in axes:
        ax.axis("off")
    # The grid may have more cells than mistakes; the spare ones stay blank.
    for ax, row, title in zip(axes, mistakes.itertuples(), titles, strict=False):
        ax.imshow(images[row.index].squeeze(), cmap="gray", vmin=0, vmax=1)
        ax.set_title(title, fontsize=title_size)
    figure.suptitle(f"{heading + ': ' if heading else ''}the {len(mistakes)} most confident mistakes "
                    f"({total_mistakes:,} of {test_images:,} test images misclassified)")
    return figure


def feature_maps_figure(filters: np.ndarray, images: np.ndarray, labels: np.ndarray, activations: np.ndarray,
                        names: list[str], count: int, figsize: tuple[float, float], dpi: int,
                        heading: str = "") -> Figure:
    """The course's grid: a row of the first `count` filters, then per test image its input and activation maps;
    a colour bar for the weights (one scale for all filters) and one for the activations (each map its own)."""
    if filters.size == 0:
        return message_figure("The model has no Conv2D layer: there are no feature maps to show.", figsize, dpi)
    shown = min(count, filters.shape[-1])
    width, max_height = figsize
    cell = width / (1 + shown + 1)  # one more column's width for the colour bars
    figure = Figure(figsize=(width, min(max_height, (1 + len(images)) * cell + 0.5)), dpi=dpi, layout="constrained")
    grid = figure.subplots(1 + len(images), 1 + shown, squeeze=False)
    title_size = fitting_font_size(figsize[0] / (1 + shown), len(f"filter {shown}"), largest=9)
    # Mean over input channels: one map per filter even where the first conv layer sees more than one channel.
    kernels = filters.mean(axis=2)
    # One symmetric scale for all filters, so colour compares weights across filters and white means zero.
    limit = float(np.abs(kernels[..., :shown]).max()) or 1.0
    for ax in grid.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
    grid[0, 0].axis("off")
    grid[0, 0].text(0.5, 0.5, f"{filters.shape[0]}×{filters.shape[1]}\nfilters", ha="center", va="center",
                    fontsize=title_size, transform=grid[0, 0].transAxes)
    for index in range(shown):
        weights = grid[0, 1 + index].imshow(kernels[:, :, index], cmap="RdBu_r", vmin=-limit, vmax=limit)
        grid[0, 1 + index].set_title(f"filter {index + 1}", fontsize=title_size)
    weight_bar = figure.colorbar(weights, ax=grid[0, :], location="right", shrink=0.9, pad=0.01)
    weight_bar.set_label("weight", fontsize=title_size)
    weight_bar.ax.tick_params(labelsize=title_size)
    for row, (image, label, maps) in enumerate(zip(images, labels, activations, strict=True), start=1):
        grid[row, 0].imshow(image, cmap="gray", vmin=0, vmax=1)
        grid[row, 0].set_ylabel(names[int(label)], fontsize=title_size)
        for index in range(shown):
            # Each map on its own scale, as in the course, so weak filters still show their pattern.
            grid[row, 1 + index].imshow(maps[:, :, index], cmap="inferno")
    if len(images):
        grid[1, 0].set_title("input", fontsize=title_size)
        scale = matplotlib.cm.ScalarMappable(matplotlib.colors.Normalize(0, 1), cmap="inferno")
        activation_bar = figure.colorbar(scale, ax=grid[1:, :], location="right", shrink=0.9, pad=0.01,
                                         ticks=[0, 1])
        activation_bar.ax.set_yticklabels(["lowest", "highest"], fontsize=title_size)
        activation_bar.set_label("activation (each map on its own scale)", fontsize=title_size)
    figure.suptitle(f"{heading + ': ' if heading else ''}first convolution layer, {shown} of {filters.shape[-1]} "
                    "filters and their activation maps")
    return figure


def save_figure(figure: Figure, path: Path) -> Path:
    # savefig at the figure's own dpi and without bbox_inches='tight': the figure was sized to its content, and
    # the PNG is exactly its width x height x dpi.
    with atomic_path(path) as tmp:
        figure.savefig(tmp, dpi=figure.dpi, format="png")
    return path


def run(params) -> list[Path]:
    """Draw every figure from the files evaluate and train wrote, and return the paths of the PNGs."""
    store.check_writes(params)  # before any work
    paths = params.paths
    [test_path] = split_files(paths, "test")
    predictions_path = Path(paths.predictions)
    activations_path = Path(paths.activations)
    require_files({test_path: "preprocess", predictions_path: "evaluate", activations_path: "evaluate"})
    settings = params.plots
    figsize, dpi, cmap = (settings.width, settings.height), settings.dpi, settings.cmap
    check_colormap(cmap)
    names = class_names(params.data.dataset)

    history = read_history(paths)
    model = read_run(paths)
    title = model_title(model)
    predictions = read_table(predictions_path, PREDICTION_COLUMNS, "evaluate")
    confusion = read_confusion(paths, names)
    images = read_split(paths, "test", ("x",))["x"]
    if predictions["index"].max() >= len(images):
        raise PipelineError(f"{predictions_path} does not match {test_path}; rerun `dvc repro evaluate`")
    activation_arrays = load_npz(activations_path, ("filters", "images", "labels", "activations"), writer="evaluate")

    mistakes = most_confident_mistakes(predictions, settings.misclassified)
    total_mistakes = int((predictions["actual"] != predictions["predicted"]).sum())
    plots = Path(paths.plots)
    figures = {
        "curves.png": curves_figure(history, model, settings.width, settings.height, dpi),
        "confusion_matrix.png": confusion_figure(confusion, names, cmap, figsize, dpi, title),
        "misclassified.png": misclassified_figure(mistakes, images, names, total_mistakes, len(predictions),
                                                  figsize, dpi, title),
        "feature_maps.png": feature_maps_figure(**activation_arrays, names=names, count=settings.feature_maps,
                                                figsize=figsize, dpi=dpi, heading=title),
    }
    written = [save_figure(figure, plots / name) for name, figure in figures.items()]
    with store.refused_is_an_error(store.tracking_uri(params), params.tracking.experiment):
        store.log_files(params, written, "plots")
    print(f"wrote {len(written)} plots to {plots} ({', '.join(path.name for path in written)}); "
          "`dvc plots show` puts them in one page")
    return written


def main() -> None:
    stage_main(run, fast_exit=True)


if __name__ == "__main__":
    main()
