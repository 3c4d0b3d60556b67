"""stages/core/files.py: a file is written whole or not at all, read back as written, and a bad one is one line."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import stat

import numpy as np
import pandas as pd
import pytest

from stages.core import files
from stages.core.errors import PipelineError


def test_a_write_that_fails_leaves_neither_the_file_nor_its_temp(tmp_path):
    target = tmp_path / "out" / "report.json"
    with pytest.raises(RuntimeError), files.atomic_path(target) as temporary:
        temporary.write_text("half")
        raise RuntimeError("interrupted")
    assert list((tmp_path / "out").iterdir()) == []
    files.write_json(target, {"whole": True, "order": [2, 1]})
    assert json.loads(target.read_text()) == {"whole": True, "order": [2, 1]}
    assert target.read_text().endswith("\n") and list((tmp_path / "out").iterdir()) == [target]
    files.write_json(target, {"whole": True})
    assert target.read_text() == '{\n  "whole": true\n}\n'
    # Written as any file the user's umask allows, not the private 0600 of a temporary file.
    mask = os.umask(0)
    os.umask(mask)
    assert stat.S_IMODE(target.stat().st_mode) == 0o666 & ~mask


def test_csv_and_npz_come_back_as_written(tmp_path):
    frame = pd.DataFrame({"epoch": [1, 2], "loss": [0.5, 0.25]})
    files.write_csv(tmp_path / "history.csv", frame)
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "history.csv"), frame)
    arrays = {"x": np.arange(6, dtype=np.float32).reshape(2, 3), "labels": np.array([3, 1], np.uint8)}
    files.save_npz(tmp_path / "split.npz", **arrays)
    loaded = files.load_npz(tmp_path / "split.npz", ("x", "labels"), "preprocess")
    assert set(loaded) == {"x", "labels"}
    for key, array in arrays.items():
        np.testing.assert_array_equal(loaded[key], array)
        assert loaded[key].dtype == array.dtype


@pytest.mark.parametrize(("damage", "reason"), [
    (lambda path: path.unlink(), r"split.npz not found \(written by the preprocess stage\): rerun `dvc repro "
                                 r"preprocess`"),
    (lambda path: path.write_bytes(path.read_bytes()[:40]), r"split.npz is damaged or was not written by the "
                                                             r"preprocess stage \(.+\): rerun `dvc repro preprocess`"),
    (lambda path: np.savez(path, x=np.array([object()]), labels=np.zeros(1)),
     r"split.npz is damaged .*: rerun `dvc repro preprocess`"),
    (lambda path: np.savez(path, x=np.zeros(2)), r"split.npz lacks the array\(s\) labels: rerun `dvc repro "
                                                 r"preprocess`"),
], ids=["missing", "truncated", "objects", "a key short"])
def test_a_bad_npz_is_one_line_naming_the_file_and_the_stage(tmp_path, damage, reason):
    path = tmp_path / "split.npz"
    files.save_npz(path, x=np.zeros(2), labels=np.zeros(2))
    damage(path)
    with pytest.raises(PipelineError, match=reason) as caught:
        files.load_npz(path, ("x", "labels"), "preprocess")
    assert len(str(caught.value).splitlines()) == 1


def test_missing_inputs_are_named_together_with_their_stages(tmp_path):
    (tmp_path / "there.csv").write_text("")
    files.require_files({tmp_path / "there.csv": "train"})
    with pytest.raises(PipelineError) as caught:
        files.require_files({tmp_path / "a.npz": "preprocess", tmp_path / "there.csv": "train",
                             tmp_path / "b.keras": "train"})
    assert str(caught.value) == (f"missing input: {tmp_path / 'a.npz'} (written by the preprocess stage), "
                                 f"{tmp_path / 'b.keras'} (written by the train stage); run `dvc repro` to produce it")


def test_the_hash_of_files_is_the_hash_of_their_hashes_in_order(tmp_path):
    first, second = tmp_path / "a", tmp_path / "b"
    first.write_bytes(b"one")
    second.write_bytes(b"two")
    expected = hashlib.sha256(hashlib.sha256(b"one").digest() + hashlib.sha256(b"two").digest()).hexdigest()
    assert files.sha256_of_files([first, second]) == expected
    assert files.sha256_of_files([second, first]) != expected


def test_the_project_root_is_dvcs_when_dvc_runs_else_the_working_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("DVC_ROOT", raising=False)
    assert files.project_root() == tmp_path.resolve()
    monkeypatch.setenv("DVC_ROOT", str(tmp_path / "repo"))
    assert files.project_root() == (tmp_path / "repo").resolve()


def test_a_full_disk_is_one_line_saying_what_to_do(tmp_path):
    line = files.disk_full_message(tmp_path / "model.keras", errno.ENOSPC)
    assert line == (f"cannot write {tmp_path / 'model.keras'}: No space left on device; free space (or raise the "
                    "file-size limit), then rerun `dvc repro`")
