"""Every file one stage hands to another, each with its one reader and its one writer (a stage never opens another
stage's output by hand). A missing or malformed file is one PipelineError naming the file and the stage to rerun.

  file                          writer      holds
  {paths.source}                source      which data download gets, and from where: {"dataset", "source"}
  {paths.raw}/<dataset>/manifest.json
                                download    the four IDX files: dataset, sample_of, files (source, sha256, verified),
                                            content_hash
  {paths.processed}/<split>.npz preprocess  x (float32 N x 28 x 28 x 1 in [0, 1]), y (one-hot), labels (uint8);
                                            train.npz also `own` (which images are yours) when data.own added some
  {paths.processed}/dataset.json
                                preprocess  the data's registry name and each split's size, sha256 and origin
  {paths.run}                   train       the training: architecture, kept epoch, temperature, MLflow run and model
  {paths.history}               train       one row per epoch
  {paths.metrics}               evaluate    the test metrics
  {paths.per_class}             evaluate    precision, recall, f1 and support per class
  {paths.confusion}             evaluate    the confusion counts, rows = actual class, columns = predicted class
  {paths.export_dir}/<file>     export      the exported model files, one per export.formats (core/formats.py)
  {paths.export}                export      per shipped file its format, size, sha256 and test accuracy
  {paths.registered}            register    the model versions registered in MLflow, by registered name
  {paths.model_card}            register    the run's model card (stages/core/card.py)
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from stages.core.datasets import FILE_NAMES, dataset_spec
from stages.core.errors import PipelineError
from stages.core.files import load_npz, save_npz, write_csv, write_json, write_text

SPLITS = ("train", "val", "test", "own_test")
MANIFEST = "manifest.json"  # in {paths.raw}/<dataset>/, beside the four IDX files
DATASET_INFO = "dataset.json"  # in {paths.processed}, beside the splits
IMAGE_SHAPE = "N x 28 x 28 x 1"


def not_found(path: str | os.PathLike, writer: str) -> PipelineError:
    return PipelineError(f"{path} not found: run the {writer} stage first (`dvc repro {writer}`)")


def damaged(path: str | os.PathLike, writer: str, reason: str) -> PipelineError:
    return PipelineError(f"{path} is damaged or was not written by the {writer} stage ({reason}): "
                         f"rerun `dvc repro {writer}`")


def parse_json(text: str, path: str | os.PathLike, writer: str, required: tuple[str, ...] = ()) -> dict:
    """A JSON object holding the keys `required`, or the one error naming `path` and its `writer`."""
    try:
        data = json.loads(text)
    except ValueError as error:
        raise damaged(path, writer, str(error).splitlines()[0]) from None
    if not isinstance(data, dict):
        raise damaged(path, writer, f"a JSON {type(data).__name__}, not an object")
    if absent := [key for key in required if key not in data]:
        raise damaged(path, writer, f"no {', '.join(absent)}")
    return data


def read_json(path: str | os.PathLike, writer: str, required: tuple[str, ...] = ()) -> dict:
    try:
        text = Path(path).read_text()
    except FileNotFoundError:
        raise not_found(path, writer) from None
    except (OSError, UnicodeDecodeError) as error:
        raise damaged(path, writer, str(error)) from None
    return parse_json(text, path, writer, required)


# ---------------------------------------------------------------------------------------------------- source


def write_source(paths, choice: dict[str, str]) -> None:
    write_json(paths.source, choice)


def read_source(paths) -> dict[str, str]:
    """The source stage's decision: {"dataset": registry entry, "source": "mirrors" | "sample" | data.source}."""
    choice = read_json(paths.source, "source", ("dataset", "source"))
    if not isinstance(choice["source"], str):
        raise damaged(paths.source, "source", "its source must be a string")
    known_dataset(paths.source, "source", choice["dataset"])
    return choice


def known_dataset(path, writer: str, dataset) -> None:
    try:
        dataset_spec(dataset)
    except (KeyError, TypeError) as error:
        raise damaged(path, writer, str(error).strip("'\"")) from None


# ---------------------------------------------------------------------------------------------------- raw data


def raw_folder(paths, dataset: str) -> Path:
    """Where download puts a dataset's four IDX files and their manifest."""
    return Path(paths.raw) / dataset


def write_manifest(folder: str | os.PathLike, manifest: dict) -> None:
    write_json(Path(folder) / MANIFEST, manifest)


def read_manifest(folder: str | os.PathLike) -> dict:
    """Download's record of what the raw files in `folder` are (the data is named after it, not after data.dataset)."""
    path = Path(folder) / MANIFEST
    manifest = read_json(path, "download", ("dataset", "files", "content_hash"))
    files = manifest["files"]
    if not isinstance(files, dict) or not set(FILE_NAMES) <= set(files) or not all(
            isinstance(entry, dict) and {"source", "sha256"} <= set(entry) for entry in files.values()):
        raise damaged(path, "download", f"each of {', '.join(FILE_NAMES)} needs its source and sha256")
    known_dataset(path, "download", manifest["dataset"])
    return manifest


# ---------------------------------------------------------------------------------------------------- splits


def processed_folder(paths) -> Path:
    return Path(paths.processed)


def split_file(folder: str | os.PathLike, split: str) -> Path:
    return Path(folder) / f"{split}.npz"


def split_files(paths, *splits: str) -> list[Path]:
    """The files of `splits` (a dvc.yaml dep each), e.g. for a content hash of the training data."""
    return [split_file(processed_folder(paths), split) for split in splits]


def write_split(paths, split: str, **arrays: np.ndarray) -> None:
    save_npz(split_file(processed_folder(paths), split), **arrays)


def load_split(folder: str | os.PathLike, split: str, keys: tuple[str, ...] = ("x", "labels"),
               optional: tuple[str, ...] = (), empty_ok: bool = False, info: dict | None = None
               ) -> dict[str, np.ndarray]:
    """The arrays `keys` (and those of `optional` that exist) of `folder`/<split>.npz, with the one shape check:
    x is N x 28 x 28 x 1, y N x classes, labels and own N long, N > 0 unless `empty_ok`; and, given `info`
    (dataset.json), N is the size it records."""
    path = split_file(folder, split)
    arrays = load_npz(path, keys, writer="preprocess")
    if optional:
        with np.load(path, allow_pickle=False) as archive:
            arrays.update({key: archive[key] for key in optional if key in archive.files})
    count = len(next(iter(arrays.values())))
    dims = {"x": 4, "y": 2, "labels": 1, "own": 1}
    if any(array.ndim != dims.get(key, array.ndim) or len(array) != count for key, array in arrays.items()) or (
            count == 0 and not empty_ok) or ("x" in arrays and arrays["x"].shape[1:] != (28, 28, 1)):
        shapes = ", ".join(f"{key} {array.shape}" for key, array in arrays.items())
        raise PipelineError(f"{path}: expected {IMAGE_SHAPE} images and N labels with N > 0, got {shapes}; rerun "
                            "`dvc repro preprocess`")
    expected = info["splits"].get(split, {}).get("images", count) if info else count
    if count != expected:
        raise PipelineError(f"{path} holds {count} images but {DATASET_INFO} beside it says {expected}; rerun "
                            "`dvc repro preprocess`")
    return arrays


def read_split(paths, split: str, keys: tuple[str, ...] = ("x", "labels"), optional: tuple[str, ...] = (),
               empty_ok: bool = False, info: dict | None = None) -> dict[str, np.ndarray]:
    return load_split(processed_folder(paths), split, keys, optional, empty_ok, info)


def write_dataset_info(paths, info: dict) -> None:
    write_json(processed_folder(paths) / DATASET_INFO, info)


def read_dataset_info(paths) -> dict:
    """preprocess's dataset.json: {"dataset", "sample_of", "content_hash", "splits": {split: {"name", "images",
    "sha256", "origin"}}}; a split's sha256 is that of its `x` bytes then its `labels` bytes (datasets.split_sha256).
    The splits are train, val and test; with data.own also own_test (your held-out digits), and then train's entry has
    "own_images" too."""
    path = processed_folder(paths) / DATASET_INFO
    info = read_json(path, "preprocess", ("dataset", "splits"))
    if not isinstance(info["splits"], dict) or not all(
            isinstance(entry, dict) and {"images", "sha256"} <= set(entry) for entry in info["splits"].values()):
        raise damaged(path, "preprocess", "each split needs its images and sha256")
    return info


# ---------------------------------------------------------------------------------------------------- training


@dataclass(frozen=True)
class Run:
    """What train reports in run.json; the defaults here are the only ones (a key train did not write)."""

    architecture: str | None = None
    dataset: str | None = None
    kept_epoch: int | None = None
    temperature: float = 1.0  # the model's own probabilities, uncalibrated
    run_id: str | None = None  # the MLflow run, None with tracking off
    experiment_id: str | None = None  # its experiment's id (MLflow's pages are addressed by it)
    model_id: str | None = None  # the LoggedModel of the tensor model
    model_uri: str | None = None
    fields: dict = field(default_factory=dict, repr=False)  # everything, as written


def parse_run(text: str, path: str | os.PathLike) -> Run:
    data = parse_json(text, path, "train")
    known = {name: data[name] for name in Run.__dataclass_fields__ if name != "fields" and name in data}
    try:
        known["temperature"] = float(known.get("temperature", 1.0))
    except (TypeError, ValueError):
        raise damaged(path, "train", f"temperature {known['temperature']!r} is not a number") from None
    return Run(**known, fields=data)


def write_run(paths, record: dict[str, Any]) -> None:
    write_json(paths.run, record)


def read_run(paths, missing_ok: bool = False) -> Run | None:
    """run.json; None when it does not exist and `missing_ok` (no training yet, e.g. a model passed by hand)."""
    path = Path(paths.run)
    if missing_ok and not path.exists():
        return None
    try:
        return parse_run(path.read_text(), path)
    except FileNotFoundError:
        raise not_found(path, "train") from None


def write_history(paths, frame) -> None:
    write_csv(paths.history, frame)


def parse_history(text: str, path: str | os.PathLike):
    """history.csv as a pandas DataFrame with at least an `epoch` column."""
    import pandas as pd

    try:
        history = pd.read_csv(io.StringIO(text))
    except (pd.errors.ParserError, pd.errors.EmptyDataError) as error:
        raise damaged(path, "train", str(error).splitlines()[0]) from None
    if "epoch" not in history.columns:
        raise damaged(path, "train", "no epoch column")
    return history


def history_file(paths) -> Path:
    """Where train's history is, for a copy of it (an MLflow artifact)."""
    return Path(paths.history)


def read_history(paths):
    path = Path(paths.history)
    try:
        return parse_history(path.read_text(), path)
    except FileNotFoundError:
        raise not_found(path, "train") from None
    except UnicodeDecodeError as error:
        raise damaged(path, "train", str(error)) from None


# ---------------------------------------------------------------------------------------------------- evaluation


def write_metrics(paths, metrics: dict[str, Any]) -> None:
    write_json(paths.metrics, metrics)


def read_metrics(paths) -> dict[str, Any]:
    return read_json(paths.metrics, "evaluate")


PER_CLASS_COLUMNS = ("class", "name", "precision", "recall", "f1", "support")


def read_table(path: str | os.PathLike, writer: str, columns: tuple[str, ...]):
    """A CSV holding `columns` as a pandas DataFrame, or the one error naming `path` and its `writer`."""
    import pandas as pd

    try:
        table = pd.read_csv(path)
    except FileNotFoundError:
        raise not_found(path, writer) from None
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as error:
        raise damaged(path, writer, str(error).splitlines()[0]) from None
    if absent := [column for column in columns if column not in table.columns]:
        raise damaged(path, writer, f"no column {', '.join(absent)}")
    return table


def write_per_class(paths, frame) -> None:
    write_csv(paths.per_class, frame)


def read_per_class(paths):
    """per_class.csv: one row per class, PER_CLASS_COLUMNS."""
    return read_table(paths.per_class, "evaluate", PER_CLASS_COLUMNS)


def write_confusion(paths, frame) -> None:
    write_csv(paths.confusion, frame)


def read_confusion(paths, names: list[str]) -> np.ndarray:
    """confusion.csv as counts, rows = actual class, columns = predicted class, for the classes `names`."""
    table = read_table(paths.confusion, "evaluate", ("actual", *names))
    if len(table) != len(names):
        raise damaged(paths.confusion, "evaluate", f"{len(table)} rows for {len(names)} classes")
    return table[list(names)].to_numpy()


def confusion_file(paths) -> Path:
    return Path(paths.confusion)


def per_class_file(paths) -> Path:
    return Path(paths.per_class)


def metrics_file(paths) -> Path:
    """Where the latest metrics are, for a tool that shows them as they change (the drawing page)."""
    return Path(paths.metrics)


# ---------------------------------------------------------------------------------------------------- export


def export_file(paths, name: str) -> Path:
    """Where export writes the file `name` (a format's file, stages/core/formats.py): one folder holds them all."""
    return Path(paths.export_dir) / name


def remove_exports(paths, names: list[str]) -> None:
    """Remove the files `names` from the export folder: formats dropped since (DVC empties it, a run by hand not)."""
    for name in names:
        export_file(paths, name).unlink(missing_ok=True)


def export_report_file(paths) -> Path:
    """Where export's report is, for a copy of it (an MLflow artifact)."""
    return Path(paths.export)


def write_export(paths, report: dict[str, Any]) -> None:
    write_json(paths.export, report)


def read_export(paths, missing_ok: bool = False) -> dict[str, Any]:
    """export's report; {} when it does not exist and `missing_ok`."""
    if missing_ok and not Path(paths.export).exists():
        return {}
    return read_json(paths.export, "export", ("files",))


def finished_experiment(paths, read: Callable[[str], str]):
    """(history, metrics, run) of an experiment, each file's text got by `read(path)` (e.g. from its git commit:
    a `--temp` run leaves nothing in the workspace)."""
    return (parse_history(read(paths.history), paths.history), parse_json(read(paths.metrics), paths.metrics,
            "evaluate"), parse_run(read(paths.run), paths.run))


# ---------------------------------------------------------------------------------------------------- register


def write_registered(paths, versions: dict[str, str]) -> None:
    write_json(paths.registered, {"versions": versions})


def read_registered(paths) -> dict[str, str]:
    return read_json(paths.registered, "register", ("versions",))["versions"]


def write_model_card(paths, text: str) -> Path:
    write_text(paths.model_card, text)
    return Path(paths.model_card)
