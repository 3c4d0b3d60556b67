"""Shared fixtures: tests shrink the real params.yaml instead of keeping a second config."""

from __future__ import annotations

import copy
import os
import sys
from pathlib import Path

import pytest
from servers import mlflow_server, postgresql_server, sshd_server  # noqa: F401  (session fixtures)

from benchmarks.project_copy import paths_under
from stages.params import Params, parse_params, read_yaml

ROOT = Path(__file__).resolve().parents[1]


def find_mnist_10k() -> Path:
    """The 10,000 real MNIST digits beside the checkout (../shared/data/mnist-10k), or where MNIST_10K_DIR says."""
    candidates = [os.environ.get("MNIST_10K_DIR"), ROOT.parent / "shared" / "data" / "mnist-10k",
                  "/work/shared/data/mnist-10k"]
    for candidate in filter(None, candidates):
        if (Path(candidate) / "train-images-idx3-ubyte.gz").is_file():
            return Path(candidate).resolve()
    raise RuntimeError("mnist-10k not found: set MNIST_10K_DIR to the folder holding its four IDX .gz files")


MNIST_10K = find_mnist_10k()

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def set_dotted(raw: dict, key: str, value) -> None:
    *parents, leaf = key.split(".")
    node = raw
    for part in parents:
        node = node.setdefault(part, {})
    node[leaf] = value


@pytest.fixture(autouse=True)
def isolated_process_state(monkeypatch):
    """What a test changes process-wide must not reach the next one: proxies, the Keras dtype policy."""
    for proxy in ("http_proxy", "https_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"):
        monkeypatch.delenv(proxy, raising=False)  # the tests' servers are on 127.0.0.1
    keras = sys.modules.get("keras")
    policy = keras.mixed_precision.global_policy() if keras else None
    yield
    keras = sys.modules.get("keras")
    if keras:
        keras.mixed_precision.set_global_policy(policy or "float32")


@pytest.fixture(scope="session")
def raw_params() -> dict:
    """The shipped params.yaml as a plain mapping (never modified: copy it)."""
    return read_yaml(ROOT / "params.yaml")


def shrunk_params(raw_params: dict, base: Path, **overrides) -> Params:
    """The real params.yaml with every path under `base`, shrunk for tests, plus dotted-key overrides.

    Defaults for tests: 1 epoch, tracking off, data from ../shared/data/mnist-10k, 400 training images.
    Keyword names use `__` for dots: shrunk_params(raw, base, train__epochs=2).
    """
    raw = copy.deepcopy(raw_params)
    defaults = {
        **paths_under(raw_params, base),
        "data.source": str(MNIST_10K),
        "preprocess.limit": 400,
        "train.epochs": 1,
        "tracking.enabled": False,
    }
    for key, value in {**defaults, **{k.replace("__", "."): v for k, v in overrides.items()}}.items():
        set_dotted(raw, key, value)
    return parse_params(raw)


@pytest.fixture
def make_params(raw_params, tmp_path):
    """shrunk_params with outputs under this test's tmp_path."""

    def make(**overrides) -> Params:
        return shrunk_params(raw_params, tmp_path, **overrides)

    return make


@pytest.fixture(scope="session")
def processed_dir(raw_params, tmp_path_factory) -> Path:
    """mnist-10k through the real download and preprocess stages once per session (first 1,000 images)."""
    from stages import download, preprocess

    base = tmp_path_factory.mktemp("pipeline")
    params = shrunk_params(raw_params, base, preprocess__limit=1000)
    download.run(params)
    preprocess.run(params)
    return Path(params.paths.processed)


# --- one small trained model per session, shared by every test that classifies real digits ----------------------

def train_small_model(path: Path) -> Path:
    """LeNet, 3 epochs of adam on the 8,000 mnist-10k training digits (about 15 s on two cores)."""
    import keras
    import numpy as np

    from stages.architectures import build_model, presets
    from stages.idx import load_images_labels

    digits, labels = load_images_labels(MNIST_10K / "train-images-idx3-ubyte.gz",
                                        MNIST_10K / "train-labels-idx1-ubyte.gz")
    keras.utils.set_random_seed(0)
    model = build_model(presets()["lenet"])
    model.compile(optimizer="adam", loss="categorical_crossentropy")
    model.fit((digits / 255).astype(np.float32)[..., np.newaxis], keras.utils.to_categorical(labels, 10),
              epochs=3, batch_size=128, verbose=0)
    model.save(path)
    return path


@pytest.fixture(scope="session")
def test_digits():
    """The 2,000 test digits of mnist-10k, uint8 28x28 (white on black)."""
    from stages.idx import read_idx

    return read_idx(MNIST_10K / "t10k-images-idx3-ubyte.gz")


@pytest.fixture(scope="session")
def test_labels():
    from stages.idx import read_idx

    return read_idx(MNIST_10K / "t10k-labels-idx1-ubyte.gz")


@pytest.fixture(scope="session")
def model_path(tmp_path_factory) -> Path:
    return train_small_model(tmp_path_factory.mktemp("model") / "model.keras")


@pytest.fixture(scope="session")
def model(model_path):
    from stages.architectures import load_model

    return load_model(model_path, 10, advice="the session's model should load")
