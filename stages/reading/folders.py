"""A folder or a glob of images in, a CSV of answers out: `python -m stages.predict FOLDER_OR_GLOB --csv answers.csv`.

A folder is walked recursively; a glob (`scans/**/*.jpg`) is expanded with `**` spanning folders. Taken: regular
files whose extension Pillow knows. Skipped: hidden files and folders (`.x`, macOS' `._x`), symlinked folders (a
link loop is never followed). A FIFO, socket or device with an image's name is never opened: it is a row with its
error, as is a file that cannot be read. Rows are written and flushed one chunk at a time, so an interrupted run
leaves a valid CSV of what was read.
"""

from __future__ import annotations

import csv
import glob
import io
import os
import stat
from collections.abc import Iterator
from pathlib import Path

CSV_COLUMNS = ["file", "class", "label", "confidence", "not_sure", "error"]
GLOB_CHARACTERS = set("*?[")


def image_suffixes() -> set[str]:
    from PIL import Image

    Image.init()
    return {suffix.lower() for suffix in Image.registered_extensions()}


def is_batch(argument: str) -> bool:
    """A folder or a glob pattern (not an existing file)."""
    return Path(argument).is_dir() or (bool(GLOB_CHARACTERS & set(argument)) and not Path(argument).exists())


def hidden(name: str) -> bool:
    return name.startswith(".")


def not_regular(path: str) -> str | None:
    """Why `path` (an image's name) must not be opened, or None for a regular file (links followed, never looped)."""
    try:
        mode = os.stat(path).st_mode
    except OSError:  # missing, a link loop, no permission: loading.load_image says which
        return None
    if stat.S_ISREG(mode):
        return None
    kind = "a FIFO" if stat.S_ISFIFO(mode) else "a folder" if stat.S_ISDIR(mode) else "not a regular file"
    return f"{kind}: not opened"


def walk(folder: str, suffixes: set[str]) -> Iterator[str]:
    """The image names under `folder`, sorted, recursively; symlinked folders and hidden entries skipped."""
    try:
        entries = sorted(os.scandir(folder), key=lambda entry: entry.name)
    except OSError:
        return
    for entry in entries:
        if hidden(entry.name):
            continue
        if entry.is_dir(follow_symlinks=False):
            yield from walk(entry.path, suffixes)
        elif Path(entry.name).suffix.lower() in suffixes:
            yield entry.path


def expand(arguments: list[str]) -> list[str]:
    """Every image an argument names: a file as given, a folder walked, a glob expanded (hidden parts skipped)."""
    suffixes, found = image_suffixes(), []
    for argument in arguments:
        if Path(argument).is_dir():
            found += walk(argument, suffixes)
        elif is_batch(argument):
            found += [name for name in sorted(glob.glob(argument, recursive=True))
                      if Path(name).suffix.lower() in suffixes and not any(hidden(part) for part in Path(name).parts
                                                                           if part not in (".", ".."))
                      and not Path(name).is_dir()]
        else:
            found.append(argument)
    return found


class CsvAnswers:
    """The CSV of a batch: its header at once, then rows as they come, each chunk flushed whole."""

    def __init__(self, path: str | os.PathLike):
        self.handle = open(path, "w", newline="", encoding="utf-8")  # noqa: SIM115 (closed by close())
        self.write([CSV_COLUMNS])

    def write(self, rows: list[list]) -> None:
        buffer = io.StringIO()
        csv.writer(buffer).writerows(rows)
        self.handle.write(buffer.getvalue())  # one write per chunk: an interrupt never splits a row
        self.handle.flush()

    def close(self) -> None:
        self.handle.close()


def answer_row(answer) -> list:
    """A CSV row of an Answer (one image) or a NumberAnswer (its number, its least confident digit)."""
    if hasattr(answer, "digits"):
        confidence = min((digit.confidence for digit in answer.digits), default=0.0)
        return [answer.file, answer.number, answer.number, f"{confidence:.6f}", answer.reason or "", ""]
    return [answer.file, answer.predicted, answer.label, f"{answer.confidence:.6f}", answer.reason or "", ""]


def error_row(file: str, reason: str) -> list:
    return [file, "", "", "", "", reason]
