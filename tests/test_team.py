"""The team stack with real servers: MLflow's tracking server on PostgreSQL, basic auth, a DVC remote over SSH."""

from __future__ import annotations

from pathlib import Path

import pytest

from stages import tracking
from stages.common import PipelineError

pytestmark = pytest.mark.slow  # real servers: seconds to start each


def test_servers_come_up(mlflow_server, sshd_server):
    tracking.check_server(mlflow_server.uri)
    assert mlflow_server.client().search_experiments()


@pytest.fixture(scope="module")
def auth_server(postgresql_server, tmp_path_factory):
    """A second server, with MLflow's basic auth (users in its own database), admin password from the environment."""
    from servers import MlflowServer, require_module

    require_module("flask_wtf", "Flask-WTF (MLflow's basic-auth app)")
    folder = tmp_path_factory.mktemp("mlflow-auth")
    server = MlflowServer(postgresql_server.create_database("mlflow_auth"), folder, "--auth",
                          env={"MLFLOW_AUTH_ADMIN_PASSWORD": "team-admin-secret"}).start()
    try:
        yield server
    finally:
        server.stop()


def test_basic_auth_is_checked_before_training(auth_server, make_params, processed_dir, monkeypatch):
    from stages import train

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_TOKEN", raising=False)
    uri = auth_server.uri
    monkeypatch.delenv("MLFLOW_TRACKING_USERNAME", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_PASSWORD", raising=False)
    with pytest.raises(PipelineError) as missing:
        tracking.check_server(uri)
    assert str(missing.value) == (
        f"MLflow tracking server {uri} requires a login and the credentials are missing (HTTP 401): set "
        "MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD to your account on that server")

    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "admin")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "wrong")
    params = make_params(paths__processed=str(processed_dir), tracking__enabled=True, tracking__uri=uri)
    with pytest.raises(PipelineError, match=f"{uri} requires a login and the credentials were refused"):
        train.run(params)
    assert not Path(params.paths.model).parent.exists()

    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "team-admin-secret")
    tracking.check_server(uri)  # the right credentials pass
