"""Calibration (stages/core/calibration.py) against answers generated with a known temperature, and on real digits.

The oracle: labels drawn from softmax(z) are what a calibrated model would predict; a model that reports
softmax(T z) is overconfident by T, so the fit must find T (log p / T = z + a constant per row)."""

from __future__ import annotations

import numpy as np
import pytest

from stages.core import calibration
from stages.core.datasets import class_names

N = 5_000


def softmax(logits: np.ndarray) -> np.ndarray:
    exp = np.exp(logits - logits.max(axis=1, keepdims=True))
    return exp / exp.sum(axis=1, keepdims=True)


def generated(temperature: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """N answers over 10 classes overconfident by `temperature`, and labels drawn from the calibrated ones."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, 2.0, (N, 10))
    logits[np.arange(N), rng.integers(0, 10, N)] += 3.0  # a favourite class per row, as a classifier has
    calibrated = softmax(logits)
    labels = np.array([rng.choice(10, p=row) for row in calibrated])
    return softmax(logits * temperature), labels


@pytest.mark.parametrize("temperature", [0.5, 2.5])
def test_the_fit_recovers_a_generated_temperature_within_5_percent(temperature):
    probabilities, labels = generated(temperature)
    assert calibration.fit_temperature(probabilities, labels) == pytest.approx(temperature, rel=0.05)


def test_scaling_by_the_fitted_temperature_lowers_the_calibration_error():
    probabilities, labels = generated(2.5, seed=1)
    record = calibration.calibrate(probabilities, labels)
    assert record["val_ece_calibrated"] < record["val_ece"] / 2, record
    assert record["temperature"] == pytest.approx(2.5, rel=0.05)
    # ECE from its definition, by hand: 15 equal-width bins of the top probability.
    confidence, correct = probabilities.max(axis=1), probabilities.argmax(axis=1) == labels
    bins = np.minimum((confidence * 15).astype(int), 14)
    by_hand = sum(abs(correct[bins == b].mean() - confidence[bins == b].mean()) * np.mean(bins == b)
                  for b in np.unique(bins))
    assert calibration.expected_calibration_error(probabilities, labels) == pytest.approx(by_hand, rel=1e-9)


def test_the_error_of_a_hand_made_answer_set():
    """Two answers right at 0.99 and 0.55, two wrong at 0.9 and 0.55: bins 14, 13 and 8 (of 15) hold one, one and
    two of them; |1 - 0.99| / 4 + |0 - 0.9| / 4 + |0.5 - 0.55| * 2 / 4 = 0.2525."""
    def answer(top: float, predicted: int) -> list[float]:
        rest = (1 - top) / 9
        return [top if k == predicted else rest for k in range(10)]

    probabilities = np.array([answer(0.99, 3), answer(0.9, 4), answer(0.55, 5), answer(0.55, 6)])
    labels = np.array([3, 0, 5, 0])
    assert calibration.expected_calibration_error(probabilities, labels) == pytest.approx(0.2525)


def test_a_folded_temperature_answers_the_scaled_probabilities_and_is_otherwise_the_model():
    import keras

    keras.utils.set_random_seed(0)
    # A bias of its own: with Keras' zeros, a fold that forgot to scale the bias would pass.
    logits = keras.layers.Dense(10, bias_initializer=keras.initializers.RandomNormal(stddev=1.0))
    model = keras.Sequential([keras.Input((4,)), logits, keras.layers.Activation("softmax")])
    inputs = np.random.default_rng(0).normal(size=(8, 4)).astype(np.float32)
    expected = calibration.scaled(model.predict(inputs, verbose=0), 2.0)
    folded = calibration.fold_temperature(model, 2.0)
    np.testing.assert_allclose(folded.predict(inputs, verbose=0), expected, rtol=1e-5, atol=1e-7)
    assert folded.count_params() == 50


def test_scaling_keeps_the_ranking_and_flattens_or_sharpens():
    probabilities, _ = generated(1.0, seed=2)
    flatter, sharper = calibration.scaled(probabilities, 2.0), calibration.scaled(probabilities, 0.5)
    np.testing.assert_array_equal(flatter.argmax(axis=1), probabilities.argmax(axis=1))
    assert np.all(flatter.max(axis=1) <= probabilities.max(axis=1) + 1e-12)
    assert np.all(sharper.max(axis=1) >= probabilities.max(axis=1) - 1e-12)
    np.testing.assert_allclose(calibration.scaled(probabilities, 1.0), probabilities, atol=1e-9)


def test_below_the_bar_or_unlike_a_digit_is_not_sure_naming_the_two_first_classes():
    from stages.reading.reader import Answer

    names = class_names("mnist")

    def not_sure(probabilities, unlike_a_digit=False):
        return Answer("x.png", np.asarray(probabilities), names, unlike_a_digit).not_sure

    assert not_sure(np.full(10, 0.1)) == "not sure: 0 or 1"  # an answer spread evenly
    sure = np.eye(10)[7] * 0.9 + 0.01
    assert not_sure(sure) is None
    assert not_sure(sure, unlike_a_digit=True) == "not sure: 7 or 0"
    bar = calibration.UNSURE_BELOW
    split = np.array([bar, 1 - bar - 0.08, *[0.01] * 8])
    assert not_sure(split) is None  # at the bar is sure
    below = split + [-0.001, 0.001, *[0] * 8]
    assert not_sure(below) == "not sure: 0 or 1"


def test_a_clean_held_out_digit_is_sure(model, test_digits, test_labels):
    """The session's model, calibrated on 500 held-out digits, read on 500 others: a digit it reads right with its
    calibrated confidence is rarely "not sure" (a fit that flattens every answer makes them all unsure)."""
    from stages.preprocess import normalize

    probabilities = model.predict(normalize(test_digits[:1000]), verbose=0)
    temperature = calibration.fit_temperature(probabilities[:500], test_labels[:500])
    answers = calibration.scaled(probabilities[500:], temperature)
    right = answers.argmax(axis=1) == test_labels[500:1000]
    from stages.reading.reader import Answer

    unsure = [Answer("x.png", answer, class_names("mnist")).not_sure is not None for answer in answers[right]]
    assert np.mean(unsure) < 0.05, (temperature, np.mean(unsure))
