"""A full disk on demand: a small tmpfs mounted on a folder (root only), filled to what a test leaves free."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from pathlib import Path

import pytest


@contextlib.contextmanager
def small_disk(folder: Path, megabytes: int):
    """A tmpfs of `megabytes` mounted on `folder` (root only), unmounted afterwards whatever happens."""
    if os.geteuid() != 0 or not shutil.which("mount"):
        if os.environ.get("CI") == "true":
            pytest.fail("a full-disk test needs root to mount a tmpfs")
        pytest.skip("a full-disk test needs root to mount a tmpfs")
    folder.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={megabytes}m", "tmpfs", str(folder)], check=True)
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=True)


def fill(folder: Path, leave_megabytes: float) -> Path:
    """A file taking all but `leave_megabytes` of the file system under `folder`."""
    filler = folder / "filler"
    free = shutil.disk_usage(folder).free - int(leave_megabytes * 2**20)
    with open(filler, "wb") as handle:
        handle.truncate(0)
        handle.write(b"\0" * max(free, 0))
    return filler
