"""The saved view "Test accuracy first" in a real SQLite MLflow store: saved once, in the envelope MLflow's UI
reads (name, times, the page's state as JSON), its charts opening on the test accuracy. Whether MLflow's UI really
opens it is checked in Chromium by test_pipeline.py."""

from __future__ import annotations

import json

from stages.core.tracking import views


def test_the_view_is_saved_once_as_the_ui_saves_views(tmp_path):
    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment_id = client.create_experiment("mnist")
    views.ensure_view(client, client.get_experiment(experiment_id))
    tags = client.get_experiment(experiment_id).tags
    envelope = json.loads(tags["mlflow.sharedViewState.test-accuracy-first"])
    assert envelope["name"] == "Test accuracy first" and isinstance(envelope["createdAt"], int)
    state = json.loads(envelope["state"])
    assert (state["orderByKey"], state["orderByAsc"]) == ("metrics.`test_accuracy`", False)
    first_section = state["compareRunSections"][0]["uuid"]
    first_chart = next(card for card in state["compareRunCharts"] if card["metricSectionId"] == first_section)
    assert first_chart["metricKey"] == "test_accuracy"
    assert {card["metricSectionId"] for card in state["compareRunCharts"]} == {
        section["uuid"] for section in state["compareRunSections"]}

    class Refusing:  # a second call finds the view saved and writes nothing
        def set_experiment_tag(self, *args):
            raise AssertionError("the view was written again")

    views.ensure_view(Refusing(), client.get_experiment(experiment_id))
