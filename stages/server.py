"""The team's MLflow tracking server: `mlflow server` with the project's defaults.

    python -m stages.server --backend-store-uri postgresql://mlflow:PASSWORD@db-host/mlflow [--auth]
                            [--artifacts-destination DIR | s3://bucket/path] [--host 127.0.0.1] [--port 5000]
                            [any other `mlflow server` option]

Runs and the model registry go to PostgreSQL (MLflow opens `postgresql://` through psycopg 3). Artifacts are
proxied through the server (`--artifacts-destination`), so clients need no access to the artifact store. The
server binds to 127.0.0.1 unless --host names another interface. `--auth` switches on MLflow's basic
authentication, with its users in the same database: the admin user is created on first start from
MLFLOW_AUTH_ADMIN_USERNAME / MLFLOW_AUTH_ADMIN_PASSWORD, and every user may read and log to every experiment
(`default_permission = EDIT`: one team, one set of experiments). The backend URI may also come from
MLFLOW_BACKEND_STORE_URI, which keeps the database password off the command line.
"""

from __future__ import annotations

import argparse
import os
import secrets
import shutil
import sys
import tempfile
from pathlib import Path

AUTH_CONFIG = """\
[mlflow]
default_permission = EDIT
database_uri = {database_uri}
admin_username = admin
authorization_function = mlflow.server.auth:authenticate_request_basic_auth
"""


def parse_args(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(prog="python -m stages.server", description=__doc__.split("\n\n")[0])
    parser.add_argument("--backend-store-uri", default=os.environ.get("MLFLOW_BACKEND_STORE_URI"),
                        help="postgresql://user:password@host/database (default: $MLFLOW_BACKEND_STORE_URI)")
    parser.add_argument("--artifacts-destination", default=os.environ.get("MLFLOW_ARTIFACTS_DESTINATION",
                                                                          "mlartifacts"),
                        help="where the server keeps artifacts: a folder or s3://… (default: ./mlartifacts)")
    parser.add_argument("--host", default="127.0.0.1", help="interface to bind (default: 127.0.0.1)")
    parser.add_argument("--port", default="5000")
    parser.add_argument("--auth", action="store_true", help="MLflow basic authentication, users in the same database")
    return parser.parse_known_args(argv)


def server_command(args: argparse.Namespace, extra: list[str]) -> list[str]:
    if not args.backend_store_uri:
        sys.exit("error: no backend store: pass --backend-store-uri postgresql://user:password@host/database "
                 "or set MLFLOW_BACKEND_STORE_URI")
    destination = args.artifacts_destination
    if "://" not in destination:
        destination = str(Path(destination).resolve())
    mlflow = shutil.which("mlflow", path=os.pathsep.join([str(Path(sys.executable).parent), os.environ["PATH"]]))
    command = [mlflow or "mlflow", "server", "--backend-store-uri", args.backend_store_uri,
               "--artifacts-destination", destination, "--host", args.host, "--port", str(args.port)]
    if args.auth:
        command += ["--app-name", "basic-auth"]
    return command + extra


def main(argv: list[str] | None = None) -> None:
    args, extra = parse_args(sys.argv[1:] if argv is None else argv)
    command = server_command(args, extra)
    if args.auth:
        # MLflow reads its auth settings from a file only; it holds the database password, so owner-only.
        handle, path = tempfile.mkstemp(prefix="mlflow-auth-", suffix=".ini")
        with os.fdopen(handle, "w") as config:
            config.write(AUTH_CONFIG.format(database_uri=args.backend_store_uri.replace("%", "%%")))
        os.environ["MLFLOW_AUTH_CONFIG_PATH"] = path
        # Signs the UI's CSRF tokens; a fresh one per start only logs browser sessions out (set it for several
        # servers behind one address).
        os.environ.setdefault("MLFLOW_FLASK_SERVER_SECRET_KEY", secrets.token_hex(32))
    # The job runner serves GenAI evaluation jobs this project never submits: one process less.
    os.environ.setdefault("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")
    print(" ".join(part if "@" not in part else "<backend store>" for part in command), flush=True)
    os.execv(command[0], command)


if __name__ == "__main__":
    main()
