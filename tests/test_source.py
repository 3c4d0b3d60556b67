"""The source stage: `data.source: auto` against real sockets on 127.0.0.1 standing in for the official mirrors.

The mirrors come from the test-only registry override (STAGES_TEST_REGISTRY), as in the end-to-end test: a refused
port, a server that answers 404, a proxy that answers 407, and a port that accepts but never answers.
"""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path

import pytest
from helpers.net import LocalServer, answering, free_port

from stages import source
from stages.core.datasets import TEST_REGISTRY_ENV
from stages.core.errors import PipelineError


@pytest.fixture
def answering_with():
    """Start servers answering every request with a given status; each is closed after the test."""
    servers = []

    def start(status: int) -> LocalServer:
        def respond(handler):
            handler.send_response(status)
            handler.send_header("Content-Length", "0")
            handler.end_headers()

        servers.append(answering(respond))
        return servers[-1]

    yield start
    for server in servers:
        server.close()


def url_of(server_or_port) -> str:
    port = server_or_port if isinstance(server_or_port, int) else server_or_port.server_address[1]
    return f"http://127.0.0.1:{port}/mnist/"


@pytest.fixture
def mirrors(tmp_path, monkeypatch):
    """Point the registry's official mirrors of `dataset` at the given URLs, the way the end-to-end test does."""

    def point(*urls: str, dataset: str = "mnist") -> None:
        registry = tmp_path / "registry.json"
        registry.write_text(json.dumps({dataset: {"mirrors": list(urls)}}))
        monkeypatch.setenv(TEST_REGISTRY_ENV, str(registry))

    return point


def test_offline_falls_back_to_the_shipped_sample_with_one_warning(make_params, mirrors, capsys):
    mirrors(url_of(free_port()), url_of(free_port()))
    params = make_params(data__source="auto")
    started = time.monotonic()
    choice = source.run(params)
    assert time.monotonic() - started < 2, "a refused connection is known at once"
    assert choice == {"dataset": "mnist_10k", "source": "sample"}
    assert json.loads(Path(params.paths.source).read_text()) == choice
    warning = capsys.readouterr().err
    assert warning.count("warning:") == 1 and warning.count("connection refused") == 2
    assert "10,000 real digits, not the full 70,000" in warning and "training set" in warning
    assert "held-out accuracy" in warning and "Expect about" in warning
    assert warning.rstrip().endswith("Once online, get the full set with: dvc exp run -S data.source=mirrors")


def test_any_answer_means_online_even_an_error(make_params, mirrors, answering_with, capsys):
    """A mirror that answers 404 is not unreachable: download will report the 404 instead of a silent sample."""
    missing = answering_with(404)
    mirrors(url_of(free_port()), url_of(missing))
    assert source.run(make_params(data__source="auto")) == {"dataset": "mnist", "source": "mirrors"}
    assert missing.seen == ["HEAD /mnist/train-labels-idx1-ubyte.gz HTTP/1.1"]
    assert "warning" not in capsys.readouterr().err


def test_a_proxy_refusing_with_407_counts_as_unreachable(make_params, mirrors, answering_with, monkeypatch, capsys):
    proxy = answering_with(407)
    monkeypatch.setenv("http_proxy", f"http://127.0.0.1:{proxy.server_address[1]}")
    monkeypatch.setenv("no_proxy", "")
    mirrors("http://mirror.example/mnist/")
    assert source.run(make_params(data__source="auto"))["dataset"] == "mnist_10k"
    assert proxy.seen and "HTTP 407" in capsys.readouterr().err


def test_a_silent_mirror_times_out_after_the_probe_timeout(make_params, mirrors):
    with socket.socket() as silent:  # accepts connections (backlog) but never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        mirrors(url_of(silent.getsockname()[1]), dataset="fashion_mnist")
        started = time.monotonic()
        with pytest.raises(PipelineError, match=r"no answer within 0.5 s \(data.probe_timeout\)"):
            source.run(make_params(data__source="auto", data__dataset="fashion_mnist", data__probe_timeout=0.5))
        assert time.monotonic() - started < 3


def test_fashion_mnist_offline_still_needs_data_source(make_params, mirrors):
    mirrors(url_of(free_port()), dataset="fashion_mnist")
    params = make_params(data__source="auto", data__dataset="fashion_mnist")
    with pytest.raises(PipelineError, match="No sample of fashion_mnist ships.*data.source=/usr/share/datasets"):
        source.run(params)
    assert not Path(params.paths.source).exists()
    with pytest.raises(PipelineError, match="no sample of fashion_mnist ships"):
        source.run(make_params(data__source="sample", data__dataset="fashion_mnist"))


def test_explicit_choices_never_probe(make_params, mirrors):
    mirrors("http://mirror.example/mnist/")  # would fail to resolve if probed
    assert source.run(make_params(data__source="sample")) == {"dataset": "mnist_10k", "source": "sample"}
    assert source.run(make_params(data__source="mirrors")) == {"dataset": "mnist", "source": "mirrors"}
    assert source.run(make_params(data__source="/some/folder")) == {"dataset": "mnist", "source": "/some/folder"}
