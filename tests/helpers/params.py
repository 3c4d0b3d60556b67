"""Tests shrink the real params.yaml instead of keeping a second config."""

from __future__ import annotations

import copy
from pathlib import Path

from stages.core.project_copy import paths_under
from stages.core.schema import PARAMS_FILE, Params, parse_params, set_dotted


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

    path = Path(folder) / PARAMS_FILE
    path.write_text(yaml.safe_dump(params.model_dump() if isinstance(params, Params) else params, sort_keys=False))
    return path
