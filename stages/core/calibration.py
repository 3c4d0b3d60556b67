"""Confidence a user can trust: temperature scaling, the expected calibration error, and "not sure".

train fits the temperature T on the validation digits and records it in {paths.run} (run.json: `temperature`,
with the validation ECE before and after); the model's readers (stages/reading/reader.py) answer with the logits
divided by T (folded into the model's last layer: stages/core/shipping.py `inference_model`), and say "not sure"
when the top calibrated probability is below UNSURE_BELOW.
NumPy and SciPy only: no TensorFlow.
"""

from __future__ import annotations

import numpy as np

from stages.core.errors import PipelineError

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


def fold_temperature(model, temperature: float):
    """`model` (a Keras model ending in a linear Dense layer and a softmax, as architectures.build makes it) with its
    logits divided by `temperature`: that Dense layer's kernel and bias scaled by 1/T, in place. No custom layer,
    so every file made from it answers calibrated and Keras' safe mode still loads it."""
    *body, last = model.layers
    logits = body[-1] if body else None
    if (type(last).__name__, last.get_config().get("activation")) != ("Activation", "softmax") or \
            type(logits).__name__ != "Dense" or logits.get_config().get("activation") != "linear":
        raise PipelineError(f"model {model.name}: cannot fold the temperature into it: it does not end in a linear "
                            "Dense layer and a softmax (stages/core/architectures.py builds that)")
    logits.set_weights([weight / temperature for weight in logits.get_weights()])
    return model
