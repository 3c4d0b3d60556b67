"""A search's study in MLflow: one parent run holding the report, the trials' runs its children."""

from __future__ import annotations

from pathlib import Path

from stages.core.schema import Params
from stages.core.tracking.store import connect, store_lock, tracking_uri
from stages.core.tracking.training import SEARCH_TAGS


def log_study(params: Params, study: str, files: list[Path]) -> str | None:
    """Attach the search report to the study's parent run (created once) and make each trial's run its child: every
    run tagged with the study and a trial number, failed and killed ones too."""
    if not params.tracking.enabled:
        return None
    client, experiment_id = connect(params)
    tags = {SEARCH_TAGS["STAGES_SEARCH_STUDY"]: study, "search.role": "study"}
    query = " and ".join(f"tags.`{key}` = '{value}'" for key, value in tags.items())

    def parents():
        return client.search_runs([experiment_id], filter_string=query, order_by=["attributes.start_time ASC"])

    with store_lock(tracking_uri(params)):
        found = parents()
        if not found:
            client.set_terminated(client.create_run(experiment_id, run_name=f"study {study}", tags=tags).info.run_id)
            found = parents()
            for extra in found[1:]:  # another worker created one at the same moment: keep the oldest
                client.delete_run(extra.info.run_id)
    parent = found[0].info.run_id
    study_tag = SEARCH_TAGS["STAGES_SEARCH_STUDY"]
    trial_tag = SEARCH_TAGS["STAGES_SEARCH_TRIAL"]
    for run in client.search_runs([experiment_id], filter_string=f"tags.`{study_tag}` = '{study}'", max_results=50000):
        if trial_tag in run.data.tags and run.data.tags.get("mlflow.parentRunId") != parent:
            client.set_tag(run.info.run_id, "mlflow.parentRunId", parent)
    for path in files:
        client.log_artifact(parent, str(path), "search")
    print(f"search report logged to MLflow run {parent} (study {study!r})")
    return parent
