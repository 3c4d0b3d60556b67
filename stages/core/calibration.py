"""Confidence a user can trust: temperature scaling, the expected calibration error, and "not sure".

train fits the temperature T on the validation digits and records it in {paths.run} (run.json: `temperature`,
with the validation ECE before and after); predict and the drawing page divide the model's log-probabilities by T
before reporting them, and say "not sure: 4 or 9" when the top calibrated probability is below UNSURE_BELOW.
NumPy and SciPy only: no TensorFlow.
"""

from __future__ import annotations

import numpy as np

# Below this calibrated top probability a reading is "not sure". Measured on mnist_10k's 2,000 held-out digits with
# the default model (README, "Confidence"): it flags 0.85% of them, 47% of which are wrong (0.5 flags 0.2%, 0.9
# flags 2.2%).
UNSURE_BELOW = 0.7
ECE_BINS = 15


def log_probabilities(probabilities: np.ndarray) -> np.ndarray:
    return np.log(np.clip(np.asarray(probabilities, dtype=np.float64), 1e-12, 1.0))


def scaled(probabilities: np.ndarray, temperature: float) -> np.ndarray:
    """softmax(log p / T): the model ends in a softmax, so log p are its logits up to a constant per row."""
    logits = log_probabilities(probabilities) / temperature
    logits -= logits.max(axis=-1, keepdims=True)
    exp = np.exp(logits)
    return exp / exp.sum(axis=-1, keepdims=True)


def fit_temperature(probabilities: np.ndarray, labels: np.ndarray) -> float:
    """The T > 0 minimising the negative log-likelihood of `labels` (class indices) under scaled probabilities."""
    from scipy.optimize import minimize_scalar

    rows = np.arange(len(labels))

    def nll(log_t: float) -> float:
        return float(-np.log(np.clip(scaled(probabilities, np.exp(log_t))[rows, labels], 1e-12, 1)).mean())

    return float(np.exp(minimize_scalar(nll, bounds=(-3, 3), method="bounded").x))


def expected_calibration_error(probabilities: np.ndarray, labels: np.ndarray, bins: int = ECE_BINS) -> float:
    """Sum over equal-width confidence bins of |accuracy - mean confidence|, weighted by the bin's share."""
    confidence, correct = probabilities.max(axis=1), probabilities.argmax(axis=1) == labels
    which = np.clip(np.ceil(confidence * bins).astype(int) - 1, 0, bins - 1)
    return float(sum(abs(correct[which == b].mean() - confidence[which == b].mean()) * np.mean(which == b)
                     for b in range(bins) if np.any(which == b)))


def calibrate(probabilities: np.ndarray, labels: np.ndarray) -> dict:
    """What train records: T fitted on these (validation) digits, and their ECE before and after."""
    temperature = fit_temperature(probabilities, labels)
    return {"temperature": round(temperature, 4),
            "val_ece": round(expected_calibration_error(probabilities, labels), 4),
            "val_ece_calibrated": round(expected_calibration_error(scaled(probabilities, temperature), labels), 4)}


def unsure(probabilities: np.ndarray, class_names: list[str], unlike_a_digit: bool = False) -> str | None:
    """"not sure: 4 or 9" when the top (calibrated) probability is below UNSURE_BELOW or the input is unlike a
    digit (stages/reading/framing.py `unlike_a_digit`: a confident softmax says nothing about a page of specks),
    else None."""
    order = np.argsort(-probabilities, kind="stable")
    if probabilities[order[0]] >= UNSURE_BELOW and not unlike_a_digit:
        return None
    return f"not sure: {class_names[order[0]]} or {class_names[order[1]]}"


class CalibratedModel:
    """A Keras model whose predictions are temperature-scaled; everything else is the model's own."""

    def __init__(self, model, temperature: float):
        self.model, self.temperature = model, temperature

    def predict(self, *args, **kwargs) -> np.ndarray:
        return scaled(self.model.predict(*args, **kwargs), self.temperature)

    def predict_on_batch(self, *args, **kwargs) -> np.ndarray:
        return scaled(np.asarray(self.model.predict_on_batch(*args, **kwargs)), self.temperature)

    def __getattr__(self, name: str):
        return getattr(self.model, name)
