"""Shared fixtures: tests shrink the real params.yaml instead of keeping a second config."""

from __future__ import annotations

import copy
import os
import sys
from pathlib import Path

import pytest
from servers import mlflow_server, postgresql_server, sshd_server  # noqa: F401  (session fixtures)

from benchmarks.project_copy import ROOT, paths_under, set_dotted  # noqa: F401  (ROOT, set_dotted: for tests)
from stages.datasets import DATASETS, TEST_IMAGES, TEST_LABELS, TRAIN_IMAGES, TRAIN_LABELS
from stages.params import Params, parse_params, read_yaml

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
SPLIT_FILES = {"train": (TRAIN_IMAGES, TRAIN_LABELS), "test": (TEST_IMAGES, TEST_LABELS)}


@pytest.fixture(scope="session")
def mnist_10k() -> Path:
    """The folder of the 10,000 real MNIST digits shipped in stages/mnist_10k (the four IDX .gz files)."""
    folder = DATASETS["mnist_10k"].folder
    missing = [name for name in (*SPLIT_FILES["train"], *SPLIT_FILES["test"]) if not (folder / name).is_file()]
    if missing:
        pytest.fail(f"the mnist-10k sample lacks {', '.join(missing)} in {folder}: `git checkout stages/mnist_10k`")
    return folder


def mnist_digits(folder: Path, split: str, count: int | None = None) -> tuple:
    """The first `count` digits of a split as the preprocess stage stores them (its own loader and normalize):
    float32 N x 28 x 28 x 1 in [0, 1], and uint8 labels."""
    from stages import preprocess

    images, labels = preprocess.load_pair(folder, *SPLIT_FILES[split])
    return preprocess.normalize(images[:count]), labels[:count]


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


def shrunk_params(raw_params: dict, base: Path, mnist_10k: Path, **overrides) -> Params:
    """The real params.yaml with every path under `base`, shrunk for tests, plus dotted-key overrides.

    Defaults for tests: 1 epoch, tracking off, data from the mnist-10k sample, 400 training images.
    Keyword names use `__` for dots: shrunk_params(raw, base, mnist_10k, train__epochs=2).
    """
    raw = copy.deepcopy(raw_params)
    defaults = {
        **paths_under(raw_params, base),
        "data.source": str(mnist_10k),
        "preprocess.limit": 400,
        "train.epochs": 1,
        "tracking.enabled": False,
    }
    for key, value in {**defaults, **{k.replace("__", "."): v for k, v in overrides.items()}}.items():
        set_dotted(raw, key, value)
    return parse_params(raw)


def write_params(folder: Path, params: Params | dict) -> Path:
    """`folder`/params.yaml holding `params` (a Params or a raw mapping), for a stage run as a program there."""
    import yaml

    path = Path(folder) / "params.yaml"
    path.write_text(yaml.safe_dump(params.model_dump() if isinstance(params, Params) else params, sort_keys=False))
    return path


@pytest.fixture
def make_params(raw_params, tmp_path, mnist_10k):
    """shrunk_params with outputs under this test's tmp_path."""

    def make(**overrides) -> Params:
        return shrunk_params(raw_params, tmp_path, mnist_10k, **overrides)

    return make


def run_data_stages(params: Params) -> Path:
    """The real source, download and preprocess stages, in DVC's order; returns the processed folder."""
    from stages import download, preprocess, source

    source.run(params)
    download.run(params)
    preprocess.run(params)
    return Path(params.paths.processed)


@pytest.fixture(scope="session")
def processed_dir(raw_params, tmp_path_factory, mnist_10k) -> Path:
    """mnist-10k through the real data stages once per session (first 1,000 images)."""
    base = tmp_path_factory.mktemp("pipeline")
    return run_data_stages(shrunk_params(raw_params, base, mnist_10k, preprocess__limit=1000))


# --- one small trained model per session, shared by every test that classifies real digits ----------------------

def train_small_model(path: Path, mnist_10k: Path) -> Path:
    """LeNet, 3 epochs of adam on the 8,000 mnist-10k training digits (about 15 s on two cores)."""
    import keras

    from stages.architectures import build_model, presets
    from stages.preprocess import one_hot

    digits, labels = mnist_digits(mnist_10k, "train")
    keras.utils.set_random_seed(0)
    model = build_model(presets()["lenet"])
    model.compile(optimizer="adam", loss="categorical_crossentropy")
    model.fit(digits, one_hot(labels), epochs=3, batch_size=128, verbose=0)
    model.save(path)
    return path


@pytest.fixture(scope="session")
def test_digits(mnist_10k):
    """The 2,000 test digits of mnist-10k, uint8 28x28 (white on black)."""
    from stages.idx import read_idx

    return read_idx(mnist_10k / TEST_IMAGES)


@pytest.fixture(scope="session")
def test_labels(mnist_10k):
    from stages.idx import read_idx

    return read_idx(mnist_10k / TEST_LABELS)


@pytest.fixture(scope="session")
def model_path(tmp_path_factory, mnist_10k) -> Path:
    return train_small_model(tmp_path_factory.mktemp("model") / "model.keras", mnist_10k)


@pytest.fixture(scope="session")
def model(model_path):
    from stages.architectures import load_model

    return load_model(model_path, 10, advice="the session's model should load")
