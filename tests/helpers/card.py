"""The model card's oracle: every number in each section of a card, in order, against the run's files read here with
json and pandas (not the card's readers), and the Wilson interval by its formula (the card uses SciPy's)."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pandas as pd
import pytest

from stages.core.formats import FORMATS

NUMBER = re.compile(r"(?<![\w.])-?\d[\d,]*(?:\.\d+)?(?:e-?\d+)?(?![\w])")
Z95 = 1.959963984540054  # the normal quantile of a two-sided 95% interval


def sections(card: str) -> dict[str, str]:
    """`## heading` -> its text; the title and the lines before the first heading under ""."""
    parts = re.split(r"^## (.+)$", card, flags=re.MULTILINE)
    return {"": parts[0], **dict(zip(parts[1::2], parts[2::2], strict=True))}


def numbers(text: str) -> list[float]:
    """Every number in `text` outside `code spans` (names, hashes and files), commas read as thousands."""
    return [float(token.replace(",", "")) for token in NUMBER.findall(re.sub(r"`[^`]*`", "", text))]


def wilson(right: int, total: int) -> tuple[float, float]:
    share, spread = right / total, Z95 ** 2 / total
    centre = (share + spread / 2) / (1 + spread)
    half = Z95 * math.sqrt(share * (1 - share) / total + spread / (4 * total)) / (1 + spread)
    return centre - half, centre + half


def named(name) -> list[float]:
    """A class name that is a number (MNIST's "0".."9") is one of the numbers its row shows."""
    return [float(name)] if re.fullmatch(r"\d+", str(name)) else []


def expected(paths) -> dict[str, list[float]]:
    """Each section's numbers, in order, from the files themselves."""
    run = json.loads(Path(paths.run).read_text())
    info = json.loads((Path(paths.processed) / "dataset.json").read_text())
    metrics = json.loads(Path(paths.metrics).read_text())
    per_class, confusion = pd.read_csv(paths.per_class), pd.read_csv(paths.confusion)
    report = json.loads(Path(paths.export).read_text())
    counts = confusion.drop(columns="actual").to_numpy()
    own_images = info["splits"]["train"].get("own_images")
    settings = run["settings"]
    right, total = int(counts.trace()), int(counts.sum())
    assert total == info["splits"]["test"]["images"]
    mistakes = sorted((-counts[a, p], a, p) for a in range(len(counts)) for p in range(len(counts))
                       if a != p and counts[a, p])[:5]
    names = list(confusion["actual"])
    own = info["splits"].get("own_test")
    return {
        "": [],
        "Data": [*(entry["images"] for entry in info["splits"].values()), *([own_images] if own_images else [])],
        "Training": [run["parameters"], run["kept_epoch"] or run["epochs_run"], run["epochs_run"],
                     run["best_val_accuracy"], settings["learning_rate"], settings["epochs"], settings["batch_size"],
                     settings["label_smoothing"], *([settings["own_weight"]] if own_images else [])],
        "Held-out accuracy": [metrics["test_accuracy"], right, total, 95, *wilson(right, total), metrics["macro_f1"],
                              metrics["test_loss"]],
        "Per class": [value for row in per_class.itertuples()
                      for value in (*named(row.name), row.precision, row.recall, row.support)],
        "Most confused": [value for count, a, p in mistakes for value in (*named(names[a]), *named(names[p]), -count)],
        "Calibration": [run["temperature"], run["val_ece"], run["val_ece_calibrated"]],
        "Your own digits": [metrics["own_test_accuracy"], own["images"]] if own and own["images"] else [],
        "Export formats": [value for name in FORMATS if name in report["files"] for value in (
            report["files"][name]["bytes"], report["files"][name]["test_accuracy"], report[name]["agreement"])],
        "Not measured by this run": [],
    }


def check_card(card: str, paths) -> None:
    """Each number of the card equals its source (to the 4 decimals shown); the limits are quoted verbatim."""
    found = sections(card)
    limits = found.pop("Known limits")
    assert set(found) == set(want := expected(paths)), f"the card's sections: {list(found)}"
    for heading, values in want.items():
        shown = numbers(found[heading])
        assert shown == pytest.approx([float(value) for value in values], abs=5.1e-5, rel=1e-6), (heading, shown)
    quotes = re.findall(r'^- (docs/[\w.-]+): "(.+)"$', limits, flags=re.MULTILINE)
    assert quotes
    root = Path(__file__).resolve().parents[2]
    for page, quote in quotes:
        assert quote in " ".join((root / page).read_text().split()), f"{page} does not say: {quote}"
