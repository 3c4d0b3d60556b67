"""The export formats, by name: data only (no exporter is imported here), so the params check, the export stage,
the registry and predict's loader all take the list from this one place. Each format's exporter and runtime live
beside it in stages/core/shipping.py (EXPORTERS, RUNTIMES), keyed by the same name.

  name     what export.formats says
  file     the file's name in {paths.export_dir}; its suffix is how predict recognises the format
  flavour  the MLflow flavour that logs the file as a model (None: logged as a plain artifact under <name>/)
  kind     registered as <prefix><dataset>-cnn-<kind> when it has a flavour (None: not registered)
  runtime  the pip package that runs the file (named in the error when it cannot be imported)
  packages the pip packages its exporter and the MLflow flavour need besides TensorFlow
  quantizes the float format it is an int8 copy of (None: a float format): its file is checked by export.int8's gate
            against the float Keras model, and its size against that format's file
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import PurePath

from stages.core.errors import did_you_mean


@dataclass(frozen=True)
class Format:
    name: str
    file: str
    flavour: str | None
    kind: str | None
    runtime: str
    packages: tuple[str, ...] = ()
    quantizes: str | None = None

    @property
    def suffix(self) -> str:
        return PurePath(self.file).suffix


FORMATS: dict[str, Format] = {format.name: format for format in (
    Format("onnx", "model.onnx", flavour="onnx", kind="onnx", runtime="onnxruntime", packages=("tf2onnx", "onnx")),
    Format("litert", "model.tflite", flavour=None, kind=None, runtime="ai-edge-litert"),
    # int8 copies (weights and activations), float inputs and outputs: opt-in, export.formats' default stays float
    Format("onnx_int8", "model_int8.onnx", flavour="onnx", kind="onnx-int8", runtime="onnxruntime",
           packages=("tf2onnx", "onnx"), quantizes="onnx"),
    Format("litert_int8", "model_int8.tflite", flavour=None, kind=None, runtime="ai-edge-litert",
           quantizes="litert"),
)}


def check_formats(names: list[str]) -> list[str]:
    """The problems of export.formats: a name no format has."""
    return [f"export.formats: unknown format {name!r}{did_you_mean(name, FORMATS)} (formats: {', '.join(FORMATS)})"
            for name in names if name not in FORMATS]


def by_suffix(suffix: str) -> Format | None:
    """The float format whose files end in `suffix` (.onnx, .tflite), or None: its runtime runs the int8 copy too."""
    return next((format for format in FORMATS.values() if format.suffix == suffix.lower() and not format.quantizes),
                None)


def registered_kinds() -> tuple[str, ...]:
    """The registered models' kinds besides the tensor model ("") and the image model ("images")."""
    return tuple(format.kind for format in FORMATS.values() if format.kind)
