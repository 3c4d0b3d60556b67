"""Classify your own images with the trained model: `python -m stages.predict IMAGE [IMAGE ...]`.

Reads PNG, JPEG, BMP, GIF (first frame), WebP and anything else Pillow opens, of any size and mode (grayscale,
RGB, RGBA, palette, 16-bit), and brings each one to MNIST form the way MNIST itself was made:

1. grayscale; transparent pixels are resolved first: when the visible pixels are all one colour (black strokes on
   a transparent canvas, the usual export of a drawing app) the alpha channel is the ink; otherwise the image is
   composited onto white, as image viewers show it;
2. invert when the background, estimated from the border pixels, is light (dark ink on paper -> light ink on
   black), subtract the background level and stretch the ink to [0, 1];
3. crop to the ink's bounding box (pixels above a fraction of the strongest ink);
4. scale to fit a 20x20 box keeping the aspect ratio (Lanczos, antialiased);
5. paste into 28x28 so the centre of mass lands on the centre pixel (14, 14), the way MNIST was centred.

For Fashion-MNIST (`--dataset fashion_mnist`) steps 4-5 follow that dataset's own recipe instead: the longest
edge is scaled to 28 and the item is centred by its bounding box.

Prints the predicted class with its confidence and the top-k classes per image (`--json`: one JSON object per
line). `--save-preprocessed DIR` writes the 28x28 images the model saw.

The model defaults to `paths.model` and the class names to `data.dataset`, both from params.yaml
in the working directory (`models/model.keras` and MNIST when there is none).

Exit codes: 0 all images predicted; 1 at least one image could not be read (the others are still predicted);
2 the model is missing or unusable (run `dvc repro` first), or the command line is wrong.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from stages.common import PipelineError, atomic_path

# Far above any photo of a digit (a 24-megapixel camera frame is 24 million), far below what would exhaust memory:
# a crafted PNG of a few kilobytes can claim billions of pixels.
MAX_IMAGE_PIXELS = 40_000_000
# Images are shrunk to this long side before float processing: a digit is at most 20 pixels tall in the end, so
# this keeps even a digit covering a twentieth of a large photo at 50 pixels, and bounds the memory per image.
WORKING_SIZE = 1024
# A pixel counts as ink for the bounding box above this fraction of the strongest ink. Low, so the faint rim of a
# stroke stays inside the box: an MNIST digit then comes back unchanged (at 0.3 half of them lose a rim pixel).
# Not lower, so JPEG ringing and paper grain do not widen it; on digits drawn 10x larger and saved as PNG, JPEG or
# WebP, every value from 0.05 to 0.4 agreed with the model on the originals within one percent.
INK_THRESHOLD = 0.1
# Strongest ink minus background below this (on a 0-1 scale) means there is nothing to classify.
MIN_CONTRAST = 0.1
# Visible pixels whose lightness spreads less than this are one colour: the drawing lives in the alpha channel.
FLAT_COLOUR_SPREAD = 0.25
# Share of each side taken as the border when estimating the background.
BORDER_FRACTION = 0.02
CANVAS_SIZE = 28
# How each dataset framed its items in the 28x28 canvas: (box the item is scaled to fit, how it is centred).
FRAMING = {"mnist": (20, "mass"), "fashion_mnist": (28, "box")}
# ITU-R 601-2 luma, the weights Pillow's own convert("L") uses.
LUMA_WEIGHTS = np.array([0.299, 0.587, 0.114], dtype=np.float32)
DEFAULT_MODEL = Path("models") / "model.keras"
DEFAULT_DATASET = "mnist"

EXIT_OK, EXIT_BAD_IMAGE, EXIT_BAD_MODEL = 0, 1, 2


class ImageError(PipelineError):
    """One input image cannot be classified; the message says why, without the file name."""


class ModelError(PipelineError):
    """The model file is missing, is not a Keras model, or does not fit the images."""


# eq=False: comparing two predictions field by field would compare arrays, which has no single truth value.
@dataclass(frozen=True, eq=False)
class Prediction:
    """The class probabilities of one image, with the dataset's class names to report them."""

    file: str
    probabilities: np.ndarray
    class_names: list[str] = field(repr=False)

    @property
    def predicted(self) -> int:
        return int(np.argmax(self.probabilities))

    def top(self, count: int) -> list[dict]:
        order = np.argsort(-self.probabilities, kind="stable")[:count]
        return [
            {"class": int(index), "label": self.class_names[index], "probability": float(self.probabilities[index])}
            for index in order
        ]

    def as_json(self, count: int) -> dict:
        return {
            "file": self.file,
            "predicted": self.predicted,
            "label": self.class_names[self.predicted],
            "confidence": float(self.probabilities[self.predicted]),
            "top": self.top(count),
        }

    def as_text(self, count: int) -> str:
        ranked = ", ".join(f"{entry['label']} {entry['probability']:.1%}" for entry in self.top(count))
        confidence = float(self.probabilities[self.predicted])
        return f"{self.file}: {self.class_names[self.predicted]} ({confidence:.1%})  top {count}: {ranked}"


def load_image(path: str | os.PathLike, max_pixels: int = MAX_IMAGE_PIXELS) -> Image.Image:
    """Open and decode an image file, upright per its EXIF orientation; raise ImageError for anything unreadable."""
    path = Path(path)
    if not path.exists():
        raise ImageError("file not found")
    if path.is_dir():
        raise ImageError("is a folder, not an image file")
    # Pillow only warns between its own limit and twice that; an image that large is refused here all the same.
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            with Image.open(path) as image:
                width, height = image.size
                if width * height > max_pixels:
                    raise ImageError(f"{width}x{height} pixels is over the limit of {max_pixels:,} pixels")
                image.load()
                return ImageOps.exif_transpose(image)
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
            raise ImageError(f"over Pillow's pixel limit, refused as a possible decompression bomb ({error})") from None
        except UnidentifiedImageError:
            raise ImageError("not an image Pillow can read (PNG, JPEG, BMP, GIF, WebP, ...)") from None
        except PermissionError:
            raise ImageError("permission denied") from None
        # Pillow's decoders report a damaged file with any of these, depending on the format.
        except (OSError, ValueError, SyntaxError, EOFError) as error:
            raise ImageError(f"corrupt or truncated image ({error})") from None


def shrink(image: Image.Image, longest_side: int = WORKING_SIZE) -> Image.Image:
    """A copy no longer than `longest_side` on either side; modes are normalised first so resizing can filter."""
    if image.mode in ("1", "CMYK", "YCbCr", "LAB", "HSV"):
        image = image.convert("RGB" if image.mode != "1" else "L")
    elif image.mode in ("P", "PA"):
        # Palette resizing is nearest-neighbour only, and the palette may carry transparency.
        has_alpha = image.mode == "PA" or "transparency" in image.info
        image = image.convert("RGBA" if has_alpha else "RGB")
    elif image.mode.startswith("I") or image.mode == "F":
        image = image.convert("F")
    if max(image.size) > longest_side:
        image = image.copy()
        # thumbnail() premultiplies alpha while filtering, so transparent pixels' colour does not bleed in.
        image.thumbnail((longest_side, longest_side), Image.Resampling.LANCZOS)
    return image


def image_to_arrays(image: Image.Image) -> tuple[np.ndarray, np.ndarray | None]:
    """Lightness in [0, 1] and alpha in [0, 1], or None for alpha when every pixel is opaque."""
    if image.mode == "F":
        # 16- and 32-bit images have no fixed white level: use their own range.
        values = np.asarray(image, dtype=np.float32)
        low, high = float(values.min()), float(values.max())
        return (values - low) / (high - low) if high > low else np.zeros_like(values), None
    if image.mode in ("LA", "La", "RGBA", "RGBa") or "transparency" in image.info:
        rgba = np.asarray(image.convert("RGBA"), dtype=np.float32) / 255
        alpha = rgba[..., 3]
        return rgba[..., :3] @ LUMA_WEIGHTS, (alpha if alpha.min() < 1 else None)
    if image.mode == "L":
        return np.asarray(image, dtype=np.float32) / 255, None
    return (np.asarray(image.convert("RGB"), dtype=np.float32) / 255) @ LUMA_WEIGHTS, None


def resolve_transparency(lightness: np.ndarray, alpha: np.ndarray | None) -> tuple[np.ndarray, bool]:
    """(array, is_ink): the alpha channel itself when it carries the drawing, else the image composited on white.

    A drawing exported on a transparent canvas has one stroke colour and the shape only in alpha; whether that
    colour is black or white, compositing would lose the strokes on one of the two backgrounds.
    """
    if alpha is None:
        return lightness, False
    visible = lightness[alpha >= 0.5]
    if visible.size == 0:
        return np.zeros_like(alpha), True
    low, high = np.percentile(visible, [2, 98])
    if high - low < FLAT_COLOUR_SPREAD:
        return alpha, True
    return lightness * alpha + (1 - alpha), False


def border_values(array: np.ndarray) -> np.ndarray:
    thickness = max(1, round(BORDER_FRACTION * min(array.shape)))
    return np.concatenate([
        array[:thickness].ravel(), array[-thickness:].ravel(),
        array[:, :thickness].ravel(), array[:, -thickness:].ravel(),
    ])


def ink_map(lightness: np.ndarray, alpha: np.ndarray | None = None) -> np.ndarray:
    """Ink strength in [0, 1]: 0 on the background, 1 on the strongest stroke, whatever the colours were."""
    array, is_ink = resolve_transparency(lightness, alpha)
    if not is_ink and np.median(border_values(array)) > 0.5:
        array = 1 - array
    # The median ignores strokes that touch the edge; subtracting it turns grey paper into MNIST's pure black.
    background = float(np.median(border_values(array)))
    peak = float(array.max())
    if peak - background < MIN_CONTRAST:
        raise ImageError("blank image: no ink stands out from the background")
    return np.clip((array - background) / (peak - background), 0, 1).astype(np.float32)


def ink_bounding_box(ink: np.ndarray, threshold: float = INK_THRESHOLD) -> tuple[slice, slice]:
    strong = ink > threshold * float(ink.max())
    rows, columns = np.flatnonzero(strong.any(axis=1)), np.flatnonzero(strong.any(axis=0))
    if rows.size == 0:
        raise ImageError("blank image: no ink stands out from the background")
    return slice(rows[0], rows[-1] + 1), slice(columns[0], columns[-1] + 1)


def fit_in_box(ink: np.ndarray, box: int) -> np.ndarray:
    """Scale so the longest side is `box` pixels, keeping the aspect ratio."""
    height, width = ink.shape
    scale = box / max(height, width)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    resized = Image.fromarray(ink.astype(np.float32), mode="F").resize(size, Image.Resampling.LANCZOS)
    # Lanczos overshoots around sharp edges; MNIST has no values outside [0, 1].
    return np.clip(np.asarray(resized, dtype=np.float32), 0, 1)


def centre_of_mass(array: np.ndarray) -> tuple[float, float]:
    total = float(array.sum())
    rows, columns = np.indices(array.shape)
    return float((rows * array).sum() / total), float((columns * array).sum() / total)


def place_on_canvas(patch: np.ndarray, centring: str, size: int = CANVAS_SIZE) -> np.ndarray:
    """Paste `patch` into a size x size black canvas, centred by its centre of mass ("mass") or its box ("box").

    The shift is in whole pixels, so the patch is never blurred and an MNIST digit lands back where it was; it is
    clamped so no ink falls off the canvas when a lopsided digit would need more than the 4-pixel margin.
    """
    height, width = patch.shape
    if centring == "mass":
        row, column = centre_of_mass(patch)
        top, left = round(size / 2 - row), round(size / 2 - column)
    else:
        top, left = (size - height) // 2, (size - width) // 2
    top, left = min(max(top, 0), size - height), min(max(left, 0), size - width)
    canvas = np.zeros((size, size), dtype=np.float32)
    canvas[top:top + height, left:left + width] = patch
    return canvas


def preprocess(image: Image.Image, dataset: str = DEFAULT_DATASET) -> np.ndarray:
    """An image of any size and mode as the model's input: float32 in [0, 1], shape 28x28x1, light ink on black."""
    box, centring = FRAMING[dataset]
    ink = ink_map(*image_to_arrays(shrink(image)))
    rows, columns = ink_bounding_box(ink)
    patch = fit_in_box(ink[rows, columns], box)
    if patch.max() <= 0:
        raise ImageError("blank image: the ink vanished when scaled down to 28x28")
    # A thin pen on a big canvas comes out faint once scaled down; MNIST strokes reach full white.
    patch /= patch.max()
    return place_on_canvas(patch, centring)[..., np.newaxis]


def to_png_image(array: np.ndarray) -> Image.Image:
    return Image.fromarray(np.round(array[..., 0] * 255).astype(np.uint8), mode="L")


def prepare_files(
    paths: Sequence[str | os.PathLike], dataset: str = DEFAULT_DATASET, max_pixels: int = MAX_IMAGE_PIXELS
) -> tuple[list[tuple[str, np.ndarray]], list[tuple[str, str]]]:
    """(file, model input) for each readable image and (file, reason) for each one that is not."""
    prepared, failed = [], []
    for path in paths:
        try:
            prepared.append((str(path), preprocess(load_image(path, max_pixels), dataset)))
        except ImageError as error:
            failed.append((str(path), str(error)))
    return prepared, failed


def preprocessed_names(files: Sequence[str]) -> list[str]:
    """One PNG name per input, `<stem>-28x28.png`, numbered where two inputs share a stem."""
    names, used = [], set()
    for file in files:
        stem, name, number = Path(file).stem, f"{Path(file).stem}-28x28.png", 1
        while name in used:
            number += 1
            name = f"{stem}-{number}-28x28.png"
        used.add(name)
        names.append(name)
    return names


def save_preprocessed(prepared: Sequence[tuple[str, np.ndarray]], directory: str | os.PathLike) -> list[Path]:
    directory = Path(directory)
    written = []
    try:
        directory.mkdir(parents=True, exist_ok=True)
        for (_, array), name in zip(prepared, preprocessed_names([file for file, _ in prepared]), strict=True):
            with atomic_path(directory / name) as temporary:
                to_png_image(array).save(temporary, format="PNG")
            written.append(directory / name)
    except OSError as error:
        raise PipelineError(f"cannot write the preprocessed images to {directory}: {error.strerror or error}") from None
    return written


def load_classifier(path: str | os.PathLike, num_classes: int):
    """Load a .keras model with safe_mode on and check it maps 28x28x1 images to `num_classes` probabilities."""
    path = Path(path)
    advice = "run `dvc repro` first to train it, or pass --model PATH"
    if not path.is_file():
        raise ModelError(f"model file {path} not found: {advice}")
    import keras

    try:
        model = keras.saving.load_model(path, safe_mode=True)
    # Keras reports an unreadable archive with whatever its zip, h5 or deserialisation layer raised.
    except Exception as error:
        reason = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise ModelError(f"{path} is not a Keras model this program can load ({reason}): {advice}") from None
    input_shape, output_shape = tuple(model.input_shape), tuple(model.output_shape)
    if input_shape[1:] != (CANVAS_SIZE, CANVAS_SIZE, 1) or output_shape[1:] != (num_classes,):
        raise ModelError(
            f"{path} maps {input_shape[1:]} to {output_shape[1:]}, expected ({CANVAS_SIZE}, {CANVAS_SIZE}, 1) images "
            f"to {num_classes} class probabilities: {advice}"
        )
    return model


def predict_arrays(model, arrays: Sequence[np.ndarray]) -> np.ndarray:
    """Class probabilities for a batch of 28x28x1 arrays, in one predict call."""
    return np.asarray(model.predict(np.stack(arrays), verbose=0), dtype=np.float64)


def predict_files(
    paths: Sequence[str | os.PathLike],
    model,
    class_names: list[str],
    dataset: str = DEFAULT_DATASET,
    save_dir: str | os.PathLike | None = None,
    max_pixels: int = MAX_IMAGE_PIXELS,
) -> tuple[list[Prediction], list[tuple[str, str]]]:
    """The core of the CLI: predictions for the readable images, in input order, and (file, reason) for the rest."""
    prepared, failed = prepare_files(paths, dataset, max_pixels)
    if save_dir is not None and prepared:
        save_preprocessed(prepared, save_dir)
    if not prepared:
        return [], failed
    probabilities = predict_arrays(model, [array for _, array in prepared])
    predictions = [
        Prediction(file, row, class_names) for (file, _), row in zip(prepared, probabilities, strict=True)
    ]
    return predictions, failed


def defaults_from_params(params_path: str | os.PathLike = "params.yaml") -> tuple[Path, str]:
    """(model path, dataset) from params.yaml, or the shipped defaults when it is absent or invalid."""
    if not Path(params_path).is_file():
        return DEFAULT_MODEL, DEFAULT_DATASET
    from stages.params import ParamsError, load_params

    try:
        params = load_params(params_path)
    except ParamsError as error:
        first_line = str(error).splitlines()[0]
        print(f"warning: ignoring {params_path} ({first_line}); using {DEFAULT_MODEL} and {DEFAULT_DATASET}",
              file=sys.stderr)
        return DEFAULT_MODEL, DEFAULT_DATASET
    return Path(params.paths.model), params.data.dataset


def parse_arguments(argv: Sequence[str] | None) -> argparse.Namespace:
    from stages.datasets import CLASS_NAMES

    parser = argparse.ArgumentParser(
        prog="python -m stages.predict",
        description="Classify image files (your own handwriting, photos, drawings) with the trained model.",
        epilog="Exit codes: 0 all predicted; 1 some image could not be read; 2 model missing or unusable.",
    )
    parser.add_argument("images", nargs="+", metavar="IMAGE", help="PNG, JPEG, BMP, GIF or WebP files")
    parser.add_argument("--model", type=Path, default=None,
                        help="the .keras model (default: paths.model from params.yaml)")
    parser.add_argument("--top", type=int, default=3, help="how many of the most likely classes to list (default 3)")
    parser.add_argument("--json", action="store_true", help="print one JSON object per line per image")
    parser.add_argument("--save-preprocessed", type=Path, metavar="DIR",
                        help="write the 28x28 images the model saw into DIR")
    parser.add_argument("--dataset", choices=sorted(CLASS_NAMES),
                        help="whose class names and framing to use (default: data.dataset from params.yaml)")
    arguments = parser.parse_args(argv)
    if not 1 <= arguments.top <= len(CLASS_NAMES[arguments.dataset or DEFAULT_DATASET]):
        parser.error(f"--top must be between 1 and the number of classes, got {arguments.top}")
    return arguments


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI and return its exit code (see the module docstring)."""
    arguments = parse_arguments(argv)
    # TensorFlow's C++ start-up chatter (CPU features, no CUDA) would bury the one line per image; errors still show.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from stages.datasets import class_names

    try:
        if arguments.model is None or arguments.dataset is None:
            default_model, default_dataset = defaults_from_params()
            arguments.model = arguments.model or default_model
            arguments.dataset = arguments.dataset or default_dataset
        names = class_names(arguments.dataset)
        model = load_classifier(arguments.model, len(names))
        predictions, failed = predict_files(
            arguments.images, model, names, arguments.dataset, arguments.save_preprocessed
        )
    except ModelError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_BAD_MODEL
    except PipelineError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_BAD_IMAGE
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    for file, reason in failed:
        print(f"error: {file}: {reason}", file=sys.stderr)
    for prediction in predictions:
        if arguments.json:
            print(json.dumps(prediction.as_json(arguments.top)))
        else:
            print(prediction.as_text(arguments.top))
    return EXIT_BAD_IMAGE if failed else EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
