"""stages/core/files.py: a file is written whole or not at all."""

from __future__ import annotations

import pytest

from stages.core import files


def test_a_write_that_fails_leaves_neither_the_file_nor_its_temp(tmp_path):
    target = tmp_path / "out" / "report.json"
    with pytest.raises(RuntimeError), files.atomic_path(target) as temporary:
        temporary.write_text("half")
        raise RuntimeError("interrupted")
    assert list((tmp_path / "out").iterdir()) == []
    files.write_json(target, {"whole": True})
    assert target.read_text() == '{\n  "whole": true\n}\n' and list((tmp_path / "out").iterdir()) == [target]
