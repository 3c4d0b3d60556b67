"""Architectures are data: named presets in architectures.yaml (or an inline list in params.yaml) and one builder.

A spec is a list of `{type: <keras.layers class>, <constructor arguments>...}`. `check_layer_list` validates the
types without importing TensorFlow (params load time); `resolve_spec` names the architecture once; `build_model`
turns a spec into a keras.Sequential and reports a bad argument or a shape that does not fit with the layer's
index; `load_model` is the one loader of a trained model file, with the one check of its shapes.
"""

from __future__ import annotations

import difflib
import functools
import json
import os
import re
import zipfile
from pathlib import Path
from typing import Any, NamedTuple

from stages.core.datasets import INPUT_SHAPE, NUM_CLASSES
from stages.core.errors import PipelineError, did_you_mean

PRESETS_FILE = Path(__file__).with_name("architectures.yaml")

# The keras.layers classes a spec may use: image layers and regularisers. Augmentation is no layer of the model: it
# lives in params.yaml's train.augment and is applied to the training data only (stages/core/augment.py).
LAYER_TYPES = (
    "Conv2D", "SeparableConv2D", "DepthwiseConv2D",
    "MaxPooling2D", "AveragePooling2D", "GlobalAveragePooling2D", "GlobalMaxPooling2D",
    "Dense", "Flatten", "Reshape", "ZeroPadding2D",
    "Dropout", "SpatialDropout2D", "GaussianNoise",
    "BatchNormalization", "LayerNormalization",
    "Activation", "ReLU", "LeakyReLU", "ELU",
)


class SpecError(ValueError):
    """A layer spec is malformed; the message names the layer's index and key."""


class ModelFileError(PipelineError):
    """A model file is missing, is not a Keras model, or does not map 28x28x1 images to the classes."""


class Architecture(NamedTuple):
    """What a model section describes, resolved once: logged as `model.name` and used for the run's name."""

    name: str  # the preset's name, or "custom" for an inline model.layers list
    layers: list[dict[str, Any]]
    where: str  # how build errors name the spec


@functools.cache
def presets() -> dict[str, list[dict[str, Any]]]:
    from ruamel.yaml import YAML

    loaded = YAML(typ="safe", pure=True).load(PRESETS_FILE.read_text())
    for name, layers in loaded.items():
        check_layer_list(layers, f"{PRESETS_FILE.name}: {name}")
    return loaded


def preset_names() -> list[str]:
    return list(presets())


def check_layer_list(layers: Any, where: str) -> None:
    """Check the structure and layer types of a spec; argument values are checked by Keras at build time."""
    if not isinstance(layers, list) or not layers:
        raise SpecError(f"{where} must be a non-empty list of layers")
    for index, layer in enumerate(layers):
        if not isinstance(layer, dict) or "type" not in layer:
            raise SpecError(f"{where}[{index}]: each layer needs a 'type' key, e.g. {{type: Dense, units: 10}}")
        kind = layer["type"]
        if str(kind).startswith("Random"):
            raise SpecError(f"{where}[{index}].type: {kind} is augmentation, which is no layer of the model: set it "
                            "in params.yaml under train.augment (applied to the training images only)")
        if kind not in LAYER_TYPES:
            close = difflib.get_close_matches(str(kind), LAYER_TYPES, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else f"; allowed: {', '.join(LAYER_TYPES)}"
            raise SpecError(f"{where}[{index}].type: unknown layer type {kind!r}{hint}")


def check_model(model) -> list[str]:
    """The problems of params.yaml's model section (schema.Model): an unknown preset, a bad layer list."""
    names, problems = preset_names(), []
    if model.architecture not in names:
        problems.append(f"model.architecture: unknown architecture {model.architecture!r}"
                        f"{did_you_mean(model.architecture, names)} (presets: {', '.join(names)})")
    if model.layers is not None:
        try:
            check_layer_list(model.layers, "model.layers")
        except SpecError as error:
            problems.append(str(error))
    return problems


def resolve_spec(architecture: str, layers: list[dict[str, Any]] | None) -> Architecture:
    """The architecture a model section describes: the inline list wins over the preset."""
    if layers is not None:
        return Architecture("custom", layers, "model.layers")
    return Architecture(architecture, presets()[architecture], f"preset {architecture}")


def keras_reason(error: Exception) -> str:
    """The line of a Keras error that says what is wrong.

    Keras wraps an error raised in a layer's call in "Exception encountered when calling X.call()", with the real
    reason on a later line in terminal bold, followed by the arguments received.
    """
    lines = [re.sub(r"\x1b\[[0-9;]*m", "", line).strip() for line in str(error).splitlines()]
    lines = [line for line in lines if line]
    if len(lines) > 1 and lines[0].startswith("Exception encountered when calling"):
        return lines[1]
    return lines[0] if lines else type(error).__name__


def build_model(layers: list[dict[str, Any]], name: str = "model", where: str = "model.layers"):
    """Build a keras.Sequential from a spec: 28x28x1 input, the spec's layers, then a float32 softmax."""
    import keras

    check_layer_list(layers, where)
    model = keras.Sequential(name=name)
    model.add(keras.Input(shape=INPUT_SHAPE, name="image"))
    for index, layer in enumerate(layers):
        arguments = {key: value for key, value in layer.items() if key != "type"}
        try:
            model.add(getattr(keras.layers, layer["type"])(**arguments))
        except (TypeError, ValueError) as error:
            message = keras_reason(error)
            raise SpecError(f"{where}[{index}] ({layer['type']}): {message}") from None
    if model.output_shape != (None, NUM_CLASSES):
        raise SpecError(
            f"{where}: the last layer must output {NUM_CLASSES} values (one per class), got {model.output_shape}; "
            f"end the list with {{type: Dense, units: {NUM_CLASSES}}}"
        )
    # Under mixed precision the softmax stays float32 so probabilities and the loss keep full precision.
    model.add(keras.layers.Activation("softmax", dtype="float32", name="probabilities"))
    return model


def code_bearing_layers(path: Path) -> list[str]:
    """The Lambda and non-Keras (custom) classes a .keras file's config names, read without running any of it:
    Keras' safe mode refuses them with a generic "could not be deserialized properly". Empty for a file that is
    not a .keras archive (Keras then says what is wrong with it)."""
    try:
        with zipfile.ZipFile(path) as archive:
            config = json.loads(archive.read("config.json"))
    except (OSError, KeyError, ValueError, zipfile.BadZipFile):
        return []
    found: list[str] = []

    def walk(node) -> None:
        if isinstance(node, dict):
            name, module = node.get("class_name"), node.get("module") or ""
            if isinstance(name, str) and "config" in node and not name.startswith("__") and (
                    name == "Lambda" or not module.startswith("keras")):
                found.append(f"{name} ({node.get('registered_name') or module or 'no module'})")
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(config)
    return list(dict.fromkeys(found))


def load_model(path: str | os.PathLike, num_classes: int, advice: str):
    """The trained model in `path`, for inference, checked to map 28x28x1 images to `num_classes` probabilities.

    safe_mode refuses files that would run code on load; compile=False skips the optimizer, which inference does
    not need. Any failure is one ModelFileError ending with `advice` (what the user should do).
    """
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"model file {path} not found: {advice}")
    refused = code_bearing_layers(path)
    if refused:
        raise ModelFileError(f"{path}: safe mode refused a Lambda or custom layer ({', '.join(refused)}); none of "
                             f"its code ran: {advice}")
    import keras

    try:
        model = keras.saving.load_model(path, compile=False, safe_mode=True)
    # Keras reports an unreadable archive with whatever its zip, h5 or deserialisation layer raised.
    except Exception as error:
        reason = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise ModelFileError(f"{path} is not a loadable Keras model ({reason}): {advice}") from None
    input_shape, output_shape = tuple(model.input_shape), tuple(model.output_shape)
    if input_shape[1:] != INPUT_SHAPE or output_shape[1:] != (num_classes,):
        raise ModelFileError(f"{path} maps {input_shape[1:]} to {output_shape[1:]}, expected {INPUT_SHAPE} images "
                             f"to {num_classes} class probabilities: {advice}")
    return model
