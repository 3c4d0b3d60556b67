"""benchmarks/photos.py: the reader through every photo form, and the docs' table of forms (benchmarks/docs.py).
The oracle is the MNIST label of each digit a form was rendered from."""

from __future__ import annotations

import numpy as np

from benchmarks import docs, photos
from stages.reading.loading import ImageError


def test_every_form_is_measured_and_a_refused_digit_counts_as_wrong(model, test_digits, test_labels):
    table = photos.photo_table(model, test_digits, test_labels, *photos.reader(), count=6, numbers=2)
    assert set(table) == set(photos.single_forms()) | set(photos.NUMBER_FORMS)
    assert table["plain photo"] >= 5 / 6 and table["numbers of 2-6 digits, apart"] == 1.0

    def refuse(image, dataset):
        raise ImageError("refused")

    refused = photos.photo_table(model, test_digits, test_labels, refuse, refuse, count=2, numbers=1)
    assert set(refused.values()) == {0.0}


def test_the_table_of_forms_says_before_after_and_whether_each_target_is_met():
    snapshot = {"forms": {"numbers of 2-6 digits, apart": 0.9, "shadow": 0.975},
                "before": {"forms": {"shadow": float(np.float32(0.05))}}}
    assert docs.photo_forms(snapshot).splitlines()[2:] == [
        "| shadow | 5.0% | 97.5% | 97%: met |", "| numbers of 2-6 digits, apart | - | 90.0% | 93%: missed |"]
