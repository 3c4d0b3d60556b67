"""One model, one answer: the same trained weights read through every door (the .keras file with run.json's
temperature, the exported .onnx and .tflite, the registered tensor and ONNX champions, the logged image model)
give the same class, calibrated confidence and "not sure"; a folder reads into a CSV; a file that cannot be read
fails before any model loads.

The pipeline here is the real one (train, evaluate, export in-process, MLflow on a SQLite store), once per module.
"""

from __future__ import annotations

import base64
import csv
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers.net import wait_until
from helpers.params import shrunk_params, write_params
from helpers.project import ROOT, project_env
from PIL import Image, ImageDraw

from stages import predict
from stages.core.formats import FORMATS
from stages.core.records import export_file, read_run
from stages.reading.folders import CSV_COLUMNS
from stages.reading.opening import open_reader
from stages.reading.reader import LOW_CONFIDENCE, UNLIKE_A_DIGIT, prepare_files

DIGITS, SCRIBBLES = 40, 6
CONFIDENCE_TOLERANCE = 0.002


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory, raw_params, mnist_10k, processed_dir):
    """train (2 epochs: a temperature well away from 1), evaluate, export and register, tracking on; the folder is the
    working directory (params.yaml in it) while the module runs. Returns the params."""
    from stages import evaluate, export, register, train

    base = tmp_path_factory.mktemp("reader")
    params = shrunk_params(raw_params, base, mnist_10k, tracking__enabled=True, paths__processed=str(processed_dir),
                           tracking__uri=f"sqlite:///{base / 'mlflow.db'}", model__architecture="lenet",
                           train__epochs=2, train__precision="float32")  # bf16 arithmetic differs by ~0.004
    write_params(base, params)
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(base)
        patch.delenv("MLFLOW_TRACKING_URI", raising=False)
        patch.setenv("DVC_ROOT", str(base))
        train.run(params)
        evaluate.run(params)
        export.run(params)
        register.run(params)
        yield params


def scribbles(count: int) -> list[Image.Image]:
    """Random strokes on white: no digit."""
    rng = np.random.default_rng(7)
    drawn = []
    for _ in range(count):
        image = Image.new("L", (200, 200), 255)
        ImageDraw.Draw(image).line([tuple(point) for point in rng.integers(20, 180, (12, 2))], fill=0, width=8)
        drawn.append(image)
    return drawn


@pytest.fixture(scope="module")
def images(pipeline, test_digits, tmp_path_factory) -> list[str]:
    """40 held-out digits (dark on white, as written) and 6 scribbles, as PNG files."""
    folder = tmp_path_factory.mktemp("doors")
    files = []
    for index, digit in enumerate(test_digits[-DIGITS:]):
        Image.fromarray(255 - digit).save(folder / f"digit{index:02d}.png")
        files.append(str(folder / f"digit{index:02d}.png"))
    for index, image in enumerate(scribbles(SCRIBBLES)):
        image.save(folder / f"scribble{index}.png")
        files.append(str(folder / f"scribble{index}.png"))
    return files


def read_through(source: str, params, files: list[str]) -> list[tuple[int, float, str | None]]:
    reader = open_reader(source, params.data.dataset, params)
    prepared, failed = prepare_files(files, params.data.dataset)
    assert not failed
    return [(answer.predicted, answer.confidence, answer.reason) for answer in reader.answers(prepared)], reader


def through_the_image_model(params, files: list[str]) -> list[tuple[int, float, str | None]]:
    import mlflow
    import pandas as pd

    from stages.core.records import read_dataset_info
    from stages.core.tracking.versions import registered_name

    name = registered_name(params, read_dataset_info(params.paths)["dataset"], "images")
    encoded = [base64.b64encode(Path(file).read_bytes()).decode("ascii") for file in files]
    rows = mlflow.pyfunc.load_model(f"models:/{name}@champion").predict(pd.DataFrame({"image": encoded}))
    assert list(rows.columns) == ["predicted", "label", "confidence", "not_sure", "probabilities", "error"]
    return [(int(row.predicted), float(row.confidence), row.not_sure or None) for row in rows.itertuples()]


def test_every_door_gives_the_same_answer(pipeline, images):
    from stages.core.records import read_dataset_info
    from stages.core.tracking.versions import registered_name

    params = pipeline
    temperature = read_run(params.paths).temperature
    dataset = read_dataset_info(params.paths)["dataset"]
    doors = {"keras": params.paths.model,
             **{format: str(export_file(params.paths, FORMATS[format].file)) for format in params.export.formats},
             "registered tensor": f"models:/{registered_name(params, dataset)}@champion",
             "registered onnx": f"models:/{registered_name(params, dataset, 'onnx')}@champion"}
    answers, lines = {}, {}
    for door, source in doors.items():
        answers[door], reader = read_through(source, params, images)
        lines[door] = reader.description
    answers["image model"] = through_the_image_model(params, images)
    print(f"\nT {temperature:.3f}", *(f"{door}: {line}" for door, line in lines.items()), sep="\n")
    assert abs(temperature - 1) > 0.05, "the test needs a temperature that changes the confidences"
    assert all("calibrated, T" in line for line in lines.values()), lines
    reference = answers["keras"]
    for door, found in answers.items():
        for file, (expected, got) in zip(images, zip(reference, found, strict=True), strict=True):
            assert got[0] == expected[0], f"{door}: {file} read as {got[0]}, the .keras file reads {expected[0]}"
            assert abs(got[1] - expected[1]) <= CONFIDENCE_TOLERANCE, f"{door}: {file}: {got[1]} vs {expected[1]}"
            assert got[2] == expected[2], f"{door}: {file}: not sure {got[2]!r} vs {expected[2]!r}"
    # most scribbles are doubted, for a reason the answer names: the doors agree on "not sure", not only on sure
    reasons = [reason for _, _, reason in reference[DIGITS:]]
    assert sum(reason in (LOW_CONFIDENCE, UNLIKE_A_DIGIT) for reason in reasons) >= SCRIBBLES // 2, reasons


def test_an_exported_file_alone_answers_calibrated(pipeline, images, tmp_path, monkeypatch):
    """Moved to a folder without params.yaml, run.json or export.json, the ONNX file still names its temperature
    and gives the calibrated answer."""
    import shutil

    onnx = export_file(pipeline.paths, FORMATS["onnx"].file)
    reference, _ = read_through(str(onnx), pipeline, images[:5])
    shutil.copy(onnx, tmp_path / "alone.onnx")
    monkeypatch.chdir(tmp_path)
    reader = open_reader(tmp_path / "alone.onnx", pipeline.data.dataset)
    prepared, _ = prepare_files(images[:5], pipeline.data.dataset)
    assert "calibrated, T" in reader.description
    assert [(a.predicted, a.confidence, a.reason) for a in reader.answers(prepared)] == reference


def test_a_model_without_calibration_says_so(model_path, images, tmp_path):
    reader = open_reader(model_path, "mnist")
    assert reader.description.endswith("uncalibrated")


# --- a folder ---------------------------------------------------------------------------------------------------

FOLDER_IMAGES = 200


@pytest.fixture(scope="module")
def folder(tmp_path_factory, test_digits) -> Path:
    """197 digits in nested folders (one named to pause on), a corrupt PNG, a FIFO named .png, a hidden file and a
    macOS `._` file; a symlink looping back to the top."""
    top = tmp_path_factory.mktemp("folder")
    for index, digit in enumerate(test_digits[:FOLDER_IMAGES - 3]):
        place = top / f"part{index // 100}"
        place.mkdir(exist_ok=True)
        name = f"{index:03d}-pause.png" if index == 120 else f"{index:03d}.png"
        Image.fromarray(255 - digit).save(place / name)
    (top / "part1" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    os.mkfifo(top / "part1" / "pipe.png")
    Image.fromarray(255 - test_digits[0]).save(top / ".hidden.png")
    (top / "part0" / "._000.png").write_bytes(b"\x00\x05\x16\x07 AppleDouble")
    (top / "part0" / "loop").symlink_to(top, target_is_directory=True)
    (top / "notes.txt").write_text("not an image")
    return top


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as handle:
        rows = list(csv.reader(handle))
    assert rows[0] == CSV_COLUMNS
    assert all(len(row) == len(CSV_COLUMNS) for row in rows), "a row was cut short"
    return [dict(zip(CSV_COLUMNS, row, strict=True)) for row in rows[1:]]


def test_a_folder_reads_into_a_csv(pipeline, folder, test_labels, tmp_path, capsys):
    onnx = export_file(pipeline.paths, FORMATS["onnx"].file)
    answers = tmp_path / "answers.csv"
    code = predict.main([str(folder), "--csv", str(answers), "--model", str(onnx)])
    rows = read_csv(answers)
    errors = {Path(row["file"]).name: row["error"] for row in rows if row["error"]}
    assert code == predict.EXIT_BAD_IMAGE
    assert len(rows) == FOLDER_IMAGES - 3 + 2, "one row per image and per unreadable file"
    assert set(errors) == {"broken.png", "pipe.png"} and "FIFO" in errors["pipe.png"]
    assert not any(".hidden" in row["file"] or "._" in row["file"] or "loop" in row["file"] for row in rows)
    summary = capsys.readouterr().err.strip().splitlines()[-1]
    not_sure = sum(bool(row["not_sure"]) for row in rows)
    assert summary == f"read {FOLDER_IMAGES - 3}, not sure {not_sure}, unreadable 2; answers in {answers}"
    read = [row for row in rows if not row["error"]]
    right = [row["class"] == str(test_labels[int(Path(row["file"]).name[:3])]) for row in read]
    assert np.mean(right) >= 0.7, "the rows name the right files' classes"


def test_label_with_a_folder_is_refused(folder, capsys):
    assert predict.main([str(folder), "--label", "3", "--dataset", "mnist", "--model", "x.onnx"]) == 1
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and "--label" in error and "not a folder" in error


@pytest.mark.parametrize("signal_number", [signal.SIGINT, signal.SIGTERM])
def test_an_interrupted_folder_leaves_a_valid_shorter_csv(pipeline, folder, tmp_path, signal_number):
    onnx = export_file(pipeline.paths, FORMATS["onnx"].file)
    marker, answers = tmp_path / "paused", tmp_path / "answers.csv"
    env = project_env([ROOT / "tests" / "fault_hook", ROOT], STAGES_TEST_PAUSE="stages.predict:-pause.png:1",
                      STAGES_TEST_PAUSE_MARKER=str(marker))
    process = subprocess.Popen([sys.executable, "-m", "stages.predict", str(folder), "--csv", str(answers),
                                "--model", str(onnx), "--dataset", "mnist"], cwd=tmp_path, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_until(marker.exists, 300, "predict to reach the 121st image", process)
    process.send_signal(signal_number)
    _, stderr = process.communicate(timeout=120)
    rows = read_csv(answers)
    assert process.returncode == predict.EXIT_INTERRUPTED, stderr
    assert 0 < len(rows) < FOLDER_IMAGES - 3, stderr
    assert "interrupted" in stderr


# --- fail fast ----------------------------------------------------------------------------------------------------

CHECK_IMPORTS = """
import runpy, sys
sys.argv = ["predict", *sys.argv[1:]]
try:
    runpy.run_module("stages.predict", run_name="__main__", alter_sys=True)
except SystemExit as exit:
    heavy = sorted(name for name in ("tensorflow", "keras", "onnxruntime", "ai_edge_litert") if name in sys.modules)
    print("exit", exit.code, "imported:", ",".join(heavy) or "none", file=sys.stderr)
"""


def test_a_file_that_is_no_image_fails_before_any_model_loads(model_path, tmp_path):
    for model in (str(model_path), str(tmp_path / "model.onnx")):
        result = subprocess.run([sys.executable, "-c", CHECK_IMPORTS, str(ROOT / "README.md"), "--model", model,
                                 "--dataset", "mnist"], capture_output=True, text=True, cwd=tmp_path,
                                env=project_env([ROOT]), timeout=300)
        error, verdict = result.stderr.strip().splitlines()
        assert verdict == "exit 1 imported: none", result.stderr
        assert error.startswith(f"error: {ROOT / 'README.md'}: not an image")


# --- the drawing page follows its model ---------------------------------------------------------------------------

@pytest.fixture
def following_page_server(model_path, tmp_path):
    """The drawing page serving a copy of the session's model at tmp_path/model.keras."""
    import shutil

    from helpers.net import answers, free_port

    shutil.copy(model_path, tmp_path / "model.keras")
    port, log = free_port(), tmp_path / "server.log"
    with open(log, "w") as output:
        process = subprocess.Popen([sys.executable, "-m", "stages.predict", "--serve", "--model", "model.keras",
                                    "--dataset", "mnist", "--port", str(port)], cwd=tmp_path, stdout=output,
                                   stderr=subprocess.STDOUT, env=project_env([ROOT]))
    url = f"http://127.0.0.1:{port}/"
    try:
        wait_until(lambda: answers(url), 180, "the drawing page", process, log)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=30)


def page_answer(url: str, data: bytes) -> dict:
    import json
    import urllib.request

    request = urllib.request.Request(url + "predict", data=data, headers={"Content-Type": "image/png"})
    with urllib.request.urlopen(request, timeout=120) as response:
        return json.loads(response.read())


def test_the_drawing_page_answers_with_the_model_swapped_under_it(pipeline, following_page_server, model_path,
                                                                  images, tmp_path):
    """The page's model file replaced (as `dvc repro` replaces it): the next drawing is read by the new model,
    without a restart."""
    import shutil

    data = Path(images[0]).read_bytes()
    prepared, _ = prepare_files([images[0]], "mnist", number=True)
    expected = {}
    for name, source in (("old", model_path), ("new", pipeline.paths.model)):
        [answer] = open_reader(source, "mnist").number_answers(prepared)
        expected[name] = answer.digits[0].top(3)
    assert expected["old"] != expected["new"], "the two models must answer differently"

    before = page_answer(following_page_server, data)
    shutil.copy(pipeline.paths.model, tmp_path / "incoming.keras")
    os.replace(tmp_path / "incoming.keras", tmp_path / "model.keras")
    after = page_answer(following_page_server, data)
    for name, answer in (("old", before), ("new", after)):
        top = [(entry["label"], round(entry["probability"], 4)) for entry in answer["digits"][0]["top"]]
        assert top == [(entry["label"], round(entry["probability"], 4)) for entry in expected[name]], name
        assert answer["model"].startswith("model.keras (lenet, keras)")


def test_mlflow_serves_the_onnx_model_calibrated(pipeline, images, model_server):
    """`mlflow models serve` of the registered ONNX champion, MLflow's own code: the probabilities the reader
    gives through the .keras file and run.json's temperature."""
    import json
    import urllib.request

    from stages.core.records import read_dataset_info
    from stages.core.tracking.versions import registered_name

    params = pipeline
    name = registered_name(params, read_dataset_info(params.paths)["dataset"], "onnx")
    url = model_server(f"models:/{name}@champion", params.tracking.uri)
    prepared, _ = prepare_files(images, params.data.dataset)
    arrays = [array for _, array in prepared]
    body = json.dumps({"inputs": {"image": np.stack(arrays).astype(np.float32).tolist()}}).encode()
    request = urllib.request.Request(f"{url}/invocations", data=body, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=120) as response:
        served = json.loads(response.read())["predictions"]
    served = np.asarray(served["probabilities"] if isinstance(served, dict) else served)
    expected = open_reader(params.paths.model, params.data.dataset, params).probabilities(arrays)
    np.testing.assert_allclose(served, expected, atol=CONFIDENCE_TOLERANCE)
