"""The strong default preset `bn_cnn`: builds, has the documented size, augments only in training."""

from __future__ import annotations

import numpy as np

from stages.architectures import build_model, presets


def test_bn_cnn_builds_with_the_documented_parameter_count():
    model = build_model(presets()["bn_cnn"], name="bn_cnn")
    assert model.output_shape == (None, 10)
    assert model.count_params() == 858_794


def test_bn_cnn_is_deterministic_at_inference_and_random_in_training():
    model = build_model(presets()["bn_cnn"], name="bn_cnn")
    images = np.random.default_rng(0).random((4, 28, 28, 1), dtype=np.float32)
    first, second = model(images, training=False), model(images, training=False)
    np.testing.assert_array_equal(np.asarray(first), np.asarray(second))
    np.testing.assert_allclose(np.asarray(first).sum(axis=1), 1.0, rtol=1e-5)
    shifted = model.layers[0](images, training=True)  # RandomTranslation moves the pixels only when training
    assert not np.array_equal(np.asarray(shifted), images)
