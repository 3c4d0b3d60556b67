"""The drawing page, for real: `python -m stages.predict --serve` with the session's model, answered over HTTP and
used in Debian's Chromium driven by Playwright (the system browser: Playwright downloads none).

`pytest tests/test_drawing_page.py -s` prints the response time and where the page's screenshot was saved.
Without Chromium the browser test is skipped, and fails under CI=true.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import os
import socket
import statistics
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from helpers.handwriting import drawn, pen_strokes
from helpers.net import answers, free_port, wait_until
from helpers.params import write_params
from helpers.project import ROOT
from helpers.servers import require
from PIL import Image

from benchmarks.photo_forms import written_number
from stages.core.datasets import class_names
from stages.reading import drawing_page

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
SCALE, PEN = 10, 24  # a 28x28 digit drawn on the 280x280 canvas, with the page's pen width
RESPONSE_LIMIT_MS = 100


class PageServer:
    def __init__(self, url: str, process: subprocess.Popen, own: Path, log: Path):
        self.url, self.process, self.own, self.log = url, process, own, log
        self.origin = url.rstrip("/")  # what a browser sends as Origin from the page itself
        self.port = int(self.origin.rsplit(":", 1)[1])

    def post(self, data: bytes | None, content_type: str = "image/png", path: str = "predict",
             **headers: str) -> tuple[int, dict]:
        """POST (GET when `data` is None); headers as keyword arguments, `_` for `-` (Sec_Fetch_Site)."""
        headers = {"Content-Type": content_type, **{name.replace("_", "-"): value for name, value in headers.items()}}
        request = urllib.request.Request(self.url + path, data=data, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as error:
            return error.code, json.loads(error.read())

    def confirm(self, data: bytes, query: str) -> tuple[int, dict]:
        """What the page's own fetch sends: its PNG, its Origin."""
        return self.post(data, path="confirm?" + query, Origin=self.origin)

    def log_lines(self) -> list[str]:
        return self.log.read_text().splitlines()


OWN_TEST = {"own_test_accuracy": 0.9}  # what the latest run measured on your digits


@pytest.fixture(scope="module")
def page_server(model_path, tmp_path_factory, raw_params):
    """The page started in a project folder whose params.yaml keeps own digits in ./own (the latest metrics say
    OWN_TEST); `.own` is that folder."""
    port = free_port()
    folder = tmp_path_factory.mktemp("page")
    log = folder / "server.log"
    write_params(folder, {**raw_params, "paths": {**raw_params["paths"], "own": "own", "metrics": "metrics.json"}})
    (folder / "metrics.json").write_text(json.dumps({"test_accuracy": 0.99, **OWN_TEST}))
    with open(log, "w") as output:
        process = subprocess.Popen(
            [sys.executable, "-m", "stages.predict", "--serve", "--model", str(model_path), "--dataset", "mnist",
             "--port", str(port)],
            cwd=folder, stdout=output, stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "3"},
        )
    url = f"http://127.0.0.1:{port}/"

    try:
        wait_until(lambda: answers(url), 180, "the drawing page", process, log)
        yield PageServer(url, process, folder / "own", log)
    finally:
        process.terminate()
        process.wait(timeout=30)


def png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def drawings(test_digits, test_labels) -> list[tuple[int, list]]:
    """(label, strokes) of the first 12 test digits."""
    return [(int(label), pen_strokes(digit)) for digit, label in zip(test_digits[:12], test_labels[:12], strict=True)]


def test_drawings_are_read(page_server, drawings):
    right = 0
    for label, strokes in drawings:
        status, answer = page_server.post(png(drawn(strokes, SCALE, PEN)))
        assert status == 200, answer
        assert len(answer["digits"]) == 1 and answer["digits"][0]["image"].startswith("data:image/png;base64,")
        assert [entry["probability"] for entry in answer["digits"][0]["top"]] == sorted(
            (entry["probability"] for entry in answer["digits"][0]["top"]), reverse=True)
        right += answer["number"] == str(label)
    assert right >= len(drawings) - 1


def test_a_number_is_read_digit_by_digit(page_server, drawings):
    canvas = Image.new("RGB", (280, 280), "white")
    pieces = [drawn(strokes, 4.5, 12, size=140) for _, strokes in drawings[:2]]
    canvas.paste(pieces[0], (0, 70))
    canvas.paste(pieces[1], (140, 70))
    status, answer = page_server.post(png(canvas))
    assert status == 200 and answer["number"] == "".join(str(label) for label, _ in drawings[:2])
    assert answer["digits"][0]["box"]["x"] < answer["digits"][1]["box"]["x"]


def test_a_number_of_touching_digits_is_read(page_server, test_digits, model):
    """Two digits whose ink touches, rendered as a photo and sent as a PNG: both are read, the cut said unsure."""
    from stages.preprocess import normalize

    right = 0
    for first in (0, 2, 4):
        pair = test_digits[first:first + 2]
        photo, _ = written_number(list(pair), np.random.default_rng(first), touching=1.0)
        status, answer = page_server.post(png(photo))
        assert status == 200, answer
        expected = "".join(map(str, model.predict(normalize(pair), verbose=0).argmax(axis=1)))
        right += answer["number"] == expected and all(digit["split"] < 1 for digit in answer["digits"])
    assert right >= 2


def test_response_time(page_server, drawings):
    """Under 100 ms per 280x280 drawing. The CPU time the server spends is checked always; the wall-clock time
    only where the machine is not overloaded (on a shared machine other processes' load lands in it)."""
    import psutil

    server = psutil.Process(page_server.process.pid)
    bodies = [png(drawn(strokes, SCALE, PEN)) for _, strokes in drawings]
    page_server.post(bodies[0])
    walls, cpu_before = [], sum(server.cpu_times()[:2])
    for body in bodies * 2:
        started = time.perf_counter()
        status, _ = page_server.post(body)
        walls.append(1000 * (time.perf_counter() - started))
        assert status == 200
    cpu_ms = 1000 * (sum(server.cpu_times()[:2]) - cpu_before) / len(walls)
    wall_ms = statistics.median(walls)
    load = os.getloadavg()[0] / (os.cpu_count() or 1)
    print(f"\ndrawing page: median {wall_ms:.0f} ms per drawing (max {max(walls):.0f} ms), server CPU "
          f"{cpu_ms:.0f} ms per drawing, {len(walls)} drawings, load {load:.1f} per core")
    assert cpu_ms < RESPONSE_LIMIT_MS
    if load <= 1:
        assert wall_ms < RESPONSE_LIMIT_MS


@pytest.mark.parametrize(("body", "status", "message"), [
    pytest.param(png(Image.new("RGB", (280, 280), "white")), 422, "blank image", id="blank"),
    pytest.param(b"", 422, "empty", id="empty"),
    pytest.param(b"%PDF-1.4 not a drawing", 422, "not an image", id="not-an-image"),
    pytest.param(png(Image.new("1", (3000, 3000))), 413, "over the limit of 4,000,000 pixels", id="huge-image"),
    pytest.param(b"\0" * 10_000_001, 413, "over the limit of 10,000,000 bytes", id="huge-body"),
])
def test_bad_input_gets_one_clear_message(page_server, body, status, message):
    answer_status, answer = page_server.post(body)
    assert answer_status == status
    assert set(answer) == {"error"} and message in answer["error"] and "\n" not in answer["error"]


def own_files(folder: Path) -> list[str]:
    return sorted(path.relative_to(folder).as_posix() for path in folder.rglob("*.png")) if folder.exists() else []


def test_a_confirmed_digit_is_stored_as_the_model_saw_it(page_server, drawings):
    from stages.reading import own

    label, strokes = drawings[0]
    drawing = png(drawn(strokes, SCALE, PEN))
    status, answer = page_server.post(drawing)
    assert status == 200
    before = own_files(page_server.own)
    # A correction: the person says it is a 3, whatever the model read.
    status, stored = page_server.confirm(drawing, "digit=0&label=3")
    assert status == 200 and stored["label"] == "3" and stored["new"]
    assert stored["own_test_accuracy"] == OWN_TEST["own_test_accuracy"]
    added = sorted(set(own_files(page_server.own)) - set(before))
    image = f"3/{stored['file']}"
    assert added == sorted([image, image.replace(".png", own.CROP_SUFFIX)])
    seen = np.asarray(Image.open(io.BytesIO(base64.b64decode(answer["digits"][0]["image"].split(",")[1]))))
    np.testing.assert_array_equal(np.asarray(Image.open(page_server.own / image)), seen)  # what the model saw
    assert stored["counts"][3] == own.counts(page_server.own)[3] >= 1
    status, again = page_server.confirm(drawing, "digit=0&label=3")
    assert status == 200 and not again["new"] and own_files(page_server.own) == sorted(before + added)


@pytest.mark.parametrize(("query", "message"), [
    ("digit=0&label=12", "label '12' is not a class of mnist"),
    ("digit=1&label=3", "digit 2 is not in this drawing (1 digit(s)); nothing was stored"),
    ("digit=0&label=%C2%B2", "label '²' is not a class of mnist: give one of 0, 1, 2"),  # '²'.isdigit() is True
    ("digit=0&label=" + "9" * 5000, "label '99999999999999999999...' (5,000 characters) is not a class of mnist"),
], ids=["not-a-class", "no-such-digit", "superscript-two", "5000-digits"])
def test_a_bad_confirmation_stores_nothing(page_server, drawings, query, message):
    before = own_files(page_server.own)
    status, answer = page_server.confirm(png(drawn(drawings[0][1], SCALE, PEN)), query)
    assert status == 422 and set(answer) == {"error"} and message in answer["error"]
    assert own_files(page_server.own) == before


def test_own_folder_not_a_folder_is_one_line(page_server, drawings):
    kept = page_server.own.with_name("own-kept")
    if page_server.own.exists():
        page_server.own.rename(kept)
    page_server.own.write_text("not a folder")
    try:
        status, answer = page_server.confirm(png(drawn(drawings[0][1], SCALE, PEN)), "digit=0&label=4")
        assert page_server.own.read_text() == "not a folder"
    finally:
        page_server.own.unlink()
        if kept.exists():
            kept.rename(page_server.own)
    assert status == 422 and answer == {"error": "own is not a folder: your own digits are kept in the folder "
                                        "paths.own names (params.yaml); move what is there away, then try again"}


EVIL = "http://evil.example"


@pytest.mark.parametrize(("content_type", "headers", "reason"), [
    # The "simple" request any page can send to any address, no preflight: text/plain from another site.
    ("text/plain", {"Origin": EVIL}, "Content-Type 'text/plain' is not the page's image/png"),
    ("image/png", {"Origin": EVIL}, f"Origin '{EVIL}' is not the page's"),
    ("image/png", {"Sec_Fetch_Site": "cross-site"}, "Sec-Fetch-Site 'cross-site'"),
    ("image/png", {}, "neither Origin nor Sec-Fetch-Site"),
    ("image/png", {"Host": "evil.example"}, "Host 'evil.example' is not 127.0.0.1:"),  # DNS rebinding
    ("image/png", {"Host": "evil.example", "Origin": "http://evil.example"}, "Host 'evil.example'"),
], ids=["simple-cross-site-post", "foreign-origin", "cross-site-fetch", "no-origin", "foreign-host",
        "rebound-name"])
def test_a_write_not_from_the_page_is_refused(page_server, drawings, content_type, headers, reason):
    before, lines = own_files(page_server.own), len(page_server.log_lines())
    # A drawn 1 stored as a 9: the attack of the issue, which stored it and answered 200.
    status, answer = page_server.post(png(drawn(drawings[0][1], SCALE, PEN)), content_type, "confirm?digit=0&label=9",
                                      **headers)
    assert status == 403 and reason in answer["error"], answer
    assert own_files(page_server.own) == before
    added = page_server.log_lines()[lines:]
    assert len(added) == 1 and "refused POST /confirm" in added[0] and reason in added[0], added


def test_the_page_itself_may_write_without_origin_by_fetch_metadata(page_server, drawings):
    status, answer = page_server.post(png(drawn(drawings[2][1], SCALE, PEN)), "image/png", "confirm?digit=0&label=2",
                                      Sec_Fetch_Site="same-origin", Host=f"localhost:{page_server.port}")
    assert status == 200 and answer["label"] == "2"


PAGE_PORT = 8765  # no server listens: the requests go to the ASGI app in this process


def ask(app, method: str, path: str, headers: dict[str, str], body: bytes = b"") -> tuple[int, dict | str]:
    """One request through the page's ASGI app (FastAPI's routes, dependencies and handlers; no socket)."""
    path, _, query = path.partition("?")
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method, "scheme": "http",
             "path": path, "raw_path": path.encode(), "query_string": query.encode(), "root_path": "",
             "headers": [(name.lower().encode(), value.encode()) for name, value in headers.items()],
             "client": ("127.0.0.1", 50000), "server": ("127.0.0.1", PAGE_PORT)}
    sent = []

    async def receive():
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message):
        sent.append(message)

    asyncio.run(app(scope, receive, send))
    status = next(message["status"] for message in sent if message["type"] == "http.response.start")
    text = b"".join(message.get("body", b"") for message in sent if message["type"] == "http.response.body")
    return status, json.loads(text) if text.startswith(b"{") else text.decode()


def test_the_apps_checks_refuse_another_sites_writes_before_reading_anything(tmp_path):
    """The page's app in-process, without its model (a refused request never reaches it): the issue's cross-site
    POST (text/plain from another Origin), a foreign Origin, a rebound Host on every route; the page's own requests
    get past the checks (an upload declared over the limit is then answered 413, still without a model)."""
    own = tmp_path / "own"
    app = drawing_page.create_app(None, drawing_page.OwnDigits(own, tmp_path / "metrics.json", class_names("mnist"),
                                                               "mnist"))
    page = f"127.0.0.1:{PAGE_PORT}"
    too_long = {"Content-Length": str(10**9)}
    for headers in ({"Host": page, "Content-Type": "text/plain", "Origin": "http://evil.example"},
                    {"Host": page, "Content-Type": "text/plain", "Origin": f"http://{page}"},
                    {"Host": page, "Content-Type": "image/png", "Origin": "http://evil.example"},
                    {"Host": page, "Content-Type": "image/png", "Sec-Fetch-Site": "cross-site"},
                    {"Host": page, "Content-Type": "image/png"},
                    {"Host": f"evil.example:{PAGE_PORT}", "Content-Type": "image/png",
                     "Origin": f"http://evil.example:{PAGE_PORT}"}):
        status, answer = ask(app, "POST", "/confirm?digit=0&label=9", {**headers, **too_long})
        assert status == 403 and answer["error"].startswith("refused: "), (headers, status, answer)
    for method, path in (("GET", "/"), ("GET", "/own"), ("POST", "/predict")):
        assert ask(app, method, path, {"Host": f"evil.example:{PAGE_PORT}"})[0] == 403, path
        assert ask(app, method, path, {"Host": f"localhost:{PAGE_PORT}", **too_long})[0] in (200, 413), path
    for headers in ({"Origin": f"http://{page}"}, {"Sec-Fetch-Site": "same-origin"}):
        status, _ = ask(app, "POST", "/confirm?digit=0&label=9", {"Host": page, "Content-Type": "image/png",
                                                                   **headers, **too_long})
        assert status == 413, headers
    assert not own.exists()


@pytest.mark.parametrize("path", ["", "own", "predict"])
def test_every_route_refuses_a_foreign_host(page_server, drawings, path):
    """DNS rebinding: evil.example first answered with its own page, then with 127.0.0.1; its page reads ours."""
    lines = len(page_server.log_lines())
    data = png(drawn(drawings[0][1], SCALE, PEN)) if path == "predict" else None
    status, answer = page_server.post(data, path=path, Host=f"evil.example:{page_server.port}")
    assert status == 403 and "is not 127.0.0.1:" in answer["error"]
    added = page_server.log_lines()[lines:]
    assert len(added) == 1 and f"refused {'POST' if data else 'GET'} /{path}: " in added[0], added


def test_a_dropped_upload_is_one_line(page_server, drawings):
    """The browser tab closed while posting: the log says so in a line, no traceback; nothing is stored."""
    before, lines = own_files(page_server.own), len(page_server.log_lines())
    drawing = png(drawn(drawings[0][1], SCALE, PEN))
    host = f"127.0.0.1:{page_server.port}"
    with socket.create_connection(("127.0.0.1", page_server.port)) as connection:
        connection.sendall(f"POST /confirm?digit=0&label=4 HTTP/1.1\r\nHost: {host}\r\nOrigin: {page_server.origin}"
                           f"\r\nContent-Type: image/png\r\nContent-Length: {2 * len(drawing)}\r\n\r\n".encode()
                           + drawing)
    wait_until(lambda: len(page_server.log_lines()) > lines, 60, "the log line of a dropped upload")
    assert page_server.post(None, path="own")[0] == 200  # the server goes on
    added = page_server.log_lines()[lines:]
    assert len(added) == 1 and "went away" in added[0], added
    assert own_files(page_server.own) == before


# --- in the browser ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def browser():
    require(CHROMIUM, "Debian's chromium")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


def draw(page, strokes, scale: float = SCALE, offset: tuple[float, float] = (0, 0)) -> None:
    box = page.locator("#canvas").bounding_box()
    for stroke in strokes:
        points = [(box["x"] + offset[0] + x * scale, box["y"] + offset[1] + y * scale) for x, y in stroke]
        page.mouse.move(*points[0])
        page.mouse.down()
        for point in points[1:]:
            page.mouse.move(*point)
        page.mouse.up()


def test_drawing_in_the_browser(page_server, browser, drawings, tmp_path):
    page = browser.new_page(viewport={"width": 900, "height": 520})
    page.goto(page_server.url)
    for label, strokes in drawings[:3]:
        page.click("#clear")
        draw(page, strokes)
        # The answer follows the pen; the last one, after the pen is lifted, is the whole digit.
        page.wait_for_function(
            "expected => document.querySelector('#number').textContent === expected "
            "&& document.querySelectorAll('.digit').length === 1", arg=str(label), timeout=20_000)
        assert page.locator(".digit .row").count() == 3
        assert page.locator(".digit img").get_attribute("src").startswith("data:image/png;base64,")
    page.click("#clear")
    assert page.locator("#number").text_content() == ""
    # Two digits side by side must each be drawn small, while the page's pen keeps its width: some digits of the
    # session's small model are lost to the thick strokes even alone. Take two that are read alone at that size.
    small = [(label, strokes) for label, strokes in drawings[3:]
             if page_server.post(png(drawn(strokes, 4.5, PEN, size=140)))[1].get("number") == str(label)][:2]
    assert len(small) == 2, "the session's model reads fewer than two of the small drawings"
    labels = "".join(str(label) for label, _ in small)
    for index, (_, strokes) in enumerate(small):
        draw(page, strokes, scale=4.5, offset=(index * 140, 70))
    # Settled: the answer to the finished drawing, not one asked for while the second digit was half drawn.
    page.wait_for_function("() => !pending && !again && document.querySelectorAll('.digit').length === 2",
                           timeout=20_000)
    number = page.locator("#number").text_content()
    screenshot = tmp_path / "drawing-page.png"
    page.screenshot(path=str(screenshot))
    print(f"\nthe page read {number!r} for {labels!r}; screenshot {screenshot}")
    assert number == labels  # each digit read, left to right: not just two of them
    page.close()


def test_confirming_in_the_browser(page_server, browser, drawings, tmp_path):
    """Enter under a digit keeps it (a correction typed first is what is kept); the counts and the latest run's
    accuracy on your digits show beside the canvas."""
    from stages.reading import own

    page = browser.new_page(viewport={"width": 900, "height": 560})
    page.goto(page_server.url)
    page.wait_for_function("() => document.querySelector('#own table') !== null", timeout=20_000)
    assert "Latest run: 90.0% right on those held out" in page.locator("#own").text_content()
    counts = own.counts(page_server.own)
    label, strokes = drawings[1]
    draw(page, strokes)
    # The last answer, after the pen is lifted: no request on its way that would redraw the cards.
    page.wait_for_function("() => !pending && !again && document.querySelectorAll('.digit .confirm input').length "
                           "=== 1", timeout=20_000)
    box = page.locator(".digit .confirm input")
    box.fill("5")
    box.press("Enter")
    page.wait_for_function("() => document.querySelector('.confirm.saved') !== null", timeout=20_000)
    assert page.locator(".confirm").text_content().strip() == "kept as 5"
    counts[5] += 1
    assert own.counts(page_server.own) == counts
    cells = page.locator("#own table tr").nth(1).locator("td").all_text_contents()
    assert cells == [str(count) for count in counts]
    screenshot = tmp_path / "drawing-page-confirmed.png"
    page.screenshot(path=str(screenshot))
    print(f"\nconfirmed in the browser; screenshot {screenshot}")
    page.close()


def test_the_page_shows_the_error_of_a_blank_drawing(page_server, browser):
    page = browser.new_page()
    page.goto(page_server.url)
    # Ask as the pen would, on the empty canvas: the server's message shows where the answer would be.
    page.evaluate("() => { dirty = true; ask(); }")
    page.wait_for_function("() => document.querySelector('#status').className === 'error'", timeout=20_000)
    assert "blank image" in page.locator("#status").text_content()
    page.close()


# A ladder: two rails, five rungs, four holes (a page-wide grid would be taken for notebook rules and erased)
LADDER = [[(9, 3), (9, 25)], [(19, 3), (19, 25)]] + [[(9, y), (19, y)] for y in (3, 8, 13, 18, 25)]


def test_a_doubtful_answer_names_its_reason_and_leaves_the_box_empty(page_server, browser):
    """A ladder (more holes than any digit) reads "not sure ... (unlike a digit)"; the bars quote the probabilities
    the answer gives; the confirm box starts empty, so one Enter never stores it as a digit."""
    status, answer = page_server.post(png(drawn(LADDER, SCALE, PEN)))
    assert status == 200 and answer["digits"][0]["reason"] == "unlike a digit", answer
    page = browser.new_page(viewport={"width": 900, "height": 520})
    page.goto(page_server.url)
    draw(page, LADDER)
    page.wait_for_function("() => !pending && !again && document.querySelectorAll('.digit .confirm input').length "
                           "=== 1", timeout=20_000)
    doubt = page.locator(".digit .not-sure").text_content()
    assert doubt.startswith("not sure: ") and doubt.endswith("(unlike a digit)"), doubt
    assert page.locator(".digit .confirm input").input_value() == ""
    assert "answered in" in page.locator("#status").text_content() and "keras" in page.locator("#status").text_content()
    page.close()
