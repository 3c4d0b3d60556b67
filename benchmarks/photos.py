"""The benchmark's photo forms: the reader (stages/reading/) with a model, on held-out digits rendered the ways
people capture handwriting (benchmarks/photo_forms.py), and on whole numbers.

Each single-digit form renders PHOTO_DIGITS of mnist-10k's held-out digits (the same digits, the same random draws
for every reader) and scores the model's class on what the reader framed; a number form writes PHOTO_NUMBERS
numbers of 2-6 held-out digits and scores the number read exactly. A digit the reader refuses counts as wrong.

    python -m benchmarks.photos --model M --checkout OLD --out before.json
    python -m benchmarks.photos --model M --before before.json --out reports/photos.json

`--checkout` measures another checkout's reader (an older commit's worktree): its whole `stages` package is imported
instead of this one's, with this checkout's forms and scoring; `--before` carries such a measurement into the
output. The docs' table of forms (docs/handwriting.md) renders the snapshot docs/numbers/photo-forms.json:
`python -m benchmarks.docs --take photo-forms reports/photos.json`.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

PHOTO_DIGITS = 300  # held-out digits per single-digit form
PHOTO_NUMBERS = 200  # numbers per number form


def single_forms() -> dict[str, Callable]:
    """form name -> renderer(digit, rng) of one digit."""
    from benchmarks import photo_forms as photos

    forms = {"plain photo": lambda digit, rng: photos.as_photo(photos.digit_on_page(digit, rng))}
    forms.update({name.replace("_", " "): render for name, render in photos.FORMS.items()
                  if name not in ("marker_tight", "shadow_wedge", "coloured_ink")})
    for share in (0.12, 0.16, 0.2, 0.25):
        forms[f"marker, strokes {share:.0%} of the height, tight crop"] = (
            lambda digit, rng, share=share: photos.marker(digit, rng, share))
    forms["marker, strokes 20% of the height, on a page"] = lambda digit, rng: photos.marker(digit, rng, 0.2, False)
    for kind, strength in (("wedge", 0.3), ("wedge", 0.5), ("wedge", 0.7), ("band", 0.5), ("blob", 0.5)):
        forms[f"hard shadow: {kind}, {strength:.0%} of the light, any corner"] = (
            lambda digit, rng, kind=kind, strength=strength: photos.shadowed(digit, rng, strength, kind))
    for colour in photos.PEN_COLOURS:
        forms[f"{colour} ink on cream paper"] = lambda digit, rng, colour=colour: photos.coloured(digit, rng, colour)
    return forms


# number form -> (digits per number, lowest and highest; share of neighbours whose ink touches)
NUMBER_FORMS = {"numbers of 2-6 digits, apart": ((2, 6), 0.0),
                "numbers of 2-6 digits, a third of neighbours touching": ((2, 6), 1 / 3),
                "two digits touching": ((2, 2), 1.0)}


def classes(model, arrays: list[np.ndarray]) -> np.ndarray:
    return np.asarray(model.predict(np.stack(arrays), batch_size=500, verbose=0)).argmax(axis=1)


def photo_table(model, digits: np.ndarray, labels: np.ndarray, model_input, split_number,
                count: int = PHOTO_DIGITS, numbers: int = PHOTO_NUMBERS) -> dict[str, float]:
    """Accuracy per single-digit form, and the share of numbers read exactly per number form."""
    from benchmarks.photo_forms import written_number

    blank = np.zeros((28, 28, 1), np.float32)
    table = {}
    for form, render in single_forms().items():
        rng, arrays = np.random.default_rng(0), []
        for digit in digits[:count]:
            try:
                arrays.append(model_input(render(digit, rng), "mnist"))
            except Exception:  # noqa: BLE001 - a refused digit is a wrong digit, whatever the reader raised
                arrays.append(blank)
        table[form] = float(np.mean(classes(model, arrays) == labels[:count]))
        print(f"  {form}: {table[form]:.1%}", flush=True)
    for form, ((fewest, most), touching) in NUMBER_FORMS.items():
        rng, exact = np.random.default_rng(1), 0
        for _ in range(numbers):
            chosen = rng.choice(len(digits), size=int(rng.integers(fewest, most + 1)), replace=False)
            photo, _ = written_number(list(digits[chosen]), rng, touching=touching)
            try:
                found = split_number(photo, "mnist")
            except Exception:  # noqa: BLE001
                continue
            read = classes(model, [digit.array for digit in found])
            exact += len(found) == len(chosen) and bool(np.array_equal(read, labels[chosen]))
        table[form] = exact / numbers
        print(f"  {form}: {table[form]:.1%} read exactly", flush=True)
    return table


def reader() -> tuple[Callable, Callable]:
    """(model_input, split_number) of the reader of the `stages` package first on the path."""
    from stages.reading.numbers import model_input, split_number

    return model_input, split_number


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.photos", description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True, help="a .keras model file")
    parser.add_argument("--checkout", type=Path, help="another checkout whose reader to measure (default: this one)")
    parser.add_argument("--out", type=Path, required=True, help="where to write the table (JSON)")
    parser.add_argument("--count", type=int, default=PHOTO_DIGITS, help="held-out digits per form")
    parser.add_argument("--numbers", type=int, default=PHOTO_NUMBERS, help="numbers per number form")
    parser.add_argument("--before", type=Path, help="an earlier reader's output (JSON), kept beside this one")
    arguments = parser.parse_args(argv)
    if arguments.checkout is not None:
        sys.path.insert(0, str(arguments.checkout.resolve()))  # before any `stages` module is imported
    import keras

    import stages
    from stages.core.datasets import DATASETS, TEST_IMAGES, TEST_LABELS
    from stages.core.idx import read_idx

    folder = DATASETS["mnist_10k"].folder
    digits, labels = read_idx(folder / TEST_IMAGES), read_idx(folder / TEST_LABELS)
    started = time.perf_counter()
    table = photo_table(keras.models.load_model(arguments.model, compile=False), digits, labels,
                        *reader(), arguments.count, arguments.numbers)
    measured = {"forms": table, "digits": arguments.count, "numbers": arguments.numbers,
                "reader": str(Path(stages.__file__).parent), "model": str(arguments.model),
                "seconds": round(time.perf_counter() - started)}
    if arguments.before is not None:
        measured["before"] = json.loads(arguments.before.read_text())
    arguments.out.write_text(json.dumps(measured, indent=2) + "\n")
    print(f"wrote {arguments.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
