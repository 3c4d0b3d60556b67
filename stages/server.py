"""The team's MLflow tracking server: `mlflow server` with the project's defaults.

    python -m stages.server --backend-store-uri postgresql://mlflow:PASSWORD@db-host/mlflow [--auth]
                            [--artifacts-destination DIR | s3://bucket/path] [--host 127.0.0.1] [--port 5000]
                            [any other `mlflow server` option]

Runs and the model registry go to PostgreSQL (MLflow opens `postgresql://` through psycopg 3). Artifacts are
proxied through the server (`--artifacts-destination`), so clients need no access to the artifact store. The
server binds to 127.0.0.1 unless --host names another interface. The database is checked first (one connection,
seconds): a wrong password or an unreachable database is one line and exit 1, not MLflow's minutes of retries.

Secrets: the backend URI reaches `mlflow server` through MLFLOW_BACKEND_STORE_URI (which it reads itself), never
its command line, so `ps` shows no password; pass it the same way (MLFLOW_BACKEND_STORE_URI) to keep it off this
wrapper's command line too. `--auth` switches on MLflow's basic authentication, with its users in the same
database: the admin user is created on first start from MLFLOW_AUTH_ADMIN_USERNAME / MLFLOW_AUTH_ADMIN_PASSWORD.
MLflow reads its auth settings from a file only, at every worker's start; this wrapper writes it owner-only
without the password (libpq takes that from PGPASSWORD), runs the server as its child, forwards SIGTERM, SIGINT
and SIGHUP to it and removes the file when it exits. Killed with SIGKILL, it takes the server along (a parent-death
signal, as the search's trials have): no orphan keeps serving or keeps PGPASSWORD in its environment, and the next
start removes the file left behind, never one a live server still holds (an flock shared with its server).
Every user may read every experiment and model (`default_permission = READ`); writing needs a grant
(docs/team.md: "A shared tracking server").
"""

from __future__ import annotations

import stages.core.venv  # noqa: F401  (first: without the project's packages, one line, not a traceback)

import argparse
import contextlib
import fcntl
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

from stages.core.entry import dies_with_parent

# READ: an explicit READ grant holds (with EDIT as the default, every grant is raised to EDIT).
AUTH_CONFIG = """\
[mlflow]
default_permission = READ
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
    # No --backend-store-uri: the server reads MLFLOW_BACKEND_STORE_URI (main() sets it), off the command line.
    command = [mlflow or "mlflow", "server", "--artifacts-destination", destination, "--host", args.host,
               "--port", str(args.port)]
    if args.auth:
        command += ["--app-name", "basic-auth"]
    return command + extra


def database_url(uri: str):
    """The backend URI as SQLAlchemy parses it; exits with one line when it cannot be parsed."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        return make_url(uri)
    except ArgumentError:
        sys.exit("error: the backend store URI cannot be parsed: expected postgresql://user:password@host/database")


def check_database(url) -> None:
    """One connection to a PostgreSQL backend, before the server starts: a wrong password or a database out of
    reach is one line in seconds (MLflow would retry with backoff for minutes, saying nothing)."""
    if not url.drivername.startswith("postgresql"):
        return
    import psycopg

    shown = url.render_as_string(hide_password=True)
    try:
        psycopg.connect(url.set(drivername="postgresql").render_as_string(hide_password=False),
                        connect_timeout=5).close()
    except psycopg.Error as error:
        reason = " ".join(str(error).split()) or type(error).__name__
        sys.exit(f"error: cannot open the backend store {shown}: {reason}")


AUTH_FILE_PREFIX = "mlflow-auth-"


def in_use(handle) -> bool:
    """Whether a live server holds this auth file: each wrapper keeps an flock on its own, shared with `mlflow
    server` (which inherits the descriptor), so the lock lasts as long as either process does."""
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    return False


def remove_stale_auth_files(folder: Path) -> None:
    """Auth files no live server holds: left by a wrapper killed with SIGKILL (its server died with it)."""
    for path in folder.glob(f"{AUTH_FILE_PREFIX}*.ini"):
        with contextlib.suppress(OSError), open(path) as handle:
            if os.fstat(handle.fileno()).st_uid == os.getuid() and not in_use(handle):
                path.unlink(missing_ok=True)


def write_auth_config(url):
    """The auth settings file (owner-only), its database URI without the password, and the open, locked handle
    that marks it in use (see `in_use`)."""
    folder = Path(tempfile.gettempdir())
    remove_stale_auth_files(folder)
    while True:
        handle, path = tempfile.mkstemp(prefix=f"{AUTH_FILE_PREFIX}{os.getpid()}-", suffix=".ini", dir=folder)
        fcntl.flock(handle, fcntl.LOCK_EX)
        # Another start may have found it unlocked between mkstemp and flock, and removed it: make another.
        if os.path.exists(path) and os.path.samestat(os.fstat(handle), os.stat(path)):
            break
        os.close(handle)
    database_uri = url._replace(password=None).render_as_string(hide_password=False)  # set() skips None
    os.write(handle, AUTH_CONFIG.format(database_uri=database_uri.replace("%", "%%")).encode())
    return Path(path), handle


FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


def serve(command: list[str], env: dict[str, str], keep: tuple[int, ...] = ()) -> int:
    """Run the server as a child, forwarding stop signals to it; its exit code. Killed with SIGKILL, this process
    takes the server along: the server gets SIGTERM from the kernel (it passes it on to its uvicorn workers)."""
    server = subprocess.Popen(dies_with_parent(command, "TERM"), env=env, pass_fds=keep)

    def forward(signum, frame):
        with contextlib.suppress(ProcessLookupError):
            server.send_signal(signum)

    for signum in FORWARDED:
        signal.signal(signum, forward)
    return server.wait()


def main(argv: list[str] | None = None) -> None:
    args, extra = parse_args(sys.argv[1:] if argv is None else argv)
    command = server_command(args, extra)
    url = database_url(args.backend_store_uri)
    check_database(url)
    env = {**os.environ, "MLFLOW_BACKEND_STORE_URI": args.backend_store_uri}
    # The job runner serves GenAI evaluation jobs this project never submits: one process less.
    env.setdefault("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")
    config, lock = None, ()
    try:
        if args.auth:
            config, handle = write_auth_config(url)
            lock = (handle,)
            env["MLFLOW_AUTH_CONFIG_PATH"] = str(config)
            if url.password:
                env["PGPASSWORD"] = url.password  # the auth database's password, read by libpq
            # Signs the UI's CSRF tokens; a fresh one per start only logs browser sessions out (set it for
            # several servers behind one address).
            env.setdefault("MLFLOW_FLASK_SERVER_SECRET_KEY", secrets.token_hex(32))
        print(f"{' '.join(command)}  (backend store {url.render_as_string(hide_password=True)})", flush=True)
        code = serve(command, env, lock)
    finally:
        if config is not None:
            config.unlink(missing_ok=True)
    sys.exit(code if code >= 0 else 128 - code)


if __name__ == "__main__":
    main()
