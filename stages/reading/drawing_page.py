"""A page to draw digits and numbers on, answered by the trained model: `python -m stages.predict --serve`.

The page (drawing_page.html, plain HTML and JavaScript) posts the canvas as a PNG to /predict while you draw; the
answer is the number read, and per digit the top-3 classes and the 28x28 image the model saw. It goes through the
same code as `python -m stages.predict --number` (stages/reading/numbers.py) and the same reader
(stages/reading/reader.py): calibrated bars, "not sure" with its reason (the confirm box then starts empty), and
the line naming the model that answered. The page follows its model: a changed model file (checked on each
request) or a moved alias (`--model champion`, polled every few seconds) answers the next drawing.

Under each digit a box holds the class read: Enter confirms it (or the class typed over it), and the page posts the
same drawing to /confirm with the digit's position and class; the server reads the drawing again (the same code
gives the same 28x28 image) and stores that digit as one of your own (stages/reading/own.py, the folder
`paths.own`). /own answers how many own digits each class has, and the accuracy on your held-out digits
(`own_test_accuracy`) of the latest evaluated run (`paths.metrics`), which the page shows beside the canvas.

FastAPI and uvicorn come with MLflow (this module is imported only to serve the page). The server listens on
127.0.0.1 only: it is a tool for the person at this machine, not a service (MLflow's `mlflow models serve` is the
service; see docs/tracking.md). Another site open in the same browser can still send it requests, so every route answers
only the Host 127.0.0.1:PORT or localhost:PORT (a name of theirs rebound to 127.0.0.1 is refused), and /confirm,
the one write, takes only the page's own request: Content-Type image/png (a cross-site form or script cannot send it
without a preflight, which this server never allows) from the page's Origin, or Sec-Fetch-Site same-origin.
Refusals are 403 and one line in the log.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import logging
import os
import threading
import time
from importlib import resources
from pathlib import Path

import numpy as np
from fastapi import Depends, FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect

from stages.core.errors import PipelineError
from stages.reading import own
from stages.reading.loading import ImageError, load_image, to_png_image
from stages.reading.numbers import split_number

# A 280x280 canvas as PNG is 5-30 kB; a photo from a phone is a few MB.
MAX_UPLOAD_BYTES = 10_000_000
# The page's canvas is 280x280; a drawing larger than this many pixels is not from the page.
MAX_DRAWING_PIXELS = 4_000_000
# At most this many digits per drawing: a scribble that splits into dozens of marks is not a number.
MAX_DIGITS = 20
TOP = 3
POLL_SECONDS = 5  # how often a page serving an alias (--model champion) asks the registry where it points
HOST = "127.0.0.1"
PAGE_NAMES = (HOST, "localhost")  # the names a browser reaches the page by; any other Host is refused
UPLOAD_TYPE = "image/png"  # what the page posts; not CORS-safelisted, so another site's page cannot send it
# uvicorn's own logger: its lines go where uvicorn's go (the console, or the log the page was started with).
log = logging.getLogger("uvicorn.error")


class Refused(Exception):
    """A request not from the page itself: answered 403, one line in the log."""


def own_host(request: Request) -> None:
    """Every route: the Host is the page's (127.0.0.1:PORT or localhost:PORT), never a name rebound to it."""
    # Not Starlette's TrustedHostMiddleware: it ignores the port, answers 400 and logs nothing.
    port = request.scope["server"][1]
    host = request.headers.get("host", "")
    if host.lower() not in {f"{name}:{port}" for name in PAGE_NAMES}:
        raise Refused(f"Host {host!r} is not {HOST}:{port} or localhost:{port} (a site's name rebound to this "
                      "machine?)")


def from_the_page(request: Request) -> None:
    """Writes: the page's own PNG, sent by the page itself (its Origin, or Sec-Fetch-Site same-origin)."""
    content_type = request.headers.get("content-type", "")
    if content_type.split(";")[0].strip().lower() != UPLOAD_TYPE:
        raise Refused(f"Content-Type {content_type!r} is not the page's {UPLOAD_TYPE}")
    origin, site = request.headers.get("origin"), request.headers.get("sec-fetch-site")
    page = f"http://{request.headers.get('host', '')}"
    if origin is None and site is None:
        raise Refused("neither Origin nor Sec-Fetch-Site: not sent by the page")
    if origin is not None and origin.lower() != page.lower():
        raise Refused(f"Origin {origin!r} is not the page's {page}")
    if site is not None and site != "same-origin":
        raise Refused(f"Sec-Fetch-Site {site!r}: not the page's own request (same-origin)")


def data_url(array: np.ndarray) -> str:
    buffer = io.BytesIO()
    to_png_image(array).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


class Page:
    """The drawings read by the page's model (stages/reading/reader.py), which follows its source: a model file that
    changed (its size and mtime, checked on each request; then its sha256) or an alias that moved (asked at most
    every POLL_SECONDS) is opened again, and the next answer comes from it; a request in flight keeps the reader it
    started with."""

    def __init__(self, open_model, source: str = "", version_of=None):
        self.open_model, self.source, self.version_of = open_model, str(source), version_of
        self.swap = threading.Lock()
        self.reader = open_model()
        self.stamp, self.digest, self.asked = self.file_stamp(), self.file_digest(), time.monotonic()
        self.version = version_of() if version_of else None

    @property
    def class_names(self) -> list[str]:
        return self.reader.class_names

    @property
    def dataset(self) -> str:
        return self.reader.dataset

    def file_stamp(self):
        try:
            found = os.stat(self.source)
        except (OSError, ValueError):
            return None
        return found.st_size, found.st_mtime_ns

    def file_digest(self) -> str | None:
        try:
            with open(self.source, "rb") as handle:
                return hashlib.file_digest(handle, "sha256").hexdigest()
        except (OSError, ValueError):
            return None

    def changed(self) -> bool:
        if self.version_of is not None:
            if time.monotonic() - self.asked < POLL_SECONDS:
                return False
            self.asked = time.monotonic()
            version = self.version_of()
            moved, self.version = version != self.version, version
            return moved
        stamp = self.file_stamp()
        if stamp == self.stamp or stamp is None:  # unchanged, or mid-replacement: keep the model that answers
            return False
        self.stamp, digest = stamp, self.file_digest()
        moved, self.digest = digest != self.digest, digest
        return moved

    def current(self):
        """The reader to answer with now: opened again when its source changed."""
        with self.swap:
            if self.changed():
                try:
                    self.reader = self.open_model()
                except PipelineError as error:  # a half-written or broken model: keep answering with the last one
                    log.warning("the model changed but cannot be opened (%s); still answering with %s", error,
                                self.reader.description)
            return self.reader

    def warm_up(self) -> None:
        """Read one drawing before the first visitor does: the image libraries load, TensorFlow traces the model."""
        from PIL import Image, ImageDraw

        canvas = Image.new("L", (280, 280), 255)
        ImageDraw.Draw(canvas).line([(140, 40), (140, 240)], fill=0, width=24)
        buffer = io.BytesIO()
        canvas.save(buffer, format="PNG")
        self.read(buffer.getvalue())

    def digits(self, data: bytes):
        """(the drawing, its digits); raises ImageError with the message for the page."""
        if len(data) > MAX_UPLOAD_BYTES:
            raise ImageError(f"{len(data):,} bytes is over the limit of {MAX_UPLOAD_BYTES:,} bytes")
        image = load_image(data, MAX_DRAWING_PIXELS)
        digits = split_number(image, self.dataset)
        if len(digits) > MAX_DIGITS:
            raise ImageError(f"{len(digits)} separate marks: draw at most {MAX_DIGITS} digits, or clear and redraw")
        return image, digits

    def read(self, data: bytes) -> dict:
        """The answer to one drawing, and the model that gave it; raises ImageError with the message for the page."""
        started = time.perf_counter()
        _, digits = self.digits(data)
        reader = self.current()
        [answer] = reader.number_answers([("drawing", digits)])
        shown = []
        for digit, read in zip(digits, answer.digits, strict=True):
            shown.append({
                "label": read.label,
                "not_sure": read.not_sure,  # "not sure: 4 or 9" or None
                "reason": read.reason,  # "low confidence", "unlike a digit" or None
                "top": [{"label": entry["label"], "probability": entry["probability"]} for entry in read.top(TOP)],
                "image": data_url(digit.array),
                "box": dict(zip(("x", "y", "width", "height"), digit.box, strict=True)),
                "split": digit.split,  # how sure the cut from a touching neighbour was (1.0: none touched)
                "before": digit.before,  # the separator written before it: "", ".", "," or " "
            })
        return {"number": answer.number, "digits": shown, "model": reader.description,
                "milliseconds": round(1000 * (time.perf_counter() - started), 1)}


class OwnDigits:
    """Your confirmed digits (paths.own) and the latest run's accuracy on the held-out ones (paths.metrics)."""

    def __init__(self, folder: Path | None, metrics: Path | None, class_names: list[str], dataset: str):
        self.folder, self.metrics, self.class_names, self.dataset = folder, metrics, class_names, dataset
        self.lock = threading.Lock()

    def summary(self) -> dict:
        if self.folder is None:
            return {"error": "no params.yaml here: start the page from the project root to keep your digits"}
        counts = own.counts(self.folder) if self.folder.is_dir() else [0] * len(self.class_names)
        try:
            metrics = json.loads(self.metrics.read_text())
        except (OSError, ValueError, AttributeError):
            metrics = {}
        return {"folder": str(self.folder), "classes": self.class_names, "counts": counts,
                "own_test_accuracy": metrics.get("own_test_accuracy")}

    def confirm(self, reader: Page, data: bytes, position: int, label: str) -> dict:
        """Store digit `position` (0 = leftmost) of the drawing as class `label`; PipelineError for the page."""
        if self.folder is None:
            raise PipelineError(self.summary()["error"])
        value = own.parse_label(label, self.dataset)
        image, digits = reader.digits(data)
        if not 0 <= position < len(digits):
            raise ImageError(f"digit {position + 1} is not in this drawing ({len(digits)} digit(s)); nothing was "
                             "stored")
        digit = digits[position]
        with self.lock:
            stored = own.store(self.folder, digit.array, value, image, digit.box)
        return {"label": self.class_names[value], "new": stored.new, "file": stored.path.name, **self.summary()}


def create_app(reader: Page, own_digits: OwnDigits | None = None) -> FastAPI:
    app = FastAPI(title="Draw a number", docs_url=None, redoc_url=None, openapi_url=None,
                  dependencies=[Depends(own_host)])
    page = resources.files("stages.reading").joinpath("drawing_page.html").read_text(encoding="utf-8")
    own_digits = own_digits or OwnDigits(None, None, reader.class_names, reader.dataset)

    @app.exception_handler(Refused)
    async def refuse(request: Request, error: Refused) -> JSONResponse:
        log.warning("refused %s %s: %s", request.method, request.url.path, error)
        return JSONResponse({"error": f"refused: {error}"}, status_code=403)

    @app.exception_handler(ClientDisconnect)
    async def dropped(request: Request, error: ClientDisconnect) -> Response:
        log.warning("%s %s: the client went away before its upload ended; nothing was stored", request.method,
                    request.url.path)
        return Response(status_code=400)  # to no one: the connection is gone

    @app.get("/", response_class=HTMLResponse)
    def index() -> str:
        return page

    async def body(request: Request) -> bytes | None:
        """The uploaded drawing; None when it is far over the limit."""
        # The body is read up to twice the limit, so that a client sending too much still gets the answer (a
        # server that closes on an unread body resets the connection); beyond that the connection is dropped.
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > 2 * MAX_UPLOAD_BYTES:
            return None
        data = bytearray()
        async for chunk in request.stream():
            data += chunk
            if len(data) > 2 * MAX_UPLOAD_BYTES:
                return None
        return bytes(data)

    too_much = {"error": f"over the limit of {MAX_UPLOAD_BYTES:,} bytes: send the 280x280 drawing as PNG"}

    @app.post("/predict")
    async def predict(request: Request):
        data = await body(request)
        if data is None:
            return JSONResponse(too_much, status_code=413)
        try:
            return await run_in_threadpool(reader.read, data)
        except ImageError as error:
            status = 413 if "over the limit" in str(error) else 422
            return JSONResponse({"error": str(error)}, status_code=status)

    @app.get("/own")
    def own_summary() -> dict:
        return own_digits.summary()

    @app.post("/confirm", dependencies=[Depends(from_the_page)])
    async def confirm(request: Request, digit: int, label: str):
        """Store digit number `digit` (0 = leftmost) of the posted drawing as class `label`."""
        data = await body(request)
        if data is None:
            return JSONResponse(too_much, status_code=413)
        try:
            return await run_in_threadpool(own_digits.confirm, reader, data, digit, label)
        except PipelineError as error:
            status = 413 if "over the limit" in str(error) else 422
            return JSONResponse({"error": str(error)}, status_code=status)

    return app


def serve(open_model, port: int, own_paths: tuple[Path, Path] | None = None, follow: str = "",
          version_of=None) -> None:
    """Serve the page until Ctrl-C, answering with `open_model()` (a reader.Reader), opened again when the file
    `follow` changes or `version_of()` (an alias's version) does; `own_paths` (paths.own, paths.metrics) keeps
    confirmed digits."""
    import uvicorn

    reader = Page(open_model, follow, version_of)
    reader.warm_up()
    app = create_app(reader, OwnDigits(*(own_paths or (None, None)), reader.class_names, reader.dataset))
    print(f"drawing page on http://{HOST}:{port}/  (Ctrl-C to stop)", flush=True)
    uvicorn.run(app, host=HOST, port=port, log_level="warning")
