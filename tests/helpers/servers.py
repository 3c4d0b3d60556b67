"""Real servers for the tests, one of each per session, on 127.0.0.1: PostgreSQL, the team's MLflow server, sshd.

conftest.py makes them session fixtures. A server whose binary is missing skips its tests on a developer machine
and fails them under CI=true (`make test` installs PostgreSQL and openssh-server where it can).

- `postgresql_server`: a throw-away PostgreSQL cluster (pytest-postgresql's executor around pg_ctl, run as the
  `postgres` user when the tests run as root, since PostgreSQL refuses root). `.uri(database)` gives a
  `postgresql://` URI, `.create_database(name)` a fresh database, `.restart()` restarts the cluster.
- `mlflow_server`: `python -m stages.server` (the README's command) on a database of that cluster, artifacts
  proxied into a temporary folder. `.stop()` / `.start()` take it away and bring it back on the same port.
- `sshd_server`: an sshd with key authentication for the current user, for DVC's SSH remote.
"""

from __future__ import annotations

import contextlib
import getpass
import glob
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from helpers.net import answers, free_port, wait_until
from helpers.project import ROOT

IN_CI = os.environ.get("CI", "").lower() == "true"


def require(path: str | None, what: str) -> str:
    """The binary at `path`; missing, it fails the test under CI=true and skips it elsewhere."""
    if path and os.access(path, os.X_OK):
        return path
    message = f"{what} not found: install it (`make system` as root) to run this test"
    if IN_CI:
        pytest.fail(message)
    pytest.skip(message)


def require_module(name: str, what: str) -> None:
    """Like `require`, for a Python package the server needs (installed from requirements.lock by `make setup`)."""
    import importlib.util

    if importlib.util.find_spec(name) is None:
        message = f"{what} is not installed: run `make setup` to install requirements.lock"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)


class PostgreSQL:
    def __init__(self, executor, port: int):
        self.executor, self.port = executor, port

    def uri(self, database: str) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str) -> str:
        import psycopg

        with psycopg.connect(self.uri("postgres"), autocommit=True) as connection:
            connection.execute(f'CREATE DATABASE "{name}"')
        return self.uri(name)

    def create_user_database(self, name: str, password: str) -> str:
        """A database owned by a role that logs in with `password` (scram-sha-256; the cluster trusts every other
        role): a URI with the password in it, as a team's is."""
        import psycopg

        with psycopg.connect(self.uri("postgres"), autocommit=True) as connection:
            connection.execute(f"CREATE ROLE \"{name}\" LOGIN PASSWORD '{password}'")
            connection.execute(f'CREATE DATABASE "{name}" OWNER "{name}"')
            hba = Path(connection.execute("SHOW hba_file").fetchone()[0])
            # First match wins: this role's line goes before the cluster's `trust` lines.
            hba.write_text(f"host all {name} 127.0.0.1/32 scram-sha-256\n" + hba.read_text())
            connection.execute("SELECT pg_reload_conf()")
        return f"postgresql://{name}:{password}@127.0.0.1:{self.port}/{name}"

    def accepts_connections(self) -> bool:
        import psycopg

        try:
            psycopg.connect(self.uri("postgres"), connect_timeout=2).close()
            return True
        except psycopg.OperationalError:  # the port opens before recovery ends ("the database system is starting up")
            return False

    def start(self) -> None:
        self.executor.start()
        wait_until(self.accepts_connections, 60, "PostgreSQL", log=Path(self.executor.logfile))

    def restart(self) -> None:
        self.executor.stop()
        self.start()


class MlflowServer:
    """The team server as its users start it: `python -m stages.server`, in its own process group."""

    def __init__(self, backend_uri: str, folder: Path, *extra: str, env: dict | None = None):
        self.backend_uri, self.folder, self.extra = backend_uri, folder, extra
        self.port = free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        pythonpath = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
        self.env = {**os.environ, **(env or {}), "PYTHONPATH": pythonpath, "MLFLOW_DISABLE_TELEMETRY": "true"}
        self.process: subprocess.Popen | None = None
        self.log = folder / "server.log"

    def start(self) -> MlflowServer:
        # The URI through the environment, as the README says: it may hold the database's password.
        command = [sys.executable, "-m", "stages.server", "--artifacts-destination", str(self.folder / "artifacts"),
                   "--port", str(self.port), "--workers", "1", *self.extra]
        with open(self.log, "a") as log:
            self.process = subprocess.Popen(command, cwd=self.folder, stdout=log,
                                            env={**self.env, "MLFLOW_BACKEND_STORE_URI": self.backend_uri},
                                            stderr=subprocess.STDOUT, start_new_session=True)
        # Its first API answer, not /health: the tracking store is opened on the first request.
        wait_until(lambda: answers(f"{self.uri}/api/2.0/mlflow/experiments/search?max_results=1"), 180,
                   f"mlflow server on {self.uri}", self.process, self.log)
        return self

    def kill(self) -> None:
        """Gone at once, as a crashed machine or a lost network would leave it."""
        self.stop(signal.SIGKILL)

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.process is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, sig)
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:  # uvicorn waits for open connections; the tests want it gone
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
        wait_until(lambda: not answers(f"{self.uri}/health"), 30, f"mlflow server on {self.uri} to stop")
        self.process = None

    def client(self):
        import mlflow

        return mlflow.MlflowClient(self.uri, self.uri)


class Sshd:
    def __init__(self, port: int, user: str, key: Path):
        self.port, self.user, self.key = port, user, key

    def url(self, path: Path) -> str:
        return f"ssh://{self.user}@127.0.0.1:{self.port}{path}"


@contextlib.contextmanager
def postgresql():
    from pytest_postgresql.executors import PostgreSQLExecutor

    pg_ctl = require(max(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"), default=shutil.which("pg_ctl")),
                     "PostgreSQL (pg_ctl)")
    # Data, socket and log live in a folder the server's user owns: pytest's own temp folders are root-only.
    base = Path(tempfile.mkdtemp(prefix="mnist-postgresql-"))
    if os.geteuid() == 0:
        shutil.chown(base, "postgres", "postgres")
        wrapper = base / "pg_ctl"
        wrapper.write_text(f'#!/bin/sh\nexec runuser -u postgres -- "{pg_ctl}" "$@"\n')
        wrapper.chmod(0o755)
        pg_ctl = str(wrapper)
    port = free_port()
    executor = PostgreSQLExecutor(
        executable=pg_ctl, host="127.0.0.1", port=port, datadir=str(base / "data"), unixsocketdir=str(base),
        logfile=str(base / "postgresql.log"), startparams="-w", dbname="postgres", user="postgres",
        postgres_options="-c listen_addresses=127.0.0.1 -c fsync=off -c full_page_writes=off",
    )
    server = PostgreSQL(executor, port)
    server.start()
    try:
        yield server
    finally:
        with contextlib.suppress(Exception):
            executor.stop()
        shutil.rmtree(base, ignore_errors=True)


@contextlib.contextmanager
def team_mlflow_server(postgresql_server: PostgreSQL, folder: Path):
    """One MLflow server on PostgreSQL for the session. Tests name their own experiment to keep runs apart."""
    server = MlflowServer(postgresql_server.create_database("mlflow"), folder).start()
    try:
        yield server
    finally:
        server.stop()


@contextlib.contextmanager
def sshd(folder: Path):
    """sshd on 127.0.0.1 that lets the current user in with a throw-away key only."""
    binary = require("/usr/sbin/sshd", "OpenSSH server (/usr/sbin/sshd)")
    keygen = require(shutil.which("ssh-keygen"), "ssh-keygen")
    for name in ("host_key", "client_key"):
        subprocess.run([keygen, "-q", "-t", "ed25519", "-N", "", "-f", str(folder / name)], check=True)
    shutil.copy(folder / "client_key.pub", folder / "authorized_keys")
    port = free_port()
    (folder / "sshd_config").write_text(
        f"ListenAddress 127.0.0.1\nPort {port}\nHostKey {folder / 'host_key'}\n"
        f"AuthorizedKeysFile {folder / 'authorized_keys'}\nPidFile {folder / 'sshd.pid'}\n"
        "PasswordAuthentication no\nKbdInteractiveAuthentication no\nPubkeyAuthentication yes\n"
        "PermitRootLogin prohibit-password\nUsePAM no\nStrictModes no\nSubsystem sftp internal-sftp\n"
        "LogLevel ERROR\n"
    )
    Path("/run/sshd").mkdir(exist_ok=True)  # its privilege-separation folder, normally made by the service unit
    log = folder / "sshd.log"
    with open(log, "w") as output:
        process = subprocess.Popen([binary, "-D", "-e", "-f", str(folder / "sshd_config")], stdout=output,
                                   stderr=subprocess.STDOUT)

    def listening() -> bool:
        with socket.socket() as probe:
            return probe.connect_ex(("127.0.0.1", port)) == 0

    try:
        wait_until(listening, 30, "sshd", process, log)
        yield Sshd(port, getpass.getuser(), folder / "client_key")
    finally:
        process.terminate()
        process.wait(timeout=30)
