"""Register stage: every registration and every alias move in MLflow, once the model is evaluated and exported.

Reads `{paths.run}` (the training's MLflow run and its LoggedModel), `{paths.model}`, `{paths.processed}/dataset.json`,
`test.npz` (a few digits: the ONNX model's input example) and `own_test.npz` (your held-out digits: the champion is
re-scored on them), `{paths.metrics}` (test and own_test accuracy) and `{paths.export}` with the files in
`{paths.export_dir}`, `{paths.per_class}` and `{paths.confusion}` (the model card's figures); params `tracking.*`,
`champion.*` (the rule, stages/core/tracking/champion.py).
Registers, as versions of `<prefix><dataset>-cnn[-images|-<format kind>]` (stages/core/tracking/registry.py):
the tensor model train logged, the image model (stages/reading/image_model.py, shipping only the modules it
imports) and each exported format with an MLflow flavour (formats without one become artifacts of the run); tags
each version with its test accuracy and test set, then moves `champion` by the rule (tensor model; the image model
and each export's champion follow to the same run's version), all in this one stage, so no alias is ever left
half-moved; prints one line saying who is champion and why, and tags a refused version with the rule and numbers.
Writes `{paths.registered}`: the versions registered, by name (empty with tracking off), and `{paths.model_card}`
(stages/core/card.py), which is also each registered version's description and an artifact of the tensor model's.
Run alone with `python -m stages.register` (after `dvc repro evaluate export`).
"""

from __future__ import annotations

import stages.core.venv  # noqa: F401  (first: without the project's packages, one line, not a traceback)

from functools import partial

from stages.core.card import model_card
from stages.core.entry import KERAS_UNUSED_IMPORTS, stage_main
from stages.core.formats import FORMATS
from stages.core.records import (
    export_file,
    read_dataset_info,
    read_export,
    read_metrics,
    read_run,
    read_split,
    write_model_card,
    write_registered,
)
from stages.core.schema import Params
from stages.core.tracking import registry, store, versions

EXAMPLE_IMAGES = 2  # the MLflow input example of an exported model


def run(params: Params) -> dict[str, str]:
    paths = params.paths
    info = read_dataset_info(paths)
    store.check_writes(params, [versions.registered_name(params, info["dataset"], kind) for kind in registry.kinds()])
    trained, metrics, report = read_run(paths), read_metrics(paths), read_export(paths)
    registered: dict[str, str] = {}
    attached = store.attached_run(params)
    name = versions.registered_name(params, info["dataset"])
    # Read before anything is registered: a damaged figure fails the stage with nothing half-written.
    card = model_card(paths, f"`{name}`, MLflow run `{attached[1]}`" if attached else "not registered (tracking off)")
    if attached is None:
        print("register: tracking is off (or train recorded no MLflow run): nothing to register")
        write_model_card(paths, card)
    else:
        from stages.reading.image_model import ImageClassifier  # its image code only when logged (PIL, skimage)

        client, run_id = attached
        uri, dataset, test_sha256 = store.tracking_uri(params), info["dataset"], info["splits"]["test"]["sha256"]
        files = {format: export_file(paths, FORMATS[format].file) for format in report["files"] if format in FORMATS}
        example = read_split(paths, "test", ("x",))["x"][:EXAMPLE_IMAGES]
        with store.full_store_is_an_error(uri), store.refused_is_an_error(uri, params.tracking.experiment):
            registered[name] = versions.register_logged_model(trained.model_uri, name, uri)
            registered[versions.registered_name(params, dataset, "images")] = registry.log_image_model(
                params, uri, ImageClassifier, dataset, trained.temperature, run_id)
            registered |= registry.log_exports(params, client, run_id, files, report, example, dataset, test_sha256)
            verdict = registry.crown(client, params, run_id, dataset, float(metrics["test_accuracy"]), test_sha256,
                                     own_test(params, info, metrics))
            registry.attach_card(client, write_model_card(paths, card), registered, trained.model_id)
        print(f"register: {', '.join(f'{model} version {version}' for model, version in registered.items())} "
              f"(MLflow run {run_id})")
        if verdict:
            print(verdict)
    write_registered(paths, registered)
    return registered


def own_test(params: Params, info: dict, metrics: dict) -> registry.OwnTest | None:
    """The run's own_test digits and its accuracy on them; None without any (data.own off, or none held out)."""
    if "own_test" not in info["splits"] or "own_test_accuracy" not in metrics:
        return None
    arrays = read_split(params.paths, "own_test", empty_ok=True, info=info)
    if not len(arrays["labels"]):
        return None
    from stages.reading.opening import accuracy  # the reader's image code only with own digits

    return registry.OwnTest(info["splits"]["own_test"]["sha256"], arrays["x"], arrays["labels"],
                            float(metrics["own_test_accuracy"]),
                            partial(accuracy, dataset=info["dataset"], params=params, images=arrays["x"],
                                    labels=arrays["labels"]))


def main() -> None:
    stage_main(run, skip_imports=KERAS_UNUSED_IMPORTS, fast_exit=True, quiet_tensorflow=True)


if __name__ == "__main__":
    main()
