"""Architectures: every preset builds, inline specs and their errors, the strong default bn_cnn, the model loader."""

from __future__ import annotations

import numpy as np
import pytest

from stages.core.architectures import (
    ModelFileError,
    SpecError,
    build_model,
    check_layer_list,
    check_model,
    load_model,
    presets,
    resolve_spec,
)
from stages.core.schema import ParamsError

EXPECTED_PARAMETERS = {"single_conv": 217_610, "lenet": 1_256_080}


@pytest.mark.parametrize("name", list(presets()))
def test_every_preset_builds_to_ten_probabilities(name):
    model = build_model(presets()[name], name=name)
    assert model.output_shape == (None, 10)
    if name in EXPECTED_PARAMETERS:
        assert model.count_params() == EXPECTED_PARAMETERS[name]


def test_custom_inline_spec_builds(make_params):
    layers = [{"type": "Conv2D", "filters": 4, "kernel_size": 3, "activation": "relu"},
              {"type": "GlobalAveragePooling2D"}, {"type": "Dense", "units": 10}]
    params = make_params(model__layers=layers)
    architecture = resolve_spec(params.model.architecture, params.model.layers)
    assert architecture.name == "custom"
    assert build_model(architecture.layers).count_params() == (9 * 4 + 4) + (4 * 10 + 10)


def test_unknown_layer_type_fails_before_any_training(make_params):
    """The params stage (tests/test_params.py) and train check the layer list before TensorFlow starts."""
    from stages import train

    params = make_params(model__layers=[{"type": "Flatten"}, {"type": "Dens", "units": 10}])
    with pytest.raises(ParamsError, match=r"model\.layers\[1\]\.type: unknown layer type 'Dens'; did you mean 'Dense'"):
        train.run(params)


@pytest.mark.parametrize(("layers", "message"), [
    ([{"type": "Flatten"}, {"type": "Dense", "unit": 10}], r"model\.layers\[1\] \(Dense\): .*unit"),
    ([{"type": "Conv2D", "filters": 8, "kernel_size": 40}, {"type": "Flatten"}, {"type": "Dense", "units": 10}],
     r"model\.layers\[0\] \(Conv2D\)"),
    ([{"type": "Flatten"}, {"type": "Dense", "units": 7}], r"last layer must output 10 values"),
])
def test_bad_spec_fails_at_build_with_layer_index(layers, message):
    with pytest.raises(SpecError, match=message):
        build_model(layers)


def test_bn_cnn_builds_with_the_documented_parameter_count():
    model = build_model(presets()["bn_cnn"], name="bn_cnn")
    assert model.output_shape == (None, 10)
    assert model.count_params() == 858_794


def test_bn_cnn_is_deterministic_at_inference():
    model = build_model(presets()["bn_cnn"], name="bn_cnn")
    images = np.random.default_rng(0).random((4, 28, 28, 1), dtype=np.float32)
    first, second = model(images, training=False), model(images, training=False)
    np.testing.assert_array_equal(np.asarray(first), np.asarray(second))
    np.testing.assert_allclose(np.asarray(first).sum(axis=1), 1.0, rtol=1e-5)


def test_augmentation_layers_are_refused_with_where_augmentation_lives(make_params):
    layers = [{"type": "RandomRotation", "factor": 0.1}, {"type": "Flatten"}, {"type": "Dense", "units": 10}]
    assert check_model(make_params(model__layers=layers).model) == [
        "model.layers[0].type: RandomRotation is augmentation, which is no layer of the model: set it in params.yaml "
        "under train.augment (applied to the training images only)"]
    with pytest.raises(SpecError, match=r"preset x\[0\]\.type: RandomTranslation is augmentation.*train\.augment"):
        check_layer_list([{"type": "RandomTranslation", "height_factor": 0.1}], "preset x")


def test_the_loader_names_a_missing_model_and_what_to_do(tmp_path):
    with pytest.raises(ModelFileError, match=r"model file .*model\.keras not found: run `dvc repro train`"):
        load_model(tmp_path / "model.keras", 10, advice="run `dvc repro train`")


def test_the_loader_refuses_a_model_for_other_inputs(tmp_path):
    import keras

    other = keras.Sequential([keras.Input(shape=(8,)), keras.layers.Dense(3, activation="softmax")])
    other.save(tmp_path / "other.keras")
    with pytest.raises(ModelFileError, match=r"maps \(8,\) to \(3,\), expected \(28, 28, 1\) images to 10 class"):
        load_model(tmp_path / "other.keras", 10, advice="retrain")


def test_safe_mode_names_the_lambda_or_custom_layer_it_refused(tmp_path, model_path):
    import keras

    ran = tmp_path / "code-ran"

    @keras.saving.register_keras_serializable(package="mine")
    class Twice(keras.layers.Layer):
        def call(self, inputs):
            return inputs * 2

        @classmethod
        def from_config(cls, config):
            ran.touch()  # would run on load without safe mode's check
            return cls(**config)

    inputs = keras.Input(shape=(28, 28, 1))
    flat = keras.layers.Flatten()(inputs)
    for name, layer in (("lambda", keras.layers.Lambda(lambda x: x * 2)), ("custom", Twice())):
        model = keras.Model(inputs, keras.layers.Dense(10, activation="softmax")(layer(flat)))
        model.save(tmp_path / f"{name}.keras")
    with pytest.raises(ModelFileError, match=r"lambda\.keras: safe mode refused a Lambda or custom layer \(Lambda "
                                             r"\(keras\.layers\).*\); none of its code ran: retrain$"):
        load_model(tmp_path / "lambda.keras", 10, advice="retrain")
    with pytest.raises(ModelFileError, match=r"custom\.keras: safe mode refused a Lambda or custom layer \(Twice "
                                             r"\(mine>Twice\)\)"):
        load_model(tmp_path / "custom.keras", 10, advice="retrain")
    assert not ran.exists()
    assert load_model(model_path, 10, advice="retrain").count_params() > 0  # the project's own models pass
