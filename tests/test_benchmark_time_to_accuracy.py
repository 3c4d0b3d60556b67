"""The time-to-accuracy section's statistics: the Wilson interval, seconds to a threshold, the recipes' summary."""

import pytest
from PIL import Image

from benchmarks import benchmark
from benchmarks.time_to_accuracy import markdown, median_or_none, plot, seconds_to_reach, summarize, wilson_interval


@pytest.mark.parametrize(("correct", "total", "low", "high"), [
    (81, 263, 0.2553, 0.3662),  # Newcombe (1998), Statistics in Medicine 17:857, Table I, method 3
    (15, 148, 0.0624, 0.1605),
    (0, 20, 0.0, 0.1611),
])
def test_wilson_interval_matches_newcombe(correct, total, low, high):
    assert wilson_interval(correct, total) == pytest.approx((low, high), abs=5e-5)


def test_seconds_to_reach_counts_the_epochs_up_to_the_first_that_reaches():
    seconds = [12.0, 10.0, 10.0, 11.0]
    accuracy = [0.980, 0.9905, 0.989, 0.9935]
    assert seconds_to_reach(seconds, accuracy, 0.990) == 22.0
    assert seconds_to_reach(seconds, accuracy, 0.993) == 43.0
    assert seconds_to_reach(seconds, accuracy, 0.999) is None


def test_never_counts_as_slowest_in_the_median():
    assert median_or_none([30.0, None, 10.0]) == 30.0
    assert median_or_none([None, 5.0, None]) is None


def synthetic_run(recipe: str, seed: int, accuracy: float) -> dict:
    return {"recipe": recipe, "seed": seed, "test_accuracy": accuracy, "wilson_95": wilson_interval(
        round(accuracy * 2000), 2000), "precision": "float32", "epochs": 2, "kept_epoch": 2,
        "val_accuracy": [0.985, 0.9925], "epoch_seconds": [10.0, 8.0], "epoch_cpu_seconds": [15.0, 12.0],
        "epoch_load": [1.0, 1.0], "train_seconds": 18.0, "train_cpu_seconds": 27.0, "train_tflops": 0.5,
        "seconds_to_0.99": 18.0, "cpu_seconds_to_0.99": 27.0, "seconds_to_0.993": None, "cpu_seconds_to_0.993": None}


def test_summary_over_seeds_and_its_report(tmp_path):
    runs = [synthetic_run("default", seed, accuracy) for seed, accuracy in ((1, 0.9935), (2, 0.9890), (3, 0.9930))]
    summary = summarize(runs)
    assert (summary["median"], summary["min"], summary["max"]) == (0.9930, 0.9890, 0.9935)
    assert summary["wilson_95_of_median_run"] == wilson_interval(1986, 2000)  # seed 3's run
    assert summary["reaches_target"] and summary["seconds_to_0.99"] == 18.0 and summary["seconds_to_0.993"] is None
    section = {"dataset": "mnist_10k", "test_images": 2000, "thresholds": [0.99, 0.993], "target": 0.993,
               "recipes": {"default": {"overrides": {}, **summary}}, "runs": runs, "plot": "curve.png"}
    text = "\n".join(markdown(section))
    assert "| default | params.yaml | 99.30% (98.90–99.35) |" in text and "| 18 (27) | never (never) | yes |" in text
    plot(section, tmp_path / "curve.png")
    assert Image.open(tmp_path / "curve.png").size == (1200, 500)


def test_seeds_and_recipes_from_the_command_line():
    config = benchmark.parse_args(["--quick", "--sections", "accuracy", "--seeds", "1,2", "--recipes", "default"])
    assert (config.seeds, config.recipes) == ([1, 2], ["default"])
    with pytest.raises(SystemExit):
        benchmark.parse_args(["--quick", "--recipes", "defualt"])
