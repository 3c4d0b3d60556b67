"""pyproject.toml's filterwarnings: a DeprecationWarning from our own code fails the test that meets it; one from a
third-party library does not."""

from __future__ import annotations

import pytest


def test_our_own_deprecation_warnings_are_errors_and_others_are_not():
    module = {"__name__": "stages.core.example"}
    with pytest.raises(DeprecationWarning):
        exec("import warnings\nwarnings.warn('old call', DeprecationWarning)", module)
    exec("import warnings\nwarnings.warn('old call', DeprecationWarning)", {"__name__": "somelibrary.module"})
