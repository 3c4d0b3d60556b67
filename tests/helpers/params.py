"""Tests shrink the real params.yaml instead of keeping a second config."""

from __future__ import annotations

import copy
from pathlib import Path

from stages.core.project_copy import paths_under
from stages.core.schema import PARAMS_FILE, Params, parse_params, set_dotted

# Every project copy's settings (dotted keys for params.yaml), one dict so that copies agree and DVC's run-cache can
# serve one copy's stages to another: the smallest run that still learns something (300 images, one convolution,
# one epoch), small plots, and one export format (the export tests, in-process, check every format).
TINY = {
    "preprocess.limit": 300,
    "model.architecture": "single_conv",
    "train.epochs": 1,
    "evaluate.activation_images": 1,
    "plots.dpi": 30,
    "plots.misclassified": 4,
    "plots.feature_maps": 2,
    "export.formats": ["onnx"],
}


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
