"""Tests of the plots stage: every PNG is written, non-blank, the configured width and no taller than the configured
height, without blank bands; edge cases draw a figure that says what is missing. That it runs without TensorFlow is
checked in test_imports.py."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from helpers.project import ROOT, write_stage_inputs
from PIL import Image

from stages.core.datasets import NUM_CLASSES
from stages.core.errors import PipelineError
from stages.plots import (
    feature_maps_figure,
    grid_shape,
    misclassified_figure,
    most_confident_mistakes,
    row_normalised,
    run,
    save_figure,
)

PNG_NAMES = ["curves.png", "confusion_matrix.png", "misclassified.png", "feature_maps.png"]


def assert_png(path: Path, width: int, height: int, exact: bool = True) -> np.ndarray:
    """Check that `path` is a PNG of width x height pixels (`exact` false: at most `height` tall) with more than one
    colour; return its pixels."""
    with Image.open(path) as image:
        assert image.format == "PNG"
        assert image.size[0] == width and (image.size[1] == height if exact else image.size[1] <= height), path.name
        pixels = np.asarray(image.convert("RGB"), dtype=np.float64)
    assert pixels.std() > 0, f"{path.name} is a single colour"
    return pixels


def ink_share(pixels: np.ndarray) -> float:
    """The share of pixels that are not white background."""
    return float(np.mean(pixels.min(axis=2) < 250))


def test_run_writes_every_png_non_blank_at_the_configured_size(make_params):
    params = make_params()
    write_stage_inputs(params)
    written = run(params)

    assert written == [Path(params.paths.plots) / name for name in PNG_NAMES]
    width, height = round(params.plots.width * params.plots.dpi), round(params.plots.height * params.plots.dpi)
    for path in written:
        pixels = assert_png(path, width, height, exact=False)
        assert ink_share(pixels) > 0.05, f"{path.name} is nearly blank"
        rows = pixels.min(axis=(1, 2)) < 250  # rows holding some ink
        assert rows[: len(rows) // 8].any() and rows[-len(rows) // 8:].any(), f"{path.name}: blank band"
    assert not list((Path(params.paths.plots)).glob(".*tmp*")), "temporary files left behind"


def test_size_and_colormap_follow_params_for_fashion_mnist(make_params):
    params = make_params(plots__width=6.5, plots__height=4, plots__dpi=80, plots__cmap="viridis",
                         plots__misclassified=3, plots__feature_maps=2, data__dataset="fashion_mnist")
    write_stage_inputs(params)
    for path in run(params):
        assert_png(path, 520, 320, exact=False)
    # viridis has no white, unlike the default Blues: the counts heatmap must have changed colours.
    pixels = assert_png(Path(params.paths.plots) / "confusion_matrix.png", 520, 320, exact=False)
    assert np.any((pixels[..., 0] < 100) & (pixels[..., 1] > 150) & (pixels[..., 2] < 150)), "no viridis green"


def test_zero_mistakes_gives_a_figure_that_says_so(make_params):
    params = make_params()
    write_stage_inputs(params, correct=True)
    predictions = pd.read_csv(params.paths.predictions)
    assert (predictions["actual"] == predictions["predicted"]).all()
    run(params)
    pixels = assert_png(Path(params.paths.plots) / "misclassified.png", 1000, 800)
    assert 0 < ink_share(pixels) < 0.05, "expected a short message on a white page"


def test_missing_inputs_name_the_file_and_the_stage(make_params):
    params = make_params()
    write_stage_inputs(params)
    Path(params.paths.predictions).unlink()
    with pytest.raises(PipelineError, match=r"predictions.csv \(written by the evaluate stage\).*dvc repro"):
        run(params)
    assert not (Path(params.paths.plots)).exists()


def test_unknown_colormap_is_a_pipeline_error_with_a_suggestion(make_params):
    params = make_params(plots__cmap="Blus")
    write_stage_inputs(params)
    with pytest.raises(PipelineError, match="plots.cmap: unknown matplotlib colormap 'Blus'; did you mean 'Blues'"):
        run(params)


def test_most_confident_mistakes_are_sorted_and_limited():
    predictions = pd.DataFrame({"index": range(5), "actual": [1, 2, 3, 4, 5], "predicted": [1, 0, 0, 4, 0],
                                "confidence": [0.99, 0.6, 0.9, 0.95, 0.7]})
    assert most_confident_mistakes(predictions, 2)["index"].tolist() == [2, 4]
    assert most_confident_mistakes(predictions, 10)["index"].tolist() == [2, 4, 1]


def test_row_normalised_leaves_an_empty_class_at_zero():
    confusion = np.array([[3, 1], [0, 0]])
    np.testing.assert_allclose(row_normalised(confusion), [[0.75, 0.25], [0.0, 0.0]])


@pytest.mark.parametrize(("count", "shape"), [(1, (1, 1)), (3, (2, 2)), (4, (2, 2)), (10, (3, 4)), (16, (4, 4))])
def test_grid_shape_holds_every_panel(count, shape):
    assert grid_shape(count) == shape
    rows, columns = shape
    assert rows * columns >= count > (rows - 1) * columns, "no empty row"


def test_edge_case_figures_say_why_they_are_empty(tmp_path):
    names = [str(k) for k in range(NUM_CLASSES)]
    empty = pd.DataFrame(columns=["index", "actual", "predicted", "confidence"])
    no_mistakes = misclassified_figure(empty, np.zeros((5, 28, 28, 1)), names, 0, 5, figsize=(4, 3), dpi=50)
    no_convolution = feature_maps_figure(np.zeros((0, 0, 1, 0)), np.zeros((2, 28, 28)), np.array([1, 2]),
                                         np.zeros((2, 0, 0, 0)), names, count=8, figsize=(4, 3), dpi=50)
    for name, figure in (("mistakes.png", no_mistakes), ("maps.png", no_convolution)):
        assert_png(save_figure(figure, tmp_path / name), 200, 150)


def test_dvc_draws_the_confusion_matrix_the_way_the_png_does(tmp_path):
    """dvc.yaml's confusion plot as DVC renders it (`dvc plots show --json`, a scratch repository holding the
    project's dvc.yaml and params.yaml): the same field on each axis, under the same name, as confusion_matrix.png."""
    import shutil
    import subprocess

    from stages.core.schema import PARAMS_FILE, read_yaml
    from stages.evaluate import predictions_table
    from stages.plots import confusion_figure

    for name in ("dvc.yaml", PARAMS_FILE):
        shutil.copy(ROOT / name, tmp_path / name)
    labels = np.array([1, 1, 7, 7])
    predictions = Path(tmp_path / read_yaml(ROOT / PARAMS_FILE)["paths"]["predictions"])
    predictions.parent.mkdir(parents=True)
    predictions.write_text(predictions_table(labels, np.eye(NUM_CLASSES)[[1, 7, 7, 1]]).to_csv(index=False))
    dvc = Path(sys.executable).parent / "dvc"
    subprocess.run([dvc, "init", "--no-scm", "-q"], cwd=tmp_path, check=True, timeout=120)
    shown = subprocess.run([dvc, "plots", "show", "--json", "Confusion matrix"], cwd=tmp_path, capture_output=True,
                           text=True, check=True, timeout=120).stdout
    content = json.loads(shown)["data"]["Confusion matrix"][0]["content"]
    encoding = content.get("spec", content)["encoding"]
    png = confusion_figure(np.eye(NUM_CLASSES, dtype=int), [str(k) for k in range(NUM_CLASSES)], "Blues",
                           figsize=(8, 4), dpi=50).axes[0]
    for axis, label in (("x", png.get_xlabel()), ("y", png.get_ylabel())):
        assert (encoding[axis]["field"], encoding[axis]["title"]) == (label, label), encoding
