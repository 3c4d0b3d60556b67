"""The experiment's saved view "Test accuracy first": MLflow's runs page as this project compares runs.

MLflow 3's UI sorts metrics by name, so its charts open on `accuracy` and `best_val_accuracy`, and its runs table
by start time. What a project can set is a saved view: an experiment tag `mlflow.sharedViewState.<key>` holding
what the UI's "Views > Save as new view" stores (name, times, and the page's state as JSON), which anyone opens
from the Views menu or with `?viewStateShareKey=<key>` in the URL (`page_url`). Ours sorts the runs by test
accuracy, shows it in the table, and opens the charts on the test metrics, the training curves below them.

What the project cannot set (the browser keeps it): which view opens without the key in the URL, the
GenAI/training switch (`workflowType` in the URL does), the assistant panel MLflow opens on a first visit, and the
run page's and the compare-runs page's order (metrics by name, or as logged).
Imports nothing heavy: the Makefile's next steps print `page_url` without MLflow.
"""

from __future__ import annotations

import json

VIEW_TAG_PREFIX = "mlflow.sharedViewState."  # MLflow 3.17's UI: experiment tags holding saved views
TEST_FIRST_VIEW = "test-accuracy-first"
VIEW_NAME = "Test accuracy first"
TEST_METRICS = ("test_accuracy", "own_test_accuracy", "test_loss", "macro_f1")  # one bar per run
CURVES = ("val_accuracy", "accuracy", "val_loss", "loss", "learning_rate")  # one line per run, by epoch
# The runs table's columns, in this order after the run's name (MLflow's own order puts metrics after the attributes)
TABLE_COLUMNS = ("metrics.`test_accuracy`", "tags.`dataset`", "params.`model.name`", "params.`train.epochs`",
                 "attributes.`Models`")


def chart(metric: str, section: str, kind: str) -> dict:
    card = {"uuid": f"{section}-{metric}", "type": kind, "runsCountToCompare": 10, "metricSectionId": section,
            "deleted": False, "isGenerated": False, "metricKey": metric, "displayName": metric}
    if kind == "LINE":
        card |= {"xAxisKey": "step", "xAxisScaleType": "linear", "scaleType": "linear", "lineSmoothness": 0,
                 "range": {}, "selectedXAxisMetricKey": "", "yAxisKey": "metric", "yAxisExpressions": [],
                 "ignoreOutliers": False, "useGlobalXaxisKey": True, "useGlobalLineSmoothing": True}
    return card


def section(uuid: str, name: str) -> dict:
    return {"uuid": uuid, "name": name, "display": True, "isReordered": True, "deleted": False, "isGenerated": False}


def view_state() -> dict:
    """The runs page's state as the UI saves it: sort, table columns, chart sections and their charts."""
    return {
        "orderByKey": "metrics.`test_accuracy`", "orderByAsc": False, "selectedColumns": list(TABLE_COLUMNS),
        "columnOrder": list(TABLE_COLUMNS),
        "compareRunSections": [section("test", "Test metrics: the held-out digits"),
                               section("training", "Training curves, by epoch")],
        "compareRunCharts": [chart(metric, "test", "BAR") for metric in TEST_METRICS]
        + [chart(metric, "training", "LINE") for metric in CURVES],
        "isAccordionReordered": True, "hideEmptyCharts": True,  # own_test_accuracy only where data.own trained
    }


def view_tag() -> tuple[str, str]:
    """(key, value) of the experiment tag that saves the view (store.experiment_id sets it); the same on every
    call."""
    envelope = {"name": VIEW_NAME, "createdAt": 0, "updatedAt": 0, "state": json.dumps(view_state())}
    return VIEW_TAG_PREFIX + TEST_FIRST_VIEW, json.dumps(envelope)


def page_url(base: str, experiment_id: str) -> str:
    """The experiment's runs in MLflow's training view, as charts, through the saved view."""
    return (f"{base.rstrip('/')}/#/experiments/{experiment_id}/runs?workflowType=machine_learning"
            f"&compareRunsMode=CHART&viewStateShareKey={TEST_FIRST_VIEW}")
