"""MLflow tracking against a real SQLite store: what a run records, how it ends, and where it lands."""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import numpy as np
import pytest
from helpers.card import check_card
from helpers.net import answering, free_port

from stages import evaluate, export, plots, register, train
from stages.core import calibration, records
from stages.core import card as card_module
from stages.core.errors import PipelineError
from stages.core.schema import flatten
from stages.core.tracking import registry, versions
from stages.core.tracking import store as tracking_store


def client_for(root: Path):
    import mlflow

    uri = f"sqlite:///{root / 'mlflow.db'}"
    return mlflow.MlflowClient(uri, registry_uri=uri)  # not the process's last registry URI (an earlier test's store)


def only_run(client, experiment: str = "mnist"):
    runs = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    assert len(runs) == 1
    return runs[0]


@pytest.fixture(scope="module")
def recorded(raw_params, tmp_path_factory, mnist_10k, processed_dir):
    """One small pipeline run, train to register, MLflow on in the default store (tmp root as the project root, as
    the `store` fixture makes it): (params, metrics, registered versions, the root)."""
    from helpers.params import shrunk_params

    root = tmp_path_factory.mktemp("recorded")
    params = shrunk_params(raw_params, root, mnist_10k, paths__processed=str(processed_dir),
                           model__architecture="conv10", train__epochs=2, tracking__enabled=True,
                           train__precision="float32")  # float32: the .keras file compared below
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv("MLFLOW_TRACKING_URI", raising=False)
        patch.setenv("DVC_ROOT", str(root))
        patch.delenv("DVC_EXP_NAME", raising=False)
        train.run(params)
        metrics = evaluate.run(params)
        plots.run(params)
        export.run(params)
        registered = register.run(params)
        yield params, metrics, registered, root


def test_pipeline_run_is_recorded_completely(recorded, processed_dir):
    import keras
    import mlflow

    params, metrics, registered, store = recorded
    client = client_for(store)
    run = only_run(client)
    assert run.info.status == "FINISHED"
    assert run.info.run_name.startswith("conv10-adam-")
    assert run.data.params["train.epochs"] == "2" and run.data.params["model.name"] == "conv10"
    written = json.loads(Path(params.paths.run).read_text())
    assert written["run_id"] == run.info.run_id and written["epochs_run"] == 2
    assert written["train_seconds"] == pytest.approx(run.data.metrics["system/train_seconds"])
    # Not the model's numbers: in MLflow's system metrics section, not beside loss and accuracy.
    assert not {"seconds", "epochs_run", "train_seconds"} & set(run.data.metrics)
    assert [m.step for m in client.get_metric_history(run.info.run_id, "system/epoch_seconds")] == [1, 2]
    assert not [key for key in run.data.params if key.startswith("paths.")], "paths are no knob of a run"
    # The LoggedModel: named after the architecture, with the kept epoch's training and validation accuracy and
    # the test metrics, each linked to its split's dataset (MLflow's model page lists those datasets).
    logged = mlflow.get_logged_model(written["model_id"])
    assert logged.name == "conv10" and logged.source_run_id == run.info.run_id
    linked = {metric.key: metric.dataset_name for metric in logged.metrics}
    assert {key: linked.get(key) for key in ("train_accuracy", "val_accuracy", "test_accuracy")} == {
        "train_accuracy": "mnist_10k-train", "val_accuracy": "mnist_10k-val", "test_accuracy": "mnist_10k-held-out"}
    kept = [m for m in logged.metrics if m.key == "val_accuracy"][0]
    assert kept.step == written["kept_epoch"] and kept.value == pytest.approx(written["best_val_accuracy"])
    assert int(run.data.params["model.parameters"]) > 0
    for key in ("loss", "accuracy", "val_loss", "val_accuracy"):
        history = client.get_metric_history(run.info.run_id, key)
        # val_accuracy: the kept epoch's value again, linked to the model (same step, same value: the same curve)
        assert sorted({m.step for m in history}) == [1, 2] and len(history) == 2 + (key == "val_accuracy")
    assert run.data.metrics["test_accuracy"] == pytest.approx(metrics["test_accuracy"])
    # processed_dir holds the MNIST sample (a copy of it, recognised by its checksums), and the run says so.
    assert (run.data.tags["dataset"], run.data.tags["dataset.sample_of"]) == ("mnist_10k", "mnist")
    assert len(run.data.tags["data.sha256"]) == 64
    inputs = {tag.value: item.dataset for item in run.inputs.dataset_inputs for tag in item.tags
              if tag.key == "mlflow.data.context"}
    assert {context: dataset.name for context, dataset in inputs.items()} == {
        "training": "mnist_10k-train", "validation": "mnist_10k-val", "test": "mnist_10k-held-out"}
    with np.load(processed_dir / "val.npz") as val:
        digest = hashlib.sha256(val["x"].tobytes() + val["labels"].tobytes()).hexdigest()
    assert inputs["validation"].digest == digest[:36]
    with np.load(processed_dir / "val.npz") as val:
        images = len(val["labels"])
    assert json.loads(inputs["validation"].profile) == {"images": images, "image_shape": [28, 28, 1], "classes": 10,
                                                        "dtype": "float32"}
    assert "28, 28, 1" in inputs["validation"].schema  # the drawer's schema: the image tensor's shape and type
    assert client.get_experiment_by_name("mnist").tags["mlflow.experimentKind"] == "custom_model_development"
    assert run.data.tags["precision"] in ("float32", "mixed_bfloat16")
    assert {"git.commit", "git.dirty", "tensorflow.version", "keras.version"} <= set(run.data.tags)

    artifacts = {a.path for folder in ("reports", "plots", "model_outputs")
                 for a in client.list_artifacts(run.info.run_id, folder)}
    assert {"reports/predictions.csv", "reports/confusion.csv", "plots/curves.png",
            "plots/confusion_matrix.png", "model_outputs/history.csv"} <= artifacts
    assert (store / "mlartifacts").is_dir(), "artifacts live beside mlflow.db"

    # The sample's models are named after it: they never race full-MNIST models (registry.registered_name).
    name = versions.registered_name(params, "mnist_10k")
    assert name == "mnist_10k-cnn"
    version = client.get_model_version_by_alias(name, "champion")
    assert version.run_id == run.info.run_id and registered[name] == str(version.version)
    # Every registered model of the run at once, the ONNX export's champion following the tensor model's.
    assert set(registered) == {name, f"{name}-images", f"{name}-onnx"}
    assert client.get_model_version_by_alias(f"{name}-onnx", "champion").run_id == run.info.run_id
    # The image model of the same run is its registered model's champion too (tests/test_image_model.py serves it).
    image_version = client.get_model_version_by_alias(versions.registered_name(params, "mnist_10k", "images"),
                                                      "champion")
    assert image_version.run_id == run.info.run_id
    assert float(version.tags["test_accuracy"]) == pytest.approx(metrics["test_accuracy"], abs=1e-6)
    assert version.tags["test_sha256"] == json.loads((processed_dir / "dataset.json").read_text())[
        "splits"]["test"]["sha256"]

    model_uri = f"models:/{name}/{version.version}"
    assert mlflow.models.get_model_info(model_uri).signature is not None
    images = np.load(processed_dir / "test.npz")["x"][:16]
    # The registered copy answers calibrated: train's temperature folded in (one model, one answer).
    temperature = records.read_run(params.paths).temperature
    assert temperature != 1.0
    expected = calibration.scaled(keras.saving.load_model(params.paths.model).predict(images, verbose=0), temperature)
    np.testing.assert_allclose(np.asarray(mlflow.pyfunc.load_model(model_uri).predict(images)), expected,
                               rtol=1e-4, atol=1e-4)


def test_a_training_that_raises_ends_failed(make_params, processed_dir, store, monkeypatch):
    import keras

    class Explode(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            raise RuntimeError("boom")

    params = make_params(paths__processed=str(processed_dir), model__architecture="conv10", tracking__enabled=True)
    with pytest.raises(RuntimeError, match="boom"):
        train.run(params, extra_callbacks=[Explode()])
    assert only_run(client_for(store)).info.status == "FAILED"
    assert not Path(params.paths.model).exists()


def test_unreachable_tracking_server_fails_before_training(make_params, processed_dir, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)  # it would win over tracking.uri
    uri = f"http://127.0.0.1:{free_port()}"
    params = make_params(paths__processed=str(processed_dir), tracking__enabled=True, tracking__uri=uri)
    started = time.monotonic()
    with pytest.raises(PipelineError, match=f"MLflow tracking server {uri} is unreachable"):
        train.run(params)
    assert time.monotonic() - started < 15
    assert not Path(params.paths.model).parent.exists()


def test_a_server_answering_500_fails_in_seconds(monkeypatch):
    """/health or not, a server that fails every request is not healthy: one line, no minutes of retries."""
    server = answering(lambda handler: handler.send_error(500, "Internal Server Error"))
    uri = server.url
    monkeypatch.delenv("MLFLOW_TRACKING_USERNAME", raising=False)
    started = time.monotonic()
    try:
        failing = f"MLflow tracking server {uri} answers HTTP 500 .*see the server's log"
        with pytest.raises(PipelineError, match=failing):
            tracking_store.check_server(uri)
    finally:
        server.close()
    assert time.monotonic() - started < 5


def test_flatten_gives_dotted_keys():
    flat = flatten({"train": {"optimizer": {"name": "adam", "kwargs": {}}, "epochs": 3}, "seed": 1,
                             "model": {"layers": [{"type": "Flatten"}]}})
    assert flat == {"train.optimizer.name": "adam", "train.optimizer.kwargs": "{}", "train.epochs": 3, "seed": 1,
                    "model.layers": '[{"type": "Flatten"}]'}


def test_default_store_is_the_project_roots_sqlite(make_params, monkeypatch, tmp_path):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("DVC_ROOT", str(tmp_path / "repo"))
    assert tracking_store.tracking_uri(make_params()) .startswith(f"sqlite:///{tmp_path / 'repo' / 'mlflow.db'}")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    assert tracking_store.tracking_uri(make_params()) == "http://127.0.0.1:5000"


def test_an_experiment_made_without_a_kind_opens_in_the_training_view(make_params, store):
    client = client_for(store)
    experiment_id = client.create_experiment("mnist")  # as an older version of the project, or a user, made it
    assert "mlflow.experimentKind" not in client.get_experiment(experiment_id).tags
    _, connected_id = tracking_store.connect(make_params(tracking__enabled=True))
    assert connected_id == experiment_id
    assert client.get_experiment(experiment_id).tags["mlflow.experimentKind"] == "custom_model_development"


def test_each_dataset_and_test_set_keeps_its_own_champion_and_a_dead_run_never_wins(make_params, store, tmp_path):
    """Versions compete only under their dataset's name and on the same test set; a KILLED run's version is tagged
    and passed over, even with the best accuracy."""
    params = make_params(tracking__enabled=True)
    client, experiment_id = tracking_store.connect(params)

    def evaluated(dataset: str, accuracy: float, test_sha256: str, status: str = "FINISHED") -> str:
        name = versions.registered_name(params, dataset)
        if not client.search_registered_models(f"name = '{name}'"):
            client.create_registered_model(name)
        run = client.create_run(experiment_id)
        version = client.create_model_version(name, f"runs:/{run.info.run_id}/model", run_id=run.info.run_id)
        run_file = tmp_path / f"run-{run.info.run_id}.json"
        run_file.write_text(json.dumps({"run_id": run.info.run_id}))
        client.set_terminated(run.info.run_id, status)
        registry.crown(client, params, run.info.run_id, dataset, accuracy, test_sha256)
        return str(version.version)

    def champion(dataset: str) -> str:
        return str(client.get_model_version_by_alias(versions.registered_name(params, dataset), "champion").version)

    mnist = evaluated("mnist", 0.99, "mnist-test")
    evaluated("fashion_mnist", 0.91, "fashion-test")
    evaluated("fashion_mnist", 0.89, "fashion-test")
    assert (champion("mnist"), champion("fashion_mnist")) == (mnist, "1")
    # A dead run's version never becomes champion, and says why.
    name = versions.registered_name(params, "mnist")
    killed = evaluated("mnist", 0.999, "mnist-test", status="KILLED")
    assert champion("mnist") == mnist
    assert client.get_model_version(name, killed).tags["run_status"] == "KILLED"
    # Nor stays champion: a champion whose run is found FAILED later loses the alias, and the next evaluation
    # names the best living version.
    run_id = client.get_model_version(name, mnist).run_id
    client.set_terminated(run_id, "FAILED")
    versions.mark_dead_versions(client, run_id, "FAILED")
    assert client.get_model_version(name, mnist).tags["run_status"] == "FAILED"
    assert not client.get_registered_model(name).aliases
    evaluated("mnist", 0.98, "mnist-test")
    assert champion("mnist") == str(int(killed) + 1)
    # A changed test set starts a new race: its best version becomes champion, whatever the old set's scores.
    changed = evaluated("mnist", 0.95, "new-test")
    assert champion("mnist") == changed
    assert versions.registered_name(params, "mnist", "onnx") == "mnist-cnn-onnx"


def test_the_model_card_shows_the_runs_own_numbers_and_every_registered_version_carries_it(recorded, tmp_path):
    import shutil

    params, _, registered, store = recorded
    card = Path(params.paths.model_card).read_text()
    print(card)
    check_card(card, params.paths)
    assert len(card) < 5000  # MLflow's registry keeps a version's description in a 5,000-character column
    client = client_for(store)
    for name, version in registered.items():
        assert client.get_model_version(name, version).description == card
    model_id = records.read_run(params.paths).model_id
    assert "model_card.md" in {artifact.path for artifact in client.list_logged_model_artifacts(model_id)}

    # With your own digits held out (the run's files as they would read): the card shows them, the oracle agrees.
    copy = params.paths.model_copy(update={key: str(tmp_path / Path(value).name) for key, value in
                                           params.paths.model_dump().items()})
    processed = Path(copy.processed)
    shutil.copytree(params.paths.processed, processed)
    for key in ("run", "metrics", "per_class", "confusion", "export"):
        shutil.copy(getattr(params.paths, key), getattr(copy, key))
    info = json.loads((processed / "dataset.json").read_text())
    info["splits"]["own_test"] = {"images": 9, "sha256": "own"}
    info["splits"]["train"]["own_images"] = 21
    (processed / "dataset.json").write_text(json.dumps(info))
    Path(copy.metrics).write_text(json.dumps({**json.loads(Path(copy.metrics).read_text()),
                                              "own_test_accuracy": 0.8888889}))
    check_card(card_module.model_card(copy, "copy"), copy)
