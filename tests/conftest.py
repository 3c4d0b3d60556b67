"""Shared fixtures: tests shrink the real params.yaml instead of keeping a second config."""

from __future__ import annotations

import copy
import os
from pathlib import Path

import pytest

from stages.params import Params, parse_params, read_yaml

ROOT = Path(__file__).resolve().parents[1]
MNIST_10K = (ROOT / ".." / "shared" / "data" / "mnist-10k").resolve()

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def set_dotted(raw: dict, key: str, value) -> None:
    *parents, leaf = key.split(".")
    node = raw
    for part in parents:
        node = node.setdefault(part, {})
    node[leaf] = value


@pytest.fixture(scope="session")
def raw_params() -> dict:
    """The shipped params.yaml as a plain mapping (never modified: copy it)."""
    return read_yaml(ROOT / "params.yaml")


@pytest.fixture
def make_params(raw_params, tmp_path):
    """Build Params from the real params.yaml with outputs under tmp_path and dotted-key overrides.

    Defaults for tests: 1 epoch, tracking off, data from ../shared/data/mnist-10k, 400 training images.
    """

    def make(**overrides) -> Params:
        raw = copy.deepcopy(raw_params)
        defaults = {
            "paths.raw": str(tmp_path / "data" / "raw"),
            "paths.processed": str(tmp_path / "data" / "processed"),
            "paths.models": str(tmp_path / "models"),
            "paths.reports": str(tmp_path / "reports"),
            "data.source": str(MNIST_10K),
            "preprocess.limit": 400,
            "train.epochs": 1,
            "tracking.enabled": False,
        }
        for key, value in {**defaults, **{k.replace("__", "."): v for k, v in overrides.items()}}.items():
            set_dotted(raw, key, value)
        return parse_params(raw)

    return make
