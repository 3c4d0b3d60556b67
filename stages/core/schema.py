"""The one typed schema of params.yaml, and its loader.

`load_params()` parses params.yaml the way DVC does (ruamel, YAML 1.2, so `1e-3` is a float), validates it
against frozen pydantic models that forbid unknown keys, and raises one ParamsError listing every problem as
`dotted.key: what is wrong; what is allowed`. It never imports TensorFlow.

Set STAGES_TRACE_PARAMS=<file> to append `<module>\t<key>` for every params key a process reads to <file>; the
tests use it to check that each stage declares in dvc.yaml exactly the keys its code reads.

Set STAGES_AUTO_PRECISION=mixed_bfloat16 or float32 to decide what `train.precision: auto` resolves to instead of
the hardware (stages/core/devices.py): the tests run both ways on one machine.
"""

from __future__ import annotations

import atexit
import json
import os
import sys
import types
import typing
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from stages.core.datasets import SELECTABLE
from stages.core.errors import PipelineError, did_you_mean

PARAMS_FILE = "params.yaml"  # the one file that configures a run, at the project root
OPTIMIZERS = ("adam", "adamw", "nadam", "sgd", "rmsprop", "adadelta", "adagrad", "adamax", "lion")
ACCURACY_MONITORS = ("accuracy", "val_accuracy")
MONITORS = ("loss", "val_loss", "accuracy", "val_accuracy")

_read_keys: set[str] | None = None


class ParamsError(PipelineError):
    """params.yaml is missing, unparsable or invalid; the message has one line per problem."""


class Section(BaseModel):
    """Base of every params section: strict types, no unknown keys, immutable; records reads when tracing."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    def __getattribute__(self, name: str) -> Any:
        value = super().__getattribute__(name)
        if _read_keys is not None and name in type(self).model_fields and not isinstance(value, Section):
            private = object.__getattribute__(self, "__pydantic_private__") or {}
            _read_keys.add(private.get("_prefix", "") + name)
        return value


class Paths(Section):
    """Every file or folder the stages read or write (see params.yaml for what each holds)."""

    params_check: str
    source: str
    raw: str
    own: str
    processed: str
    class_counts: str
    model: str
    history: str
    summary: str
    run: str
    export_dir: str
    export: str
    registered: str
    model_card: str
    tensorboard: str
    resume: str
    metrics: str
    predictions: str
    confusion: str
    per_class: str
    activations: str
    plots: str
    compare: str
    compare_plot: str
    search: str


class Data(Section):
    dataset: Literal[SELECTABLE]
    source: Annotated[str, Field(min_length=1)]
    probe_timeout: Annotated[float, Field(gt=0, le=60)]
    timeout: Annotated[float, Field(gt=0, le=600)]
    retries: Annotated[int, Field(ge=0, le=10)]
    own: bool


class Preprocess(Section):
    val_fraction: Annotated[float, Field(gt=0, lt=1)]
    limit: Annotated[int, Field(ge=20)] | None
    own_test_fraction: Annotated[float, Field(ge=0, lt=1)]


class Model(Section):
    """Checked against the presets and layer types where an architecture is built or validated (the params stage,
    train: architectures.check_model), not here: every stage loads this schema, and a new preset must not rerun
    them all."""

    architecture: str
    layers: list[dict[str, Any]] | None


class Optimizer(Section):
    name: Literal[OPTIMIZERS]
    learning_rate: Annotated[float, Field(gt=0, le=10)]
    kwargs: dict[str, Any]


class EarlyStopping(Section):
    enabled: bool
    monitor: Literal[MONITORS]
    patience: Annotated[int, Field(ge=0)]
    restore_best_weights: bool


class Augment(Section):
    """Augmentation of the training images (stages/core/augment.py); each knob is a range drawn per image."""

    enabled: bool
    rotation: Annotated[float, Field(ge=0, le=45)]
    slant: Annotated[float, Field(ge=0, le=1)]
    zoom: Annotated[float, Field(ge=0, lt=1)]
    aspect: Annotated[float, Field(ge=0, lt=1)]
    translation: Annotated[float, Field(ge=0, le=10)]
    elastic_alpha: Annotated[float, Field(ge=0, le=100)]
    elastic_sigma: Annotated[float, Field(gt=0, le=14)]
    stroke: Annotated[float, Field(ge=0, le=1)]
    blur: Annotated[float, Field(ge=0, le=3)]


class Train(Section):
    epochs: Annotated[int, Field(ge=1, le=10_000)]
    batch_size: Annotated[int, Field(ge=1, le=65_536)]
    distribute: Literal["auto", "off", "mirrored"]
    optimizer: Optimizer
    lr_schedule: Literal["constant", "cosine"]
    label_smoothing: Annotated[float, Field(ge=0, lt=1)]
    precision: Literal["auto", "float32", "mixed_bfloat16", "mixed_float16"]
    deterministic: bool
    early_stopping: EarlyStopping
    target_accuracy: Annotated[float, Field(gt=0, le=1)] | None
    target_monitor: Literal[ACCURACY_MONITORS]
    checkpoint_monitor: Literal[MONITORS]
    resume: bool
    tensorboard: bool
    own_weight: Annotated[float, Field(gt=0, le=1000)]
    augment: Augment


class Int8(Section):
    """The gate an int8 file passes before it is written (stages/core/shipping.py: int8_gate)."""

    agreement: Annotated[float, Field(gt=0, le=1)]
    accuracy_loss: Annotated[float, Field(ge=0, le=1)]
    size_ratio: Annotated[float, Field(gt=0, le=1)]
    calibration_images: Annotated[int, Field(ge=1, le=10_000)]


class Export(Section):
    """formats: names of stages/core/formats.py, checked there (formats.check_formats) by the params and export
    stages, for the reason Model gives."""

    formats: Annotated[list[str], Field(min_length=1)]
    tolerance: Annotated[float, Field(gt=0, le=1)]
    int8: Int8

    @field_validator("formats")
    @classmethod
    def _once_each(cls, formats: list[str]) -> list[str]:
        if len(set(formats)) != len(formats):
            raise ValueError(f"each format at most once, got {formats}")
        return formats


class Evaluate(Section):
    batch_size: Annotated[int, Field(ge=1, le=65_536)]
    activation_images: Annotated[int, Field(ge=1, le=32)]


class Plots(Section):
    dpi: Annotated[int, Field(ge=20, le=600)]
    width: Annotated[float, Field(gt=0, le=50)]
    height: Annotated[float, Field(gt=0, le=50)]
    cmap: str
    misclassified: Annotated[int, Field(ge=1, le=100)]
    feature_maps: Annotated[int, Field(ge=1, le=64)]


class Tracking(Section):
    enabled: bool
    uri: str | None
    experiment: Annotated[str, Field(min_length=1)]
    model_prefix: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]*$", max_length=64)]


class Champion(Section):
    threshold: Annotated[float, Field(ge=0, le=1)] | None
    min_absolute_change: Annotated[float, Field(ge=0, lt=1)]
    tolerance: Annotated[float, Field(ge=0, le=100)]


class Params(Section):
    seed: Annotated[int, Field(ge=0, le=2**32 - 1)]
    paths: Paths
    data: Data
    preprocess: Preprocess
    model: Model
    train: Train
    export: Export
    evaluate: Evaluate
    plots: Plots
    tracking: Tracking
    champion: Champion


def minimised(metric: str) -> bool:
    """A metric with `loss` in its name gets better as it falls; accuracies as they rise."""
    return "loss" in metric


def flatten(mapping: dict, prefix: str = "") -> dict[str, Any]:
    """Dotted leaf keys of a params mapping and their values (lists and mappings as JSON): what
    `dvc exp run -S key=value` can set, and what MLflow logs as params."""
    flat: dict[str, Any] = {}
    for key, value in mapping.items():
        if isinstance(value, dict) and value:
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = json.dumps(value) if isinstance(value, list | dict) else value
    return flat


def set_dotted(raw: dict, key: str, value: Any) -> None:
    """Set a `train.optimizer.name`-style key in a params mapping; the sections on the way must exist."""
    *parents, leaf = key.split(".")
    for part in parents:
        raw = raw[part]
    raw[leaf] = value


def _section_class(loc: tuple, root: type[BaseModel] | None = None) -> type[BaseModel] | None:
    """The model class found by following `loc` from `root` (Params), or None where the path leaves the schema."""
    cls: Any = root or Params
    parts = list(loc)
    while parts:
        part = parts.pop(0)
        if not (isinstance(cls, type) and issubclass(cls, BaseModel)) or part not in cls.model_fields:
            return None
        annotation = cls.model_fields[part].annotation
        if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
            annotation = next((a for a in typing.get_args(annotation) if a is not type(None)), None)
        if typing.get_origin(annotation) is dict and parts:  # a mapping of sections: skip its key
            parts.pop(0)
            annotation = typing.get_args(annotation)[1]
        cls = annotation
    return cls if isinstance(cls, type) and issubclass(cls, BaseModel) else None


def _dotted(loc: tuple) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def describe_error(error: dict, root: type[BaseModel] | None = None) -> str:
    """One line for one pydantic error of a schema rooted at `root` (Params): the dotted key, what is wrong."""
    loc = tuple(error["loc"])
    key = _dotted(loc)
    kind = error["type"]
    if kind == "extra_forbidden":
        parent = _section_class(loc[:-1], root)
        allowed = list(parent.model_fields) if parent else []
        return f"{key}: unknown key{did_you_mean(loc[-1], allowed)} (allowed here: {', '.join(allowed)})"
    if kind == "missing":
        return f"{key}: required key is missing"
    if kind == "literal_error":
        expected = error["ctx"]["expected"]
        hint = did_you_mean(error["input"], [e.strip(" '") for e in expected.replace(" or ", ",").split(",")])
        return f"{key}: {error['input']!r} is not allowed{hint} (allowed: {expected})"
    if kind == "value_error":
        message = str(error["ctx"]["error"])
        return message if message.startswith(key) else f"{key}: {message}"
    return f"{key}: {error['msg'].lower()} (got {error['input']!r})"


def parse_params(raw: Any, source: str = PARAMS_FILE) -> Params:
    """Validate an already-parsed params mapping; raise ParamsError with one line per problem."""
    if raw is None:
        raise ParamsError(f"{source} is empty: restore it with `git checkout {source}` (every knob lives there)")
    if not isinstance(raw, dict):
        raise ParamsError(f"{source}: expected a mapping of sections at the top level, got {type(raw).__name__}")
    try:
        params = Params.model_validate(raw)
    except ValidationError as error:
        refuse([describe_error(e) for e in error.errors(include_url=False)], source)
    _set_prefixes(params, "")
    return params


def refuse(problems: list[str], source: str = PARAMS_FILE) -> None:
    """Raise the one ParamsError of params.yaml's `problems` (one line each), if any."""
    if problems:
        raise ParamsError(f"{source} is invalid:\n  " + "\n  ".join(problems)) from None


def read_yaml(path: str | os.PathLike) -> Any:
    """Parse YAML 1.2 like DVC does, so `1e-3` is a float and `yes` a string."""
    from ruamel.yaml import YAML, YAMLError

    try:
        text = Path(path).read_text()
    except FileNotFoundError:
        raise ParamsError(f"{path} not found: run from the project root, where params.yaml lives") from None
    try:
        return YAML(typ="safe", pure=True).load(text)
    except YAMLError as error:
        raise ParamsError(f"{path} is not valid YAML: {error}".replace("\n", " ")) from None


def load_params(path: str | os.PathLike = PARAMS_FILE) -> Params:
    return parse_params(read_yaml(path), str(path))


def _set_prefixes(section: Section, prefix: str) -> None:
    object.__setattr__(section, "__pydantic_private__", {"_prefix": prefix})
    for name in type(section).model_fields:
        value = section.__dict__[name]
        if isinstance(value, Section):
            _set_prefixes(value, f"{prefix}{name}.")


def _write_trace(path: str) -> None:
    main = sys.modules.get("__main__")
    module = getattr(getattr(main, "__spec__", None), "name", None) or "?"
    with open(path, "a") as trace:
        trace.writelines(f"{module}\t{key}\n" for key in sorted(_read_keys or ()))


if os.environ.get("STAGES_TRACE_PARAMS"):
    _read_keys = set()
    atexit.register(_write_trace, os.environ["STAGES_TRACE_PARAMS"])
