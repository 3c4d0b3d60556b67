"""stages/core/calibration.py: a temperature that made a model overconfident is recovered from its answers."""

from __future__ import annotations

import numpy as np
import pytest

from stages.core import calibration


def softmax(logits: np.ndarray) -> np.ndarray:
    exp = np.exp(logits - logits.max(axis=1, keepdims=True))
    return exp / exp.sum(axis=1, keepdims=True)


@pytest.mark.parametrize("temperature", [0.5, 2.0])
def test_a_generated_temperature_is_recovered(temperature):
    """Labels drawn from softmax(z): the true probabilities. The model answers softmax(z / T) (T < 1: overconfident,
    T > 1: underconfident); scaling its answers by the fitted temperature, 1 / T, gives softmax(z) back."""
    rng = np.random.default_rng(0)
    logits = rng.normal(scale=3.0, size=(20_000, 10))
    labels = np.array([rng.choice(10, p=row) for row in softmax(logits)])
    answers = softmax(logits / temperature)
    fitted = calibration.fit_temperature(answers, labels)
    assert fitted == pytest.approx(1 / temperature, rel=0.05)
    assert calibration.expected_calibration_error(calibration.scaled(answers, fitted), labels) < 0.02
