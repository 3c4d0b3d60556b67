"""Tests of the export stage (stages/export.py, stages/core/shipping.py) and of predict with the files it ships.

The oracle is Keras itself: each exported file, run by its own runtime, must give the Keras model's class on
every held-out digit and probabilities within export.tolerance of it; a file that does not is never written.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from helpers.digits import mnist_digits
from helpers.project import REFUSE_TENSORFLOW, ROOT, project_env, project_paths, sh

from stages import predict
from stages.core import shipping
from stages.core.architectures import build_model
from stages.core.formats import FORMATS
from stages.core.records import export_file

LAYERS = [{"type": "Conv2D", "filters": 4, "kernel_size": 3}, {"type": "BatchNormalization"},
          {"type": "ReLU"}, {"type": "Flatten"}, {"type": "Dense", "units": 10}]


def exported_file(paths, format: str) -> Path:
    return export_file(paths, FORMATS[format].file)


def test_every_format_has_an_exporter_and_a_runtime():
    assert set(shipping.EXPORTERS) == set(shipping.RUNTIMES) == set(FORMATS)


def augmented_model():
    """A model as trained before augmentation moved out of the model into train.augment: a RandomTranslation
    layer first (architectures now refuse one, but such model files exist)."""
    import keras

    body = build_model(LAYERS, name="augmented")
    return keras.Sequential([keras.Input(shape=(28, 28, 1)), keras.layers.RandomTranslation(0.1, 0.1), *body.layers],
                            name="augmented")


@pytest.mark.parametrize("precision", ["float32", "mixed_bfloat16"])
def test_inference_model_drops_augmentation_and_computes_in_float32(precision, mnist_10k):
    import keras

    keras.mixed_precision.set_global_policy(precision)
    model = augmented_model()
    batch_norm = next(layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization))
    batch_norm.moving_mean.assign(np.full(4, 0.3, np.float32))  # trained statistics must travel too
    keras.mixed_precision.set_global_policy("float32")
    inference = shipping.inference_model(model)
    assert [type(layer).__name__ for layer in inference.layers] == [
        "InputLayer", "Conv2D", "BatchNormalization", "ReLU", "Flatten", "Dense", "Activation"]
    assert {layer.dtype_policy.name for layer in inference.layers} == {"float32"}
    assert inference.name == "augmented"
    for trained, shipped in zip(model.get_weights(), inference.get_weights(), strict=True):
        np.testing.assert_array_equal(np.asarray(trained, np.float32), shipped)
    images, _ = mnist_digits(mnist_10k, "test", 16)
    expected = keras.ops.convert_to_numpy(model(images, training=False)).astype(np.float32)
    tolerance = 0 if precision == "float32" else 2e-2  # bf16 rounding in the trained model's own compute
    np.testing.assert_allclose(inference.predict(images, verbose=0), expected, atol=tolerance, rtol=0)


def test_export_checks_each_file_against_keras_and_reports_it(exported, mnist_10k):
    params, report = exported
    paths = params.paths
    assert set(report["files"]) == {"keras", *FORMATS} and report["test_images"] == 2000
    for format in ("onnx", "litert"):
        assert report[format]["agreement"] == 1.0 and report[format]["max_abs_diff"] <= params.export.tolerance
        entry = report["files"][format]
        path = exported_file(paths, format)
        assert entry["bytes"] == path.stat().st_size > 100_000 and entry["sha256"] == shipping.file_sha256(path)
        assert entry["architecture"] == "lenet" and entry["test_accuracy"] == report["files"]["keras"]["test_accuracy"]
    assert sorted(path.name for path in Path(paths.export_dir).iterdir()) == sorted(f.file for f in FORMATS.values())
    onnx_model = shipping.OnnxModel(exported_file(paths, "onnx"))
    assert [i.name for i in onnx_model.session.get_inputs()] == ["image"]
    assert [o.name for o in onnx_model.session.get_outputs()] == ["probabilities"]
    assert onnx_model.metadata["architecture"] == "lenet"
    # An independent look at the numbers: the session's Keras model on training digits, which the check never saw.
    from stages.core.architectures import load_model

    images, _ = mnist_digits(mnist_10k, "train", 100)
    keras_probabilities = load_model(paths.model, 10, advice="").predict(images, verbose=0)
    for runtime in (onnx_model, shipping.LiteRTModel(exported_file(paths, "litert"))):
        np.testing.assert_allclose(runtime.predict(images), keras_probabilities, atol=1e-4, rtol=0)


def test_mlflow_gets_the_onnx_model_registered_and_the_litert_file(exported):
    import mlflow

    from stages.core.tracking import versions

    params, report = exported
    client = mlflow.MlflowClient(params.tracking.uri)
    run_id = json.loads(Path(params.paths.run).read_text())["run_id"]
    name = versions.registered_name(params, "mnist_10k", "onnx")
    assert name == "mnist_10k-cnn-onnx"
    [version] = client.search_model_versions(f"name = '{name}'")
    assert version.run_id == run_id
    assert float(version.tags["test_accuracy"]) == pytest.approx(report["files"]["onnx"]["test_accuracy"])
    assert "litert/model.tflite" in [item.path for item in client.list_artifacts(run_id, "litert")]
    assert "reports/export.json" in [item.path for item in client.list_artifacts(run_id, "reports")]
    # The run's metrics are the trained model's; each exported model carries its own figures, and no run metric.
    assert list(client.get_run(run_id).data.metrics) == ["system/train_seconds"]
    logged = client.get_logged_model(version.source.removeprefix("models:/"))
    assert logged.experiment_id == client.get_run(run_id).info.experiment_id  # not in "Default"
    assert (logged.name, logged.source_run_id, logged.metrics or []) == ("onnx_model", run_id, [])
    assert logged.tags["export.bytes"] == str(report["files"]["onnx"]["bytes"])
    assert float(logged.tags["export.agreement"]) == report["onnx"]["agreement"] == 1.0
    assert logged.model_id in [output.model_id for output in client.get_run(run_id).outputs.model_outputs]


def test_the_onnx_champion_follows_the_tensor_models_and_predict_takes_its_uri(exported, test_digits, capsys):
    import mlflow
    from PIL import Image

    from stages.core.tracking import versions

    params, _ = exported
    client = mlflow.MlflowClient(params.tracking.uri)
    run_id = json.loads(Path(params.paths.run).read_text())["run_id"]
    # The tensor model's versions: an older one from another run, then this run's; the champion moves between them.
    tensor_name, onnx_name = (versions.registered_name(params, "mnist_10k", kind) for kind in ("", "onnx"))
    client.create_registered_model(tensor_name)
    other = client.create_run(client.get_run(run_id).info.experiment_id).info.run_id
    for run in (other, run_id):
        client.create_model_version(tensor_name, source=client.get_run(run).info.artifact_uri, run_id=run)
    client.set_registered_model_alias(tensor_name, "champion", "1")
    versions.follow_champion(client, params, "mnist_10k", "onnx")
    assert client.get_registered_model(onnx_name).aliases == {}  # run `other` has no ONNX version
    client.set_registered_model_alias(tensor_name, "champion", "2")
    versions.follow_champion(client, params, "mnist_10k", "onnx")
    assert client.get_model_version_by_alias(onnx_name, "champion").run_id == run_id

    Image.fromarray(255 - test_digits[0]).save("digit.png")
    capsys.readouterr()
    assert predict.main(["digit.png", "--model", f"models:/{onnx_name}@champion"]) == 0
    output = capsys.readouterr()
    assert output.out.startswith("digit.png: ")
    assert output.err.startswith(f"model: models:/{onnx_name}@champion = {onnx_name} version 1 (lenet, onnx, "
                                 "test accuracy 0.")
    assert predict.main(["digit.png", "--model", f"models:/{onnx_name}@nobody"]) == predict.EXIT_BAD_MODEL
    error = capsys.readouterr().err
    assert error.startswith(f"error: models:/{onnx_name}@nobody: ") and len(error.splitlines()) == 1


# run.json names no temperature: the ONNX file says so in its metadata; a .tflite file carries none
NO_TEMPERATURE = {"onnx": "uncalibrated", "litert": "calibration not recorded (export folds T into a .tflite file; its "
                  "export report names it)"}


def test_predict_with_the_onnx_file_runs_without_tensorflow(exported, test_digits):
    from PIL import Image

    params, report = exported
    Image.fromarray(255 - test_digits[0]).save("digit.png")
    for format in ("onnx", "litert"):
        path = exported_file(params.paths, format)
        result = subprocess.run([sys.executable, "-c", REFUSE_TENSORFLOW, "stages.predict", "--model",
                                 str(path), "digit.png"], capture_output=True, text=True,
                                timeout=120, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
        assert "imported " not in result.stderr and result.returncode == 0, result.stderr[-3000:]
        accuracy = report["files"][format]["test_accuracy"]
        assert result.stderr == (f"model: {path} (lenet, {format}, "
                                 f"test accuracy {accuracy:.4f}), {NO_TEMPERATURE[format]}\n")
        assert result.stdout.startswith("digit.png: ") and len(result.stdout.splitlines()) == 1


@pytest.mark.parametrize("format", ["onnx_int8", "litert_int8"])
def test_each_int8_file_passes_its_gate_run_by_its_own_runtime(exported, mnist_10k, format):
    params, report = exported
    path, float_path = exported_file(params.paths, format), exported_file(params.paths, FORMATS[format].quantizes)
    # Oracles outside the gate: the file's own size, and the session's Keras model on the 2,000 held-out digits
    assert path.stat().st_size <= 0.30 * float_path.stat().st_size
    from stages.core.architectures import load_model

    images, labels = mnist_digits(mnist_10k, "test", 2000)
    keras_classes = load_model(params.paths.model, 10, advice="").predict(images, verbose=0).argmax(axis=1)
    classes = shipping.RUNTIMES[format](path).predict(images).argmax(axis=1)
    assert np.mean(classes == keras_classes) >= 0.998 and len(np.unique(classes)) == 10
    assert np.mean(classes == labels) >= np.mean(keras_classes == labels) - 0.002
    assert report[format]["agreement"] == pytest.approx(np.mean(classes == keras_classes), abs=1e-3)
    assert report["files"][format]["test_accuracy"] == pytest.approx(np.mean(classes == labels), abs=1e-3)


def test_the_int8_onnx_file_is_registered_beside_the_float_one(exported):
    import mlflow

    from stages.core.tracking import registry

    params, _ = exported
    client = mlflow.MlflowClient(params.tracking.uri)
    name = registry.registered_name(params, "mnist_10k", "onnx-int8")
    assert name == "mnist_10k-cnn-onnx-int8" and "onnx-int8" in registry.kinds()
    [version] = client.search_model_versions(f"name = '{name}'")
    run_id = json.loads(Path(params.paths.run).read_text())["run_id"]
    assert version.run_id == run_id
    assert "litert_int8/model_int8.tflite" in [item.path for item in client.list_artifacts(run_id, "litert_int8")]


@pytest.mark.parametrize("format", ["onnx_int8", "litert_int8"])
def test_predict_with_an_int8_file_gives_the_float_files_class_on_held_out_pngs(exported, test_digits, capsys, format,
                                                                                 tmp_path):
    from PIL import Image

    params, _ = exported
    files = []
    for index, digit in enumerate(test_digits[:500]):
        files.append(str(tmp_path / f"{index}.png"))
        Image.fromarray(255 - digit).save(files[-1])  # dark ink on white paper, as a scan or a photo
    answers = {}
    for model in (FORMATS[format].quantizes, format):
        capsys.readouterr()
        assert predict.main(["--json", "--model", str(exported_file(params.paths, model)), *files]) == 0
        answers[model] = [json.loads(line)["predicted"] for line in capsys.readouterr().out.splitlines()]
    float_classes, int8_classes = answers.values()
    assert len(int8_classes) == len(float_classes) == 500 and len(set(int8_classes)) == 10
    assert np.mean(np.array(int8_classes) == float_classes) >= 0.998


def test_the_int8_gate_refuses_a_file_below_its_agreement_even_at_no_accuracy_cost():
    """Hand-made answers (the oracle is the count of changed classes): on 1,000 digits the float model is wrong on
    100; an int8 file answering another wrong class on 10 of those (99.0% agreement, no accuracy lost, a quarter of
    the float file's size, every class answered) is refused at agreement 0.998; on 2 of them (99.8%) it passes."""
    labels = np.arange(1000) % 10
    keras_classes = np.where(np.arange(1000) < 100, (labels + 1) % 10, labels)  # wrong on the first 100
    limits = SimpleNamespace(agreement=0.998, accuracy_loss=0.002, size_ratio=0.30)
    gate = shipping.int8_gate(np.eye(10)[keras_classes] * 0.9 + 0.01, labels, 4_000_000, limits)
    problems = {}
    for changed in (10, 2):
        int8_classes = keras_classes.copy()
        int8_classes[:changed] = (labels[:changed] + 2) % 10  # wrong before, wrong after: accuracy unchanged
        result, problems[changed] = gate(np.eye(10)[int8_classes] * 0.9 + 0.01, 1_000_000)
        assert result["agreement"] == pytest.approx(1 - changed / 1000) and result["accuracy_loss"] == 0
    assert problems[2] is None
    assert problems[10] is not None and "same class on 99.00% of them (at least 99.80%)" in problems[10]


@pytest.mark.parametrize("format", ["onnx_int8", "litert_int8"])
def test_a_broken_calibration_makes_the_int8_gate_refuse_the_file(model, mnist_10k, tmp_path, format):
    images, labels = mnist_digits(mnist_10k, "test", 300)
    inference = shipping.inference_model(model)
    reference = inference.predict(images, verbose=0)
    limits = SimpleNamespace(agreement=0.998, accuracy_loss=0.002, size_ratio=0.30)
    gate = shipping.int8_gate(reference, labels, shipping.float_file_bytes(inference, FORMATS[format].quantizes, {}),
                              limits)
    blank = np.zeros((100, 28, 28, 1), np.float32)  # a representative set of blank images: every range collapses
    with pytest.raises(shipping.ExportError, match=rf"the {format} file disagrees with the Keras model on the 300 "
                                                   r"held-out images: same class on .*%.*; not written"):
        shipping.export_checked(inference, format, tmp_path / FORMATS[format].file, images, gate, {}, blank)
    assert list(tmp_path.iterdir()) == []


def test_a_file_that_disagrees_with_keras_is_not_written(model, mnist_10k, tmp_path):
    images, _ = mnist_digits(mnist_10k, "test", 50)
    inference = shipping.inference_model(model)
    reference = inference.predict(images, verbose=0)[::-1]  # another image's probabilities for most of them
    target = tmp_path / "model.onnx"
    with pytest.raises(shipping.ExportError, match=r"the onnx file disagrees with the Keras model on the 50 held-out "
                                                   r"images: same class on .*%.*; not written"):
        shipping.export_checked(inference, "onnx", target, images, shipping.float_gate(reference, 1e-4), {})
    assert list(tmp_path.iterdir()) == []


def test_a_file_whose_weights_were_perturbed_is_refused(model, mnist_10k, tmp_path):
    """The file of a copy whose weights were nudged (noise of 2% of each tensor's spread: most classes stay, the
    probabilities move past the tolerance), checked against the model itself, is refused."""
    images, _ = mnist_digits(mnist_10k, "test", 50)
    inference = shipping.inference_model(model)
    reference = inference.predict(images, verbose=0)
    nudged = shipping.inference_model(model)
    rng = np.random.default_rng(0)
    nudged.set_weights([weights + rng.normal(0, 0.02 * (weights.std() or 1), weights.shape).astype(weights.dtype)
                        for weights in nudged.get_weights()])
    with pytest.raises(shipping.ExportError, match=r"the onnx file disagrees with the Keras model .*; not written"):
        shipping.export_checked(nudged, "onnx", tmp_path / "model.onnx", images, shipping.float_gate(reference, 1e-4),
                                {})
    assert list(tmp_path.iterdir()) == []


def test_a_missing_runtime_is_one_error_and_no_file(model, mnist_10k, tmp_path, monkeypatch):
    images, _ = mnist_digits(mnist_10k, "test", 10)
    inference = shipping.inference_model(model)
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # as if it were not installed
    with pytest.raises(shipping.ExportError, match=r"the onnx runtime \(onnxruntime\) cannot be imported .*"
                                                   r"pip install -r requirements.lock"):
        shipping.export_checked(inference, "onnx", tmp_path / "model.onnx", images,
                                shipping.float_gate(inference.predict(images, verbose=0), 1e-4), {})
    assert list(tmp_path.iterdir()) == []


def test_a_full_disk_is_the_projects_one_line_and_the_rerun_ships(raw_params, mnist_10k, model_path, processed_dir,
                                                                  tmp_path):
    """Export on a full disk says what every stage says of one (docs/faults.md), not that a format is at fault;
    nothing is left half-written, and with space again the same export ships."""
    import shutil

    from helpers.disk import fill, small_disk
    from helpers.params import shrunk_params, write_params

    from stages import export
    from stages.core.files import write_json

    with small_disk(tmp_path / "models" / "export", 8) as disk:
        params = shrunk_params(raw_params, tmp_path, mnist_10k, export__formats=["onnx"], paths__export_dir=str(disk))
        write_params(tmp_path, params)
        shutil.copy(model_path, params.paths.model)
        shutil.copytree(processed_dir, params.paths.processed)
        write_json(params.paths.run, {"run_id": "by-hand"})
        filler = fill(disk, 0)
        full = subprocess.run([sys.executable, "-m", "stages.export"], cwd=tmp_path, env=project_env([ROOT]),
                              capture_output=True, text=True, timeout=600)
        output = full.stdout + full.stderr
        assert full.returncode == 1 and "Traceback" not in output, output[-4000:]
        assert [line for line in output.splitlines() if line.startswith("error")] == [
            f"error: cannot write {disk / 'model.onnx'}: No space left on device; free space (or raise the file-size "
            "limit), then rerun `dvc repro`"], output[-4000:]
        assert [path.name for path in disk.iterdir()] == ["filler"] and not Path(params.paths.export).exists()

        filler.unlink()  # space again
        report = export.run(params)
        assert report["files"]["onnx"]["sha256"] == shipping.file_sha256(disk / "model.onnx")


def test_predict_refuses_an_unknown_model_format(tmp_path, capsys, test_digits):
    from PIL import Image

    (tmp_path / "model.pt").write_bytes(b"torch")
    Image.fromarray(255 - test_digits[0]).save(tmp_path / "digit.png")  # the images are read before the model
    assert predict.main([str(tmp_path / "digit.png"), "--model", str(tmp_path / "model.pt"), "--dataset",
                         "mnist"]) == predict.EXIT_BAD_MODEL
    error = capsys.readouterr().err
    assert "unknown model format '.pt'; expected a .keras, .onnx or .tflite file or an MLflow model URI" in error


def test_a_format_added_to_the_registry_is_allowed_exported_and_logged_with_no_other_edit(exported, monkeypatch):
    """One entry in stages/core/formats.py (and its exporter and runtime beside it in shipping): the params check,
    the export stage and MLflow take it; dvc.yaml's one out, the folder, already holds its file."""
    import mlflow

    from stages import export
    from stages.core import formats
    from stages.core import records as handed
    from stages.core.tracking import registry, store

    params, _ = exported
    fake = formats.Format("fake", "model.fake", flavour=None, kind=None, runtime="onnxruntime")
    monkeypatch.setitem(formats.FORMATS, "fake", fake)
    monkeypatch.setitem(shipping.EXPORTERS, "fake", shipping.export_onnx)  # ONNX bytes under another name
    monkeypatch.setitem(shipping.RUNTIMES, "fake", shipping.OnnxModel)
    assert formats.check_formats(["fake"]) == []
    params = params.model_copy(update={"export": params.export.model_copy(update={"formats": ["fake"]})})
    report = export.run(params)
    path = Path(params.paths.export_dir) / "model.fake"
    assert report["files"]["fake"]["sha256"] == shipping.file_sha256(path) and report["fake"]["agreement"] == 1.0
    assert not (Path(params.paths.export_dir) / "model.onnx").exists()  # a format dropped: its file goes
    client, run_id = store.attached_run(params)
    info = handed.read_dataset_info(params.paths)
    registry.log_exports(params, client, run_id, {"fake": path}, report, None, info["dataset"], "sha")
    assert "fake/model.fake" in [item.path for item in mlflow.MlflowClient(params.tracking.uri).list_artifacts(
        run_id, "fake")]


def test_dvc_repro_writes_every_format_int8_included(project_copy, tmp_path, mnist_10k):
    """The export stage as DVC runs it, every format listed: the two int8 files pass their gate beside the float
    ones. LeNet, 3 epochs on the 8,000 mnist-10k training digits (as the session's model): int8 needs a model
    sure of its classes, one barely trained has too many near-ties for 99.8% agreement."""
    project = project_copy(tmp_path / "project", {
        "data.source": str(mnist_10k), "data.dataset": "mnist", "model.architecture": "lenet", "train.epochs": 3,
        "train.augment.enabled": False, "tracking.enabled": False, "export.formats": list(FORMATS)})
    result = sh(project, "dvc", "repro", "export")
    paths = project_paths(project)
    assert sorted(path.name for path in paths.export_dir.iterdir()) == sorted(f.file for f in FORMATS.values())
    report = json.loads(paths.export.read_text())
    for format in ("onnx_int8", "litert_int8"):
        assert report[format]["agreement"] >= 0.998 and report[format]["size_ratio"] <= 0.30
        assert f"{format}: " in result.stdout
