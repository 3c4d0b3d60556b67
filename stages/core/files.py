"""Files written whole or not at all (a temp sibling renamed into place), and read back with one clear error."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
import zipfile
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from stages.core.errors import DISK_FULL, PipelineError

# The checkout that holds the `stages` package (and the shipped sample): where the code is, not where it runs.
CODE_ROOT = Path(__file__).resolve().parents[2]


def project_root() -> Path:
    """The project: DVC_ROOT when DVC runs the stage (also from an experiment's temporary copy), else the cwd."""
    return Path(os.environ.get("DVC_ROOT") or os.getcwd()).resolve()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def disk_full_message(path: str | os.PathLike, code: int) -> str:
    """The one line for a write that a full disk, a quota or a file-size limit (`ulimit -f`) refused."""
    return (f"cannot write {path}: {os.strerror(code)}; free space (or raise the file-size limit), then rerun "
            "`dvc repro`")


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike, directory: bool = False) -> Iterator[Path]:
    """Yield a temporary sibling of `target`; rename it onto `target` only if the block succeeds.

    The temp name keeps the suffix because Keras and NumPy pick the format from it.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    prefix = f".{target.stem}.tmp-"
    tmp: Path | None = None
    try:  # from the temp's creation on, so that a signal arriving at any point still removes it
        if directory:
            tmp = Path(tempfile.mkdtemp(prefix=prefix, dir=target.parent))
        else:
            fd, name = tempfile.mkstemp(prefix=prefix, suffix=target.suffix, dir=target.parent)
            tmp = Path(name)
            os.close(fd)
            tmp.chmod(0o666 & ~_umask())  # mkstemp makes files owner-only; outputs get the usual permissions
        yield tmp
        if directory and target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    except BaseException as error:
        if tmp is not None and tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        elif tmp is not None:
            tmp.unlink(missing_ok=True)
        if isinstance(error, OSError) and error.errno in DISK_FULL:
            raise PipelineError(disk_full_message(target, error.errno)) from None
        raise


def require_files(files: dict[Path, str]) -> None:
    """Raise one PipelineError naming every missing input and the stage that writes it."""
    missing = [f"{path} (written by the {stage} stage)" for path, stage in files.items() if not path.is_file()]
    if missing:
        raise PipelineError("missing input: " + ", ".join(missing) + "; run `dvc repro` to produce it")


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json(path: str | os.PathLike, data: Any) -> None:
    write_text(path, json.dumps(data, indent=2, sort_keys=False) + "\n")


def write_csv(path: str | os.PathLike, frame) -> None:
    """Write a pandas DataFrame atomically, without its index."""
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=False)


def save_npz(path: str | os.PathLike, **arrays: np.ndarray) -> None:
    with atomic_path(path) as tmp:
        np.savez(tmp, **arrays)


def load_npz(path: str | os.PathLike, keys: tuple[str, ...], writer: str) -> dict[str, np.ndarray]:
    """The arrays `keys` of an .npz file that the `writer` stage saved with save_npz.

    A missing, truncated or foreign file (e.g. one holding object arrays, which are never unpickled) is one
    PipelineError naming the file and the stage to rerun, not a traceback from zipfile or NumPy.
    """
    path = Path(path)
    rerun = f"rerun `dvc repro {writer}`"
    if not path.is_file():
        raise PipelineError(f"{path} not found (written by the {writer} stage): {rerun}")
    try:
        with np.load(path, allow_pickle=False) as archive:
            absent = [key for key in keys if key not in archive.files]
            if absent:
                raise PipelineError(f"{path} lacks the array(s) {', '.join(absent)}: {rerun}")
            return {key: archive[key] for key in keys}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as error:
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise PipelineError(f"{path} is damaged or was not written by the {writer} stage ({reason}): "
                            f"{rerun}") from None



def sha256_of_files(files: list[Path]) -> str:
    """One sha256 over the files' own sha256 digests, in order."""
    digest = hashlib.sha256()
    for path in files:
        with open(path, "rb") as handle:
            digest.update(hashlib.file_digest(handle, "sha256").digest())
    return digest.hexdigest()
