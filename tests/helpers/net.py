"""The network side of the tests: a free port on 127.0.0.1, waiting for a server, asking whether a URL answers,
and tiny local HTTP servers."""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_until(condition, timeout: float, what: str, process: subprocess.Popen | None = None, log: Path | None = None):
    deadline = time.monotonic() + timeout
    while not condition():
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"{what} exited with {process.returncode}:\n{log.read_text()[-3000:] if log else ''}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} did not come up in {timeout:.0f} s:\n{log.read_text()[-3000:] if log else ''}")
        time.sleep(0.1)


def answers(url: str) -> bool:
    try:
        urllib.request.urlopen(url, timeout=5).close()
    except urllib.error.HTTPError:
        return True  # e.g. 401 from a server with basic auth
    except OSError:
        return False
    return True


class LocalServer(ThreadingHTTPServer):
    """A tiny HTTP server on 127.0.0.1, serving from a thread of the test until `close()` (or the `with` ends)."""

    daemon_threads = True

    def __init__(self, handler):
        super().__init__(("127.0.0.1", 0), handler)
        self.url = f"http://127.0.0.1:{self.server_address[1]}"
        threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def handle_error(self, request, client_address):
        # The client hanging up on a slow or truncated answer is what such tests are about, not a server fault.
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)

    def close(self) -> None:
        self.shutdown()
        self.server_close()

    def __exit__(self, *exc_info) -> None:
        self.close()


class QuietHandler(BaseHTTPRequestHandler):
    def log_message(self, format, *args):  # keep test output quiet
        pass


def answering(respond) -> LocalServer:
    """A LocalServer that answers every HEAD, GET and POST with `respond(handler)`; `.seen` lists request lines."""

    class Handler(QuietHandler):
        def do_GET(self):
            self.server.seen.append(self.requestline)
            respond(self)

        do_HEAD = do_POST = do_GET

    server = LocalServer(Handler)
    server.seen = []
    return server
