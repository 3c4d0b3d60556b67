"""The benchmark's handwriting section: the default model against augmentation off, on other writers' styles.

Both are trained by the train stage on mnist-10k (run_child "stage"); each is then read on the 2,000 held-out digits
as they are and redrawn in other styles (benchmarks/styles.py: slanted, rotated, squashed or stretched,
thickened, thinned, blurred low-resolution, sloppy; inside and beyond the training ranges), and its calibration is
measured: the expected calibration error (15 bins) of the held-out digits before and after the temperature train
fitted on the validation digits, and how many held-out digits "not sure" flags. The default model is then read
through the reader on digits rendered as photos (benchmarks/photos.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

STYLE_DIGITS = 2000  # held-out digits redrawn per style (about 50 ms each per style on one core)


def measure(model_path: Path, run_json: Path, test_npz: Path, mnist_10k: Path, count: int) -> dict[str, Any]:
    import keras

    from benchmarks.styles import style_table
    from stages.core import calibration, records
    from stages.core.datasets import TEST_IMAGES, TEST_LABELS
    from stages.core.idx import read_idx

    model = keras.models.load_model(model_path, compile=False)
    digits, labels = read_idx(mnist_10k / TEST_IMAGES)[:count], read_idx(mnist_10k / TEST_LABELS)[:count]
    table = style_table(model, digits, labels)
    with np.load(test_npz) as test:
        probabilities, truth = model.predict(test["x"], batch_size=512, verbose=0), test["y"].argmax(axis=1)
    run = records.parse_run(run_json.read_text(), run_json)
    temperature = run.temperature
    calibrated = calibration.scaled(probabilities, temperature)
    flagged = calibrated.max(axis=1) < calibration.UNSURE_BELOW
    wrong = calibrated.argmax(axis=1) != truth
    return {"styles": table, "temperature": temperature,
            "ece": calibration.expected_calibration_error(probabilities, truth),
            "ece_calibrated": calibration.expected_calibration_error(calibrated, truth),
            "not_sure_share": float(flagged.mean()), "not_sure_wrong": float(wrong[flagged].mean()) if flagged.any()
            else None, "wrong_and_sure": float((wrong & ~flagged).mean()),
            "train_seconds": run.fields["train_seconds"]}


def photos_of(model_path: Path, mnist_10k: Path, quick: bool) -> dict[str, float]:
    """The default model through this checkout's reader on the photo forms (benchmarks/photos.py)."""
    import keras

    from benchmarks import photos
    from stages.core.datasets import TEST_IMAGES, TEST_LABELS
    from stages.core.idx import read_idx

    digits, labels = read_idx(mnist_10k / TEST_IMAGES), read_idx(mnist_10k / TEST_LABELS)
    model = keras.models.load_model(model_path, compile=False)
    return photos.photo_table(model, digits, labels, *photos.reader(), 50 if quick else photos.PHOTO_DIGITS,
                              20 if quick else photos.PHOTO_NUMBERS)


def markdown(section: dict[str, Any]) -> list[str]:
    """The per-style table, augmentation off and on side by side, then calibration."""
    off, on = section["off"], section["on"]
    lines = ["", "## Handwriting: other writers' styles", "",
             f"bn_cnn trained by the train stage on mnist-10k, augmentation off (`train.augment.enabled=false`) and "
             f"on (the default); accuracy on {section['digits']} held-out digits as they are and redrawn in other "
             "styles (benchmarks/styles.py), inside and beyond the default training ranges.", "",
             "| digits | augmentation off | default (on) |", "|---|---|---|"]
    lines += [f"| {style} | {off['styles'][style]:.2%} | {on['styles'][style]:.2%} |" for style in on["styles"]]
    lines += [f"| training seconds | {off['train_seconds']:.0f} | {on['train_seconds']:.0f} |", "",
              "| calibration (2,000 held-out digits, 15 bins) | augmentation off | default (on) |", "|---|---|---|"]
    for key, label in (("temperature", "temperature (fitted on validation)"), ("ece", "ECE before"),
                       ("ece_calibrated", "ECE after temperature scaling"), ("not_sure_share", "flagged not sure"),
                       ("not_sure_wrong", "of which wrong"), ("wrong_and_sure", "wrong and not flagged")):
        lines.append(f"| {label} | {format_value(off[key])} | {format_value(on[key])} |")
    if "photos" in section:
        lines += ["", "| the default through the reader (benchmarks/photos.py) | accuracy or numbers read exactly |",
                  "|---|---|"]
        lines += [f"| {form} | {value:.1%} |" for form, value in section["photos"].items()]
    return lines


def format_value(value) -> str:
    return "-" if value is None else f"{value:.4f}"
