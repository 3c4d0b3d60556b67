"""The saved view "Test accuracy first" in a real SQLite MLflow store: set on the experiment as MLflow's UI saves
views (name, times, the page's state as JSON), its charts opening on the test accuracy; set once, and added to an
experiment made before it existed. Whether MLflow's UI opens it is checked in Chromium by test_pipeline.py."""

from __future__ import annotations

import json

from stages.core.tracking import store, views

VIEW_TAG = "mlflow.sharedViewState.test-accuracy-first"


def saved_state(client, experiment_id: str) -> dict:
    envelope = json.loads(client.get_experiment(experiment_id).tags[VIEW_TAG])
    assert envelope["name"] == "Test accuracy first" and isinstance(envelope["createdAt"], int)
    return json.loads(envelope["state"])


def test_a_new_experiment_opens_on_the_test_accuracy(tmp_path):
    import mlflow

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = mlflow.MlflowClient(uri)
    state = saved_state(client, store.experiment_id(client, "mnist", uri))
    assert (state["orderByKey"], state["orderByAsc"]) == ("metrics.`test_accuracy`", False)
    assert state["columnOrder"][0] == "metrics.`test_accuracy`"
    first_section = state["compareRunSections"][0]["uuid"]
    first_chart = next(card for card in state["compareRunCharts"] if card["metricSectionId"] == first_section)
    assert first_chart["metricKey"] == "test_accuracy"
    assert {card["metricSectionId"] for card in state["compareRunCharts"]} == {
        section["uuid"] for section in state["compareRunSections"]}


def test_an_older_experiment_gets_the_view_once(tmp_path):
    import mlflow

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = mlflow.MlflowClient(uri)
    experiment_id = client.create_experiment("mnist")  # as before the view existed
    assert store.experiment_id(client, "mnist", uri) == experiment_id
    assert saved_state(client, experiment_id)["orderByKey"] == "metrics.`test_accuracy`"
    assert client.get_experiment(experiment_id).tags["mlflow.experimentKind"] == "custom_model_development"

    class NoWrites(mlflow.MlflowClient):  # the same store; a second look finds both tags and writes nothing
        def set_experiment_tag(self, *args):
            raise AssertionError("a tag was written again")

    assert store.experiment_id(NoWrites(uri), "mnist", uri) == experiment_id


def test_the_link_opens_the_view_in_the_training_view():
    assert views.page_url("http://127.0.0.1:5000/", "3") == (
        "http://127.0.0.1:5000/#/experiments/3/runs?workflowType=machine_learning&compareRunsMode=CHART"
        "&viewStateShareKey=test-accuracy-first")
