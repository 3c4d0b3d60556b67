"""Register stage: every registration and every alias move in MLflow, once the model is evaluated and exported.

Reads `{paths.run}` (the training's MLflow run and its LoggedModel), `{paths.model}`, `{paths.processed}/dataset.json`
and `test.npz` (a few digits: the ONNX model's input example), `{paths.metrics}` (test accuracy) and
`{paths.export}` with the files in `{paths.export_dir}`; params `tracking.*`.
Registers, as versions of `<prefix><dataset>-cnn[-images|-<format kind>]` (stages/core/tracking/registry.py):
the tensor model train logged, the image model (stages/reading/image_model.py, shipping only the modules it
imports) and each exported format with an MLflow flavour (formats without one become artifacts of the run); tags
each version with its test accuracy and test set, then moves `champion` (tensor and image model) and points each
export's champion at the same run's version, all in this one stage, so no alias is ever left half-moved.
Writes `{paths.registered}`: the versions registered, by name (empty with tracking off).
Run alone with `python -m stages.register` (after `dvc repro evaluate export`).
"""

from __future__ import annotations

from stages.core.entry import KERAS_UNUSED_IMPORTS, stage_main
from stages.core.formats import FORMATS
from stages.core.records import (
    export_file,
    read_dataset_info,
    read_export,
    read_metrics,
    read_run,
    read_split,
    write_registered,
)
from stages.core.schema import Params
from stages.core.tracking import registry, store, versions

EXAMPLE_IMAGES = 2  # the MLflow input example of an exported model


def run(params: Params) -> dict[str, str]:
    paths = params.paths
    trained, info = read_run(paths), read_dataset_info(paths)
    metrics, report = read_metrics(paths), read_export(paths)
    registered: dict[str, str] = {}
    attached = store.attached_run(params)
    if attached is None:
        print("register: tracking is off (or train recorded no MLflow run): nothing to register")
    else:
        from stages.reading.image_model import ImageClassifier  # its image code only when logged (PIL, skimage)

        client, run_id = attached
        uri, dataset, test_sha256 = store.tracking_uri(params), info["dataset"], info["splits"]["test"]["sha256"]
        store.check_write_access(uri, params.tracking.experiment,
                                 [versions.registered_name(params, dataset, kind) for kind in registry.kinds()])
        files = {format: export_file(paths, FORMATS[format].file) for format in report["files"] if format in FORMATS}
        example = read_split(paths, "test", ("x",))["x"][:EXAMPLE_IMAGES]
        with store.full_store_is_an_error(uri):
            registered[versions.registered_name(params, dataset)] = versions.register_logged_model(
                trained.model_uri, versions.registered_name(params, dataset), uri)
            registered[versions.registered_name(params, dataset, "images")] = registry.log_image_model(
                params, uri, ImageClassifier, dataset, trained.temperature, run_id)
            registered |= registry.log_exports(params, client, run_id, files, report, example, dataset, test_sha256)
            registry.crown(client, params, run_id, dataset, float(metrics["test_accuracy"]), test_sha256)
        print(f"register: {', '.join(f'{name} version {version}' for name, version in registered.items())} "
              f"(MLflow run {run_id})")
    write_registered(paths, registered)
    return registered


def main() -> None:
    stage_main(run, skip_imports=KERAS_UNUSED_IMPORTS, fast_exit=True, quiet_tensorflow=True)


if __name__ == "__main__":
    main()
