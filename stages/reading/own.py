"""Your own digits, confirmed: each stored as the next training example of the dataset (the folder `paths.own`).

Layout: `<own>/<class>/<hash>.png` is the 28x28 image the model saw (grey bytes, light ink on black, as MNIST
stores its digits) and `<hash>-crop.png` the digit as it was drawn or photographed (its box in the original image,
shrunk to at most CROP_SIZE pixels). `<class>` is the class index (0-9); `<hash>` is the start of the sha256 of the
28x28 bytes and the class, so two people or two sessions confirming the same digit write the same file and never
overwrite a different one. Files are written whole in a folder beside this one (`.<own>-incoming`, the same
filesystem, outside what collect versions) and renamed into place, the crop first: a store killed at any moment
leaves at most a temp there (removed by the next store or collect once a minute old) and a crop without its 28x28
image, never the reverse; only the 28x28 image counts as a digit, and hidden files (`._x.png`) are not digits.

Which digits the pipeline keeps apart to measure (the `own_test` split) is decided per digit from its hash
(`held_out`), so a digit never moves between splits when more digits arrive.

Used by `python -m stages.predict --label`, the drawing page and the collect and preprocess stages. Imports only
core (no TensorFlow).
"""

from __future__ import annotations

import hashlib
import os
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, UnidentifiedImageError

from stages.core.datasets import IMAGE_SIZE, NUM_CLASSES, class_names
from stages.core.errors import PipelineError

HASH_LENGTH = 16  # hex digits of sha256 in a file name: 64 bits, no collision among any person's digits
CROP_SIZE = 256  # longest side of a stored crop: enough to see what was written, small beside a phone photo
CROP_SUFFIX = "-crop.png"
README = "README.md"
MAX_NUMBER_DIGITS = 100  # a written number's label: longer is no number anyone wrote on one page
SHOWN_LABEL = 20  # characters of a bad label quoted in its message
STALE_SECONDS = 60  # a store takes milliseconds: a temp older than this was left by a store that was killed
README_TEXT = """# Your own digits

Digits you confirmed or corrected (`python -m stages.predict --label 4 photo.jpg`, or the box under each digit on
the drawing page), one folder per class: `<class>/<hash>.png` is the 28x28 image the model saw, `<hash>-crop.png`
the digit as written. This folder is an output of the `collect` stage in dvc.yaml: `dvc repro` versions what you
added, `git commit dvc.lock && dvc push` shares it, and `data.own: true` in params.yaml trains on it.
"""


class LabelError(PipelineError):
    """A label that is not a class of the dataset, or a number whose digits do not match what was read."""


def shown(text: str) -> str:
    """A label as a message quotes it: cut short, so that a label of thousands of characters stays one line."""
    return repr(text if len(text) <= SHOWN_LABEL else text[:SHOWN_LABEL] + "...") + (
        f" ({len(text):,} characters)" if len(text) > SHOWN_LABEL else "")


def parse_label(text: str, dataset: str) -> int:
    """The class index of `text`: the index itself (ASCII digits, 0-9) or a class name exactly as the dataset
    spells it (e.g. Sneaker)."""
    names = class_names(dataset)
    text = str(text).strip()
    if text in names:
        return names.index(text)
    # str.isdigit() alone takes '²' (which int() refuses) and thousands of digits (which int() refuses too).
    if text.isascii() and text.isdigit() and len(text) <= len(str(NUM_CLASSES)) and int(text) < NUM_CLASSES:
        return int(text)
    listed = ", ".join(names) if names == [str(index) for index in range(NUM_CLASSES)] else (
        ", ".join(f"{index} ({name})" for index, name in enumerate(names)))
    raise LabelError(f"label {shown(text)} is not a class of {dataset}: give one of {listed}; nothing was stored")


def parse_number_label(text: str, dataset: str) -> list[int]:
    """A written number's label, one class per character (`407`); only datasets whose classes are the digits."""
    if class_names(dataset) != [str(index) for index in range(NUM_CLASSES)]:
        raise LabelError(f"--number --label needs a dataset of digits; {dataset}'s classes are names: label one "
                         "image at a time with --label CLASS; nothing was stored")
    if not (text.isascii() and text.isdigit() and len(text) <= MAX_NUMBER_DIGITS):
        raise LabelError(f"label {shown(text)} is not a number of at most {MAX_NUMBER_DIGITS} digits (0-9): give "
                         "its digits as written, e.g. --label 407; nothing was stored")
    return [int(character) for character in text]


def digit_hash(image: np.ndarray, label: int) -> str:
    """The name of a stored digit: sha256 over its 28x28 grey bytes and its class."""
    digest = hashlib.sha256(np.ascontiguousarray(image, dtype=np.uint8).tobytes())
    digest.update(f"\0{label}".encode())
    return digest.hexdigest()[:HASH_LENGTH]


def held_out(name: str, fraction: float) -> bool:
    """Whether the digit stored as `name` (its hash) belongs to the own_test split: its hash below a threshold, so
    the answer never changes when more digits arrive (per-class balance is approximate)."""
    return int(name[:8], 16) < fraction * 16**8


def as_bytes(array: np.ndarray) -> np.ndarray:
    """The model's input (float in [0, 1], 28x28 or 28x28x1) as the grey bytes MNIST stores."""
    array = np.asarray(array, dtype=np.float64).reshape(IMAGE_SIZE, IMAGE_SIZE)
    return np.round(np.clip(array, 0, 1) * 255).astype(np.uint8)


def hidden(path: Path) -> bool:
    """Not ours to read: a temp of an older version of this module, macOS's `._x.png`, an editor's swap file."""
    return path.name.startswith(".")


def incoming(folder: Path) -> Path:
    """Where files are written before they are renamed into `folder`: beside it (its real parent, so the rename is
    atomic), never inside what collect versions."""
    folder = folder.resolve()
    return folder.with_name(f".{folder.name}-incoming")


def remove_stale(folder: Path) -> None:
    """Remove the temps that killed stores left (and older versions' hidden temps among the digits)."""
    stale = time.time() - STALE_SECONDS
    for path in [*incoming(folder).glob("*"), *folder.glob(".*.tmp-*"), *folder.glob("*/.*.tmp-*")]:
        try:
            if path.lstat().st_mtime < stale:
                path.unlink()
        except (FileNotFoundError, IsADirectoryError, PermissionError):
            pass  # removed by another store meanwhile, or not a file of ours


def write_through(folder: Path, target: Path, write: Callable[[BinaryIO], object]) -> None:
    """The file `target` in `folder`, whole or not at all: written by `write` in incoming(folder), then renamed."""
    temporary = incoming(folder) / f"{target.stem}.{uuid.uuid4().hex}{target.suffix}"
    try:
        with open(temporary, "xb") as handle:
            write(handle)
        os.replace(temporary, target)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def ensure_folder(folder: str | os.PathLike) -> Path:
    """The own-digits folder with its README (so it is never empty: DVC versions it from the start), and the
    incoming folder beside it, cleared of what killed stores left there."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise PipelineError(f"{folder} is not a folder: your own digits are kept in the folder paths.own names "
                            "(params.yaml); move what is there away, then try again")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        incoming(folder).mkdir(exist_ok=True)
        remove_stale(folder)
        if not (folder / README).is_file():
            write_through(folder, folder / README, lambda handle: handle.write(README_TEXT.encode()))
    except OSError as error:
        raise PipelineError(f"cannot keep your digits in {folder}: {error.strerror or error}; make it a "
                            "folder you can write to (paths.own in params.yaml), then try again") from None
    return folder


def crop_of(image: Image.Image, box: tuple[int, int, int, int] | None) -> Image.Image:
    """The digit's box in the original image (with a margin of a tenth), shrunk to at most CROP_SIZE."""
    if box is not None:
        x, y, width, height = box
        margin = max(2, round(0.1 * max(width, height)))
        image = image.crop((max(0, x - margin), max(0, y - margin),
                            min(image.width, x + width + margin), min(image.height, y + height + margin)))
    image = image.convert("RGBA" if "A" in image.getbands() else "RGB") if image.mode not in ("L", "RGB") else image
    image = image.copy()
    image.thumbnail((CROP_SIZE, CROP_SIZE))
    return image


@dataclass(frozen=True)
class Stored:
    path: Path
    label: int
    new: bool  # False: this very digit was confirmed before (same image, same class)


def store(folder: str | os.PathLike, model_input: np.ndarray, label: int, original: Image.Image,
          box: tuple[int, int, int, int] | None = None) -> Stored:
    """Store one confirmed digit: its 28x28 image and its crop of `original`; the same digit twice is one file."""
    if not 0 <= label < NUM_CLASSES:
        raise LabelError(f"class {label} is outside 0-{NUM_CLASSES - 1}; nothing was stored")
    pixels = as_bytes(model_input)
    name = digit_hash(pixels, label)
    folder = ensure_folder(folder)
    target = folder / str(label) / f"{name}.png"
    if target.is_file():
        return Stored(target, label, new=False)
    try:
        target.parent.mkdir(exist_ok=True)
        crop = crop_of(original, box)
        write_through(folder, target.with_name(f"{name}{CROP_SUFFIX}"), lambda handle: crop.save(handle, "PNG"))
        write_through(folder, target, lambda handle: Image.fromarray(pixels, mode="L").save(handle, "PNG"))
    except OSError as error:
        raise PipelineError(f"cannot store the digit in {folder}: {error.strerror or error}") from None
    return Stored(target, label, new=True)


def digit_files(folder: str | os.PathLike) -> list[tuple[Path, int]]:
    """(28x28 file, class) of every stored digit, by class then name (the crops and the README aside)."""
    folder = Path(folder)
    found = []
    for label in range(NUM_CLASSES):
        found += [(path, label) for path in sorted((folder / str(label)).glob("*.png"))
                  if not (hidden(path) or path.name.endswith(CROP_SUFFIX))]
    return found


def counts(folder: str | os.PathLike) -> list[int]:
    """Stored digits per class."""
    per_class = [0] * NUM_CLASSES
    for _, label in digit_files(folder):
        per_class[label] += 1
    return per_class


def check_layout(folder: str | os.PathLike) -> None:
    """Anything in the folder but the README and class folders of digits is a mistake to name, not to skip."""
    folder = Path(folder)
    classes = {str(label) for label in range(NUM_CLASSES)}
    for path in sorted(folder.iterdir()):
        if path.name == README or hidden(path):
            continue
        if not (path.is_dir() and path.name in classes):
            raise PipelineError(f"{path}: the own-digits folder holds only {README} and one folder per class "
                                f"(0-{NUM_CLASSES - 1}); move or remove it, then rerun `dvc repro`")
        for file in sorted(path.iterdir()):
            if hidden(file):
                continue
            digit = file.name.removesuffix(CROP_SUFFIX).removesuffix(".png")
            if not (file.suffix == ".png" and len(digit) == HASH_LENGTH
                    and all(character in "0123456789abcdef" for character in digit)):
                raise PipelineError(f"{file}: not a stored digit (<hash>.png or <hash>{CROP_SUFFIX}); store digits "
                                    "with `python -m stages.predict --label` or the drawing page")


def load_digits(folder: str | os.PathLike) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Every stored digit: uint8 N x 28 x 28 images, uint8 labels and their names (hashes), in a fixed order."""
    images, labels, names = [], [], []
    for path, label in digit_files(folder):
        try:
            with Image.open(path) as image:
                pixels = np.asarray(image.convert("L") if image.mode != "L" else image, dtype=np.uint8)
        except (OSError, UnidentifiedImageError) as error:
            raise PipelineError(f"{path} is unreadable ({error}): remove it and confirm that digit again") from None
        if pixels.shape != (IMAGE_SIZE, IMAGE_SIZE):
            raise PipelineError(f"{path} is {pixels.shape[1]}x{pixels.shape[0]}, not {IMAGE_SIZE}x{IMAGE_SIZE}: "
                                "remove it; digits are stored by `python -m stages.predict --label`")
        images.append(pixels)
        labels.append(label)
        names.append(path.stem)
    shape = (len(images), IMAGE_SIZE, IMAGE_SIZE)
    return (np.stack(images) if images else np.zeros(shape, np.uint8), np.asarray(labels, dtype=np.uint8), names)
