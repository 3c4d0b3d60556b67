"""The trained model shipped: an inference model without training-only layers, its ONNX and LiteRT files, the
runtimes that run them, and `load_any`, the one loader predict uses for a .keras, .onnx or .tflite file or an MLflow
model URI (models:/name@alias). ONNX Runtime and the LiteRT interpreter run without TensorFlow: nothing here imports
it unless a Keras model is built, exported or loaded.

Every runtime model has Keras' two inference calls, `predict(images, verbose=0)` and `predict_on_batch(images)`, so
predict and the drawing page use any of them as they use a Keras model.
"""

from __future__ import annotations

import hashlib
import os
import warnings
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from stages.core.architectures import ModelFileError, load_model
from stages.core.calibration import fold_temperature
from stages.core.datasets import INPUT_SHAPE
from stages.core.errors import DISK_FULL, PipelineError
from stages.core.files import atomic_path
from stages.core.formats import FORMATS, by_suffix
from stages.core.quiet import (
    CONVERTER_CHATTER,
    LITERT_NOISE,
    drop_retracing_advice,
    start_tensorflow_quietly,
    stderr_without,
)
from stages.core.records import read_export

KERAS_SUFFIX = ".keras"
INPUT_NAME, OUTPUT_NAME = "image", "probabilities"
# The metadata key (ONNX metadata_props, the registered tensor model's MLmodel metadata) naming the temperature
# already folded into the model's weights: its probabilities are calibrated as they come out.
TEMPERATURE_KEY = "temperature"


class ExportError(ModelFileError):
    """A format's exporter or runtime is missing or fails, or its file disagrees with the Keras model."""


# ---------------------------------------------------------------------------------------------------- exporting


def is_training_only(layer) -> bool:
    """Random augmentation (RandomTranslation, RandomZoom...): identity at inference, random ops once exported."""
    return type(layer).__name__.startswith("Random")


def inference_model(model, temperature: float = 1.0):
    """A float32 functional copy of `model` without its training-only layers, each layer rebuilt from its config in
    float32 and given the trained weights (BatchNormalization's moving statistics included), calibrated: the logits
    divided by `temperature` (train's, run.json; calibration.fold_temperature), so every file made from it answers
    calibrated on its own.

    Exporters call the model without training=False, so an augmentation layer left in would be exported as random
    ops (ONNX Runtime has no StatelessRandomUniformV2); a mixed-precision model is shipped in float32.
    """
    import keras

    inputs = keras.Input(shape=INPUT_SHAPE, dtype="float32", name=INPUT_NAME)
    outputs = inputs
    for layer in model.layers:
        if is_training_only(layer):
            continue
        twin = type(layer).from_config({**layer.get_config(), "dtype": "float32"})
        outputs = twin(outputs)
        twin.set_weights(layer.get_weights())
    rebuilt = keras.Model(inputs, outputs, name=model.name)
    return rebuilt if temperature == 1.0 else fold_temperature(rebuilt, temperature)


def export_onnx(inference, path: str | os.PathLike, metadata: dict[str, str]) -> None:
    """Keras' ONNX export (tf2onnx): input `image`, output renamed from `Identity:0` to `probabilities`, `metadata`
    in the file's metadata_props."""
    import tensorflow as tf

    signature = [tf.TensorSpec((None, *INPUT_SHAPE), tf.float32, name=INPUT_NAME)]
    inference.export(str(path), format="onnx", verbose=False, input_signature=signature)
    name_onnx_output(path, metadata)


def export_litert(inference, path: str | os.PathLike, metadata: dict[str, str]) -> None:
    """Keras' own LiteRT converter (the path must end in .tflite)."""
    inference.export(str(path), format="litert", verbose=False)


class CalibrationImages:
    """ONNX Runtime's CalibrationDataReader protocol (get_next until None) over training images, in batches."""

    def __init__(self, images: np.ndarray, batch_size: int = 100):
        self.batches = iter([{INPUT_NAME: images[start:start + batch_size]}
                             for start in range(0, len(images), batch_size)])

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self.batches, None)


def export_onnx_int8(inference, path: str | os.PathLike, metadata: dict[str, str], calibration: np.ndarray) -> None:
    """ONNX Runtime's static quantisation of the float ONNX file, pre-processed as ONNX Runtime advises (shapes
    inferred, graph optimised): QDQ, int8 weights per output channel, uint8 activations (ONNX Runtime's fast pair
    on x86), ranges from `calibration` (training images) at their 99.999th percentile (min-max lets a few extreme
    activations coarsen the steps: 5 digits in 2,000 changed class against 1). Softmax stays float: quantised, its
    probabilities would come in steps of 1/256 and the calibrated confidence with them."""
    import contextlib
    import io
    import tempfile

    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    with tempfile.TemporaryDirectory() as folder, contextlib.redirect_stdout(io.StringIO()):  # calibration chatter
        float_path, prepared = Path(folder) / "float.onnx", Path(folder) / "prepared.onnx"
        export_onnx(inference, float_path, {})
        quant_pre_process(str(float_path), str(prepared), skip_symbolic_shape=True)  # symbolic shapes need sympy
        quantize_static(str(prepared), str(path), CalibrationImages(calibration), quant_format=QuantFormat.QDQ,
                        per_channel=True, weight_type=QuantType.QInt8, activation_type=QuantType.QUInt8,
                        calibrate_method=CalibrationMethod.Percentile, op_types_to_quantize=QUANTIZED_ONNX_OPS)
    name_onnx_output(path, metadata)


QUANTIZED_ONNX_OPS = ["Conv", "MatMul", "Gemm", "Add", "Relu", "MaxPool", "Reshape", "Transpose", "Flatten"]


def export_litert_int8(inference, path: str | os.PathLike, metadata: dict[str, str], calibration: np.ndarray) -> None:
    """Keras' LiteRT export with TFLiteConverter's full-integer options (the float file's converter, same
    SavedModel route; Keras passes the options through): int8 builtins only, ranges from `calibration` (training
    images), float input and output."""
    import tensorflow as tf

    def representative_dataset():
        for image in calibration:
            yield [image[np.newaxis].astype(np.float32)]

    inference.export(str(path), format="litert", verbose=False, optimizations=[tf.lite.Optimize.DEFAULT],
                     representative_dataset=representative_dataset,
                     target_spec={"supported_ops": [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]})


def export_model(inference, format: str, path: str | os.PathLike, metadata: dict[str, str],
                 calibration: np.ndarray | None = None) -> None:
    """Write `inference` as `format` to `path` (a temporary file: the caller renames it once checked); an int8
    format takes its ranges from `calibration`, a few hundred training images."""
    drop_retracing_advice()
    extra = (calibration,) if FORMATS[format].quantizes else ()
    # The converters log every step of their work at INFO and WARNING level; their errors still show.
    with stderr_without(CONVERTER_CHATTER.match), warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # tf2onnx's numpy-2 shims warn about np.object on import
        EXPORTERS[format](inference, path, metadata, *extra)


def name_onnx_output(path: str | os.PathLike, metadata: dict[str, str]) -> None:
    import onnx

    graph_model = onnx.load(str(path))
    old = graph_model.graph.output[0].name
    for node in graph_model.graph.node:
        node.output[:] = [OUTPUT_NAME if name == old else name for name in node.output]
    graph_model.graph.output[0].name = OUTPUT_NAME
    for key, value in metadata.items():
        graph_model.metadata_props.add(key=key, value=value)
    onnx.checker.check_model(graph_model)
    onnx.save(graph_model, str(path))


def compare(probabilities: np.ndarray, reference: np.ndarray) -> dict[str, float]:
    """Share of images given the same class, and the largest difference of any probability."""
    return {"agreement": float(np.mean(probabilities.argmax(axis=1) == reference.argmax(axis=1))),
            "max_abs_diff": float(np.max(np.abs(probabilities.astype(np.float64) - reference)))}


def float_gate(reference: np.ndarray, tolerance: float):
    """A float file's check: Keras' class on every image, no probability further than `tolerance` from it."""

    def gate(probabilities: np.ndarray, size: int) -> tuple[dict[str, float], str | None]:
        result = compare(probabilities, reference)
        if result["agreement"] == 1 and result["max_abs_diff"] <= tolerance:
            return result, None
        return result, (f"same class on {result['agreement']:.2%} of them, max |Δp| {result['max_abs_diff']:.2g} "
                        f"(allowed: every class, {tolerance:g})")

    return gate


def int8_gate(reference: np.ndarray, labels: np.ndarray, float_bytes: int, limits):
    """An int8 file's check (`limits`: export.int8): Keras' class on at least limits.agreement of the images, at
    most limits.accuracy_loss of accuracy lost, at most limits.size_ratio of the float file's `float_bytes`, and
    answers that vary across the images (a quantisation that saturates answers one class, or one vector, for all)."""

    def gate(probabilities: np.ndarray, size: int) -> tuple[dict[str, float], str | None]:
        result = compare(probabilities, reference)
        classes = probabilities.argmax(axis=1)
        result |= {"accuracy_loss": float(np.mean(reference.argmax(axis=1) == labels) - np.mean(classes == labels)),
                   "size_ratio": size / float_bytes, "classes_answered": len(np.unique(classes))}
        varied = result["classes_answered"] > 1 and float(np.ptp(probabilities, axis=0).max()) > 0
        if (result["agreement"] >= limits.agreement and result["accuracy_loss"] <= limits.accuracy_loss
                and result["size_ratio"] <= limits.size_ratio and varied):
            return result, None
        return result, (f"same class on {result['agreement']:.2%} of them (at least {limits.agreement:.2%}), "
                        f"accuracy {-result['accuracy_loss'] * 100:+.2f} points (at least "
                        f"{-limits.accuracy_loss * 100:+.2f}), {result['size_ratio']:.0%} of the float file's size (at "
                        f"most {limits.size_ratio:.0%}), {result['classes_answered']} classes answered "
                        f"({'varied' if varied else 'degenerate'})")

    return gate


def float_file_bytes(inference, format: str, metadata: dict[str, str]) -> int:
    """The size of `inference` exported as the float `format`, written to a temporary folder and removed."""
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / FORMATS[format].file
        export_model(inference, format, path, metadata)
        return path.stat().st_size


def export_checked(inference, format: str, path: str | os.PathLike, images: np.ndarray, gate,
                   metadata: dict[str, str], calibration: np.ndarray | None = None) -> dict[str, float]:
    """Export, run the file with its own runtime on `images`, and put it at `path` only if `gate` (float_gate,
    int8_gate) passes its probabilities and size. Returns the gate's figures, the file's bytes and its
    probabilities."""
    path = Path(path)
    with atomic_path(path) as temporary:
        try:
            export_model(inference, format, temporary, metadata, calibration)
        except ImportError as error:
            raise ExportError(f"the {format} exporter needs {error.name or error}, which is not installed: "
                              "`pip install -r requirements.lock`, or drop it from export.formats") from None
        except Exception as error:  # whatever the converter raises: one line, and no file
            if isinstance(error, OSError) and error.errno in DISK_FULL:
                raise  # atomic_path's line, the project's one for a full disk: no format is at fault
            reason = (str(error).strip().splitlines() or [type(error).__name__])[0]
            raise ExportError(f"exporting the model to {format} failed ({reason}); drop {format} from "
                              "export.formats to ship the others") from None
        runtime = open_runtime(temporary, format)
        probabilities = np.concatenate([runtime.predict_on_batch(images[start:start + 500])
                                        for start in range(0, len(images), 500)])
        size = temporary.stat().st_size
        result, problem = gate(probabilities, size)
        if problem:
            raise ExportError(f"the {format} file disagrees with the Keras model on the {len(images):,} held-out "
                              f"images: {problem}; not written")
        result |= {"bytes": size, "probabilities": probabilities}
    return result


# ---------------------------------------------------------------------------------------------------- runtimes


class OnnxModel:
    """An .onnx file run by ONNX Runtime on the CPU."""

    format = "onnx"

    def __init__(self, path: str | os.PathLike, threads: int | None = None):
        import onnxruntime

        options = onnxruntime.SessionOptions()
        if threads:  # the benchmark's one-thread latency; by default ONNX Runtime uses every core
            options.intra_op_num_threads = options.inter_op_num_threads = threads
        self.session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.input = self.session.get_inputs()[0]
        self.metadata = dict(self.session.get_modelmeta().custom_metadata_map)

    @property
    def shapes(self) -> tuple[tuple, tuple]:
        return tuple(self.input.shape), tuple(self.session.get_outputs()[0].shape)

    def predict_on_batch(self, images) -> np.ndarray:
        return self.session.run(None, {self.input.name: np.asarray(images, dtype=np.float32)})[0]

    def predict(self, images, verbose=0, batch_size=None) -> np.ndarray:
        return self.predict_on_batch(images)


class LiteRTModel:
    """A .tflite file run by the LiteRT interpreter (ai_edge_litert), resized to each batch."""

    format = "litert"

    def __init__(self, path: str | os.PathLike, threads: int | None = None):
        from ai_edge_litert.interpreter import Interpreter

        with stderr_without(lambda line: line == LITERT_NOISE):
            self.interpreter = Interpreter(model_path=str(path), num_threads=threads)
            self.interpreter.allocate_tensors()
        self.input = self.interpreter.get_input_details()[0]
        self.output = self.interpreter.get_output_details()[0]
        self.metadata: dict[str, str] = {}

    @property
    def shapes(self) -> tuple[tuple, tuple]:
        return tuple(self.input["shape_signature"]), tuple(self.output["shape_signature"])

    def predict_on_batch(self, images) -> np.ndarray:
        images = np.asarray(images, dtype=np.float32)
        if tuple(self.interpreter.get_input_details()[0]["shape"]) != images.shape:
            self.interpreter.resize_tensor_input(self.input["index"], list(images.shape))
            self.interpreter.allocate_tensors()
        self.interpreter.set_tensor(self.input["index"], images)
        self.interpreter.invoke()
        return self.interpreter.get_tensor(self.output["index"]).copy()

    def predict(self, images, verbose=0, batch_size=None) -> np.ndarray:
        return self.predict_on_batch(images)


# Each format of stages/core/formats.py: how it is written, and how its file is run (tests/test_export.py checks
# that every registered format has both).
EXPORTERS = {"onnx": export_onnx, "litert": export_litert, "onnx_int8": export_onnx_int8,
             "litert_int8": export_litert_int8}
RUNTIMES = {"onnx": OnnxModel, "litert": LiteRTModel, "onnx_int8": OnnxModel, "litert_int8": LiteRTModel}


def open_runtime(path: str | os.PathLike, format: str):
    """The file in its format's runtime; a missing runtime is one ExportError."""
    try:
        return RUNTIMES[format](path)
    except ImportError as error:
        raise ExportError(f"the {format} runtime ({FORMATS[format].runtime}) cannot be imported ({error}): "
                          "`pip install -r requirements.lock`") from None


# ---------------------------------------------------------------------------------------------------- loading


class Loaded(NamedTuple):
    """A model ready to predict, the one line that names it (where from, architecture, format, test accuracy), and
    the temperature already folded into its weights (None: not known to be calibrated)."""

    model: Any
    description: str
    temperature: float | None = None


def file_sha256(path: str | os.PathLike) -> str:
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def shipped_facts(path: Path, report: dict) -> dict:
    """What the export stage recorded of this very file (same sha256) in its `report`, or nothing."""
    entries = report.get("files", {})
    digest = file_sha256(path)
    return next((entry for entry in entries.values() if isinstance(entry, dict) and entry.get("sha256") == digest),
                {})


def describe(where: str, facts: dict) -> str:
    """`models/model.onnx (bn_cnn, onnx, test accuracy 0.9905)`, leaving out what is not known."""
    known = [facts.get("architecture"), facts.get("format")]
    if facts.get("test_accuracy") is not None:
        known.append(f"test accuracy {float(facts['test_accuracy']):.4f}")
    return f"{where} ({', '.join(str(item) for item in known if item)})"


def load_file(path: str | os.PathLike, num_classes: int, advice: str):
    """A .keras, .onnx or .tflite file as a model, checked to map 28x28x1 images to `num_classes` probabilities."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == KERAS_SUFFIX:
        if path.is_file():
            start_tensorflow_quietly()  # its start-up lines would bury predict's answers; real errors still show
        return load_model(path, num_classes, advice)
    found = by_suffix(suffix)
    if found is None:
        *endings, last = dict.fromkeys([KERAS_SUFFIX, *(known.suffix for known in FORMATS.values())])
        raise ModelFileError(f"{path}: unknown model format {suffix or '(no suffix)'!r}; expected a "
                             f"{', '.join(endings)} or {last} file "
                             f"or an MLflow model URI (models:/NAME@ALIAS): {advice}")
    format = found.name
    if not path.is_file():
        raise ModelFileError(f"model file {path} not found: {advice}")
    try:
        model = open_runtime(path, format)
    except ExportError as error:
        raise ModelFileError(f"{path}: {error}") from None
    except Exception as error:  # the runtime's own parse error
        reason = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise ModelFileError(f"{path} is not a loadable {format} model ({reason}): {advice}") from None
    input_shape, output_shape = model.shapes
    if tuple(input_shape[1:]) != INPUT_SHAPE or tuple(output_shape[1:]) != (num_classes,):
        raise ModelFileError(f"{path} maps {tuple(input_shape[1:])} to {tuple(output_shape[1:])}, expected "
                             f"{INPUT_SHAPE} images to {num_classes} class probabilities: {advice}")
    return model


def load_any(source: str | os.PathLike, num_classes: int, advice: str, params=None) -> Loaded:
    """The one loader of predict: a model file (see load_file) or an MLflow model URI, which needs `params` for
    the tracking store. The description names the file or URI (and the registered version), the architecture,
    the format and the test accuracy, where the file itself, the export stage's report or the registry knows them."""
    text = str(source)
    if text.startswith("models:/"):
        if params is None:
            raise ModelFileError(f"{text}: an MLflow model URI needs params.yaml (tracking.uri) in the working "
                                 "directory to find the store")
        from stages.core.tracking.versions import downloaded_model

        try:
            with downloaded_model(params, text) as (path, known):
                model = load_file(path, num_classes, advice)
        except ModelFileError:
            raise
        except PipelineError as error:  # the store or the registry: the model is what is unusable
            raise ModelFileError(str(error)) from None
        where = f"{text} = {known.pop('version')}"
    else:
        model = load_file(source, num_classes, advice)
        report = read_export(params.paths, missing_ok=True) if params is not None else {}
        known, where = shipped_facts(Path(source), report), text
    format = getattr(model, "format", "keras")
    facts = {"architecture": model.metadata.get("architecture") if format != "keras" else model.name,
             "format": format, "temperature": model.metadata.get(TEMPERATURE_KEY) if format != "keras" else None}
    facts.update({key: value for key, value in known.items()
                  if key in ("architecture", "format", "test_accuracy", "temperature") and value is not None})
    temperature = facts["temperature"]
    return Loaded(model, describe(where, facts), None if temperature is None else float(temperature))
