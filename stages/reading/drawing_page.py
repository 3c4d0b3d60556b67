"""A page to draw digits and numbers on, answered by the trained model: `python -m stages.predict --serve`.

The page (drawing_page.html, plain HTML and JavaScript) posts the canvas as a PNG to /predict while you draw; the
answer is the number read, and per digit the top-3 classes and the 28x28 image the model saw. It goes through the
same code as `python -m stages.predict --number` (stages/reading/images.py), with the model loaded once at start-up.

FastAPI and uvicorn come with MLflow (this module is imported only to serve the page). The server listens on
127.0.0.1 only: it is a tool for the person at this machine, not a service (MLflow's `mlflow models serve` is the
service; see the README).
"""

from __future__ import annotations

import base64
import io
import threading
import time
from importlib import resources

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse
from starlette.concurrency import run_in_threadpool

from stages.reading.images import ImageError, load_image, split_number, to_png_image

# A 280x280 canvas as PNG is 5-30 kB; a photo from a phone is a few MB.
MAX_UPLOAD_BYTES = 10_000_000
# The page's canvas is 280x280; a drawing larger than this many pixels is not from the page.
MAX_DRAWING_PIXELS = 4_000_000
# At most this many digits per drawing: a scribble that splits into dozens of marks is not a number.
MAX_DIGITS = 20
TOP = 3
HOST = "127.0.0.1"


def data_url(array: np.ndarray) -> str:
    buffer = io.BytesIO()
    to_png_image(array).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


class Reader:
    """The model, loaded once, reading drawings; one at a time (a Keras model is not made for concurrent calls)."""

    def __init__(self, model, class_names: list[str], dataset: str):
        self.model, self.class_names, self.dataset = model, class_names, dataset
        self.lock = threading.Lock()

    def warm_up(self) -> None:
        """Read one drawing before the first visitor does: the image libraries load, TensorFlow traces the model."""
        from PIL import Image, ImageDraw

        canvas = Image.new("L", (280, 280), 255)
        ImageDraw.Draw(canvas).line([(140, 40), (140, 240)], fill=0, width=24)
        buffer = io.BytesIO()
        canvas.save(buffer, format="PNG")
        self.read(buffer.getvalue())

    def read(self, data: bytes) -> dict:
        """The answer to one drawing; raises ImageError with the message for the page."""
        started = time.perf_counter()
        if len(data) > MAX_UPLOAD_BYTES:
            raise ImageError(f"{len(data):,} bytes is over the limit of {MAX_UPLOAD_BYTES:,} bytes")
        digits = split_number(load_image(data, MAX_DRAWING_PIXELS), self.dataset)
        if len(digits) > MAX_DIGITS:
            raise ImageError(f"{len(digits)} separate marks: draw at most {MAX_DIGITS} digits, or clear and redraw")
        batch = np.stack([digit.array for digit in digits])
        with self.lock:
            probabilities = np.asarray(self.model.predict_on_batch(batch), dtype=np.float64)
        answers = []
        for digit, row in zip(digits, probabilities, strict=True):
            order = np.argsort(-row, kind="stable")[:TOP]
            answers.append({
                "label": self.class_names[order[0]],
                "top": [{"label": self.class_names[index], "probability": float(row[index])} for index in order],
                "image": data_url(digit.array),
                "box": dict(zip(("x", "y", "width", "height"), digit.box, strict=True)),
            })
        return {"number": "".join(answer["label"] for answer in answers), "digits": answers,
                "milliseconds": round(1000 * (time.perf_counter() - started), 1)}


def create_app(reader: Reader) -> FastAPI:
    app = FastAPI(title="Draw a number", docs_url=None, redoc_url=None, openapi_url=None)
    page = resources.files("stages.reading").joinpath("drawing_page.html").read_text(encoding="utf-8")

    @app.get("/", response_class=HTMLResponse)
    def index() -> str:
        return page

    @app.post("/predict")
    async def predict(request: Request):
        # The body is read up to twice the limit, so that a client sending too much still gets the answer (a
        # server that closes on an unread body resets the connection); beyond that the connection is dropped.
        too_much = JSONResponse({"error": f"over the limit of {MAX_UPLOAD_BYTES:,} bytes: send the 280x280 "
                                          "drawing as PNG"}, status_code=413)
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > 2 * MAX_UPLOAD_BYTES:
            return too_much
        data = bytearray()
        async for chunk in request.stream():
            data += chunk
            if len(data) > 2 * MAX_UPLOAD_BYTES:
                return too_much
        try:
            return await run_in_threadpool(reader.read, bytes(data))
        except ImageError as error:
            status = 413 if "over the limit" in str(error) else 422
            return JSONResponse({"error": str(error)}, status_code=status)

    return app


def serve(model, class_names: list[str], dataset: str, port: int) -> None:
    """Serve the page until Ctrl-C."""
    import uvicorn

    reader = Reader(model, class_names, dataset)
    reader.warm_up()
    app = create_app(reader)
    print(f"drawing page on http://{HOST}:{port}/  (Ctrl-C to stop)", flush=True)
    uvicorn.run(app, host=HOST, port=port, log_level="warning")
