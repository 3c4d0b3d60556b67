"""Your own digits (stages/reading/own.py): labels, storing, the layout check, the stable held-out choice; then the
collect stage on a project folder."""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from helpers.card import check_card
from helpers.net import answers, free_port, wait_until
from helpers.params import TINY
from PIL import Image

from stages import collect
from stages.core.errors import PipelineError
from stages.reading import own


def a_digit(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).random((28, 28, 1))


def test_labels_are_the_dataset_classes():
    assert own.parse_label("7", "mnist") == 7
    assert own.parse_label("Sneaker", "fashion_mnist") == 7 == own.parse_label("7", "fashion_mnist")
    assert own.parse_number_label("407", "mnist") == [4, 0, 7]
    for text, dataset in (("10", "mnist"), ("x", "mnist"), ("-1", "mnist"), ("sneaker", "fashion_mnist")):
        with pytest.raises(own.LabelError, match=f"label '{text}' is not a class of {dataset}.*nothing was stored"):
            own.parse_label(text, dataset)
    with pytest.raises(own.LabelError, match="'4a' is not a number"):
        own.parse_number_label("4a", "mnist")
    with pytest.raises(own.LabelError, match="needs a dataset of digits"):
        own.parse_number_label("12", "fashion_mnist")


# '²' is a digit to str.isdigit() and not to int(); thousands of nines are digits int() refuses to read.
ODD_LABELS = {"superscript-two": "²", "arabic-indic-four": "٤", "full-width-seven": "７", "5000-nines": "9" * 5000}


@pytest.mark.parametrize("text", ODD_LABELS.values(), ids=ODD_LABELS.keys())
def test_a_label_is_ascii_digits_or_a_class_name_else_one_line(text):
    for parse, message in ((own.parse_label, "is not a class of mnist: give one of 0, 1, 2, 3, 4, 5, 6, 7, 8, 9; "),
                           (own.parse_number_label, "is not a number of at most 100 digits")):
        with pytest.raises(own.LabelError, match=message) as refused:
            parse(text, "mnist")
        assert "\n" not in str(refused.value) and len(str(refused.value)) < 200


def test_own_not_a_folder_is_one_line(make_params):
    params = make_params()
    folder = Path(params.paths.own)
    folder.parent.mkdir(parents=True, exist_ok=True)
    folder.write_text("not a folder")
    for action, message in (
            (lambda: own.store(folder, a_digit(0), 4, Image.new("L", (28, 28))), "own is not a folder: "),
            (lambda: collect.run(params), "own is not a folder: "),
            (lambda: own.ensure_folder(folder / "deeper"), "cannot keep your digits in .*own/deeper: ")):
        with pytest.raises(PipelineError, match=message) as refused:
            action()
        assert "\n" not in str(refused.value)
    assert folder.read_text() == "not a folder"


def test_store_writes_the_28x28_image_and_the_crop_named_by_image_and_label(tmp_path):
    folder = tmp_path / "own"
    original = Image.new("RGB", (800, 600), "white")
    digit = a_digit(0)
    first = own.store(folder, digit, 4, original, box=(100, 100, 50, 80))
    assert first.new and first.path.parent == folder / "4" and first.path.stem == own.digit_hash(own.as_bytes(digit), 4)
    with Image.open(first.path) as image:
        assert image.size == (28, 28) and image.mode == "L"
        np.testing.assert_array_equal(np.asarray(image), own.as_bytes(digit))
    crop = first.path.with_name(first.path.stem + own.CROP_SUFFIX)
    with Image.open(crop) as image:
        assert image.size == (66, 96)  # the box and a margin of a tenth of its longest side (8) each side
    assert (folder / own.README).is_file()

    again = own.store(folder, digit, 4, original)
    assert not again.new and again.path == first.path  # the same digit confirmed twice is one digit
    other = own.store(folder, digit, 9, original)  # the same image as another class is another digit
    assert other.new and other.path.stem != first.path.stem
    assert own.counts(folder) == [0, 0, 0, 0, 1, 0, 0, 0, 0, 1]
    images, labels, names = own.load_digits(folder)
    assert images.shape == (2, 28, 28) and labels.tolist() == [4, 9] and names == [first.path.stem, other.path.stem]
    assert sorted(path.name for path in folder.rglob("*")) == sorted(
        ["4", "9", own.README, first.path.name, crop.name, other.path.name, other.path.stem + own.CROP_SUFFIX])


def test_a_whole_photo_crop_is_shrunk(tmp_path):
    stored = own.store(tmp_path, a_digit(1), 3, Image.new("L", (3000, 1500), 255))
    with Image.open(stored.path.with_name(stored.path.stem + own.CROP_SUFFIX)) as crop:
        assert crop.size == (own.CROP_SIZE, own.CROP_SIZE // 2)


def test_held_out_is_a_stable_share_of_the_hashes():
    names = [own.digit_hash(own.as_bytes(a_digit(seed)), seed % 10) for seed in range(2000)]
    chosen = [name for name in names if own.held_out(name, 0.3)]
    assert 0.26 < len(chosen) / len(names) < 0.34
    assert set(chosen) == {name for name in names[:1000] if own.held_out(name, 0.3)} | {
        name for name in names[1000:] if own.held_out(name, 0.3)}
    assert not any(own.held_out(name, 0.0) for name in names)


def test_the_layout_check_names_a_stray_file(tmp_path):
    folder = own.ensure_folder(tmp_path / "own")
    own.check_layout(folder)
    (folder / "7").mkdir()
    (folder / "7" / "my seven.png").write_bytes(b"")
    with pytest.raises(PipelineError, match="my seven.png: not a stored digit"):
        own.check_layout(folder)
    (folder / "7" / "my seven.png").unlink()
    (folder / "sevens").mkdir()
    with pytest.raises(PipelineError, match="sevens: the own-digits folder holds only"):
        own.check_layout(folder)
    (folder / "sevens").rmdir()
    Image.new("L", (20, 20)).save(folder / "7" / f"{'a' * own.HASH_LENGTH}.png")
    with pytest.raises(PipelineError, match="is 20x20, not 28x28"):
        own.load_digits(folder)


def test_collect_creates_the_folder_and_counts(make_params, capsys):
    params = make_params()
    assert collect.run(params) == [0] * 10
    assert (own.ensure_folder(params.paths.own) / own.README).is_file()
    own.store(params.paths.own, a_digit(2), 1, Image.new("L", (28, 28)))
    assert collect.run(params)[1] == 1
    assert "collect: 1 own digits" in capsys.readouterr().out


def test_collect_skips_hidden_files(make_params, capsys):
    """macOS's `._x.png` and a temp an older version left among the digits are no digits (they were "unreadable")."""
    params = make_params()
    own.store(params.paths.own, a_digit(3), 4, Image.new("L", (28, 28)))
    (Path(params.paths.own) / "4" / "._x.png").write_bytes(b"\0\5\26\7 AppleDouble")
    (Path(params.paths.own) / "4" / ".0123456789abcdef.tmp-k2j4.png").write_bytes(b"")
    (Path(params.paths.own) / "._README.md").write_bytes(b"\0\5\26\7")
    assert collect.run(params)[4] == 1
    assert "collect: 1 own digits" in capsys.readouterr().out


def aged(path: Path) -> Path:
    """`path`, last written two minutes ago (STALE_SECONDS is one)."""
    then = time.time() - 2 * own.STALE_SECONDS
    os.utime(path, (then, then))
    return path


def test_stale_temps_are_removed_by_the_next_store_or_collect(make_params):
    params = make_params()
    folder = own.ensure_folder(params.paths.own)
    incoming = own.incoming(folder)
    assert incoming.parent == folder.resolve().parent and incoming.is_dir()  # beside the folder, outside DVC's output
    (folder / "4").mkdir()
    # A killed store's temp, and one an older version left among the digits; another store's, in progress.
    stale = [incoming / "0123456789abcdef.1f2e.png", folder / "4" / ".0123456789abcdef.tmp-k2j4.png"]
    fresh = incoming / "fedcba9876543210.3c4d.png"
    for path in [*stale, fresh]:
        path.write_bytes(b"")
    for path in stale:
        aged(path)
    own.store(folder, a_digit(4), 4, Image.new("L", (28, 28)))
    assert not any(path.exists() for path in stale) and fresh.exists()
    aged(fresh)
    collect.run(params)
    assert not fresh.exists()
    assert [path.name for path in folder.rglob(".*")] == []


# --- a store killed at any moment (SIGKILL, at points the fault hook pauses it) -------------------------------------

HOOK = Path(__file__).with_name("fault_hook")
WAIT_S = 300


def killed_storing(project: Path, image: Path, model: Path, count: int) -> Path:
    """`predict --label 4 IMAGE` in the project, SIGKILLed at its count-th open or rename in the incoming folder
    (1: the crop's temp opened, 2: written, 3: the 28x28 image's temp opened, 4: written); the path it paused at."""
    from helpers.project import project_env, project_paths

    marker, log = project.parent / "paused-at", project.parent / "store.log"
    marker.unlink(missing_ok=True)
    incoming = own.incoming(project_paths(project).own).name
    env = project_env([project, HOOK], STAGES_TEST_PAUSE=f"stages.predict:{incoming}/:{count}",
                      STAGES_TEST_PAUSE_MARKER=str(marker), STAGES_TEST_PAUSE_EVENTS="open,os.rename")
    command = ["python", "-m", "stages.predict", str(image), "--label", "4", "--model", str(model)]
    with open(log, "w") as output:
        process = subprocess.Popen(command, cwd=project, env=env, stdout=output, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + WAIT_S
    try:
        while not marker.exists():
            assert process.poll() is None, f"ended ({process.returncode}) before the pause:\n{log.read_text()}"
            assert time.monotonic() < deadline, f"no pause within {WAIT_S} s:\n{log.read_text()}"
            time.sleep(0.05)
        pid, path = marker.read_text().splitlines()
        assert int(pid) == process.pid
        os.kill(process.pid, signal.SIGKILL)
        assert process.wait(timeout=WAIT_S) == -signal.SIGKILL
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    return Path(path)


@pytest.mark.slow
def test_a_store_killed_at_any_point_never_blocks_the_pipeline(tmp_path, model_path, test_digits):
    """Each kill leaves what it leaves; `dvc repro` right after succeeds, and the next store stores the digit."""
    from helpers.project import copy_project, project_paths, sh

    project = copy_project(tmp_path / "project", {})
    paths = project_paths(project)
    image = tmp_path / "four.png"
    Image.fromarray(255 - test_digits[0]).save(image)
    sh(project, "dvc", "repro", "collect")
    incoming = own.incoming(paths.own)
    for count, left in ((2, "the crop's temp, written"), (3, "the crop in place, no 28x28 temp yet"),
                        (4, "the 28x28 image's temp, written")):
        paused = killed_storing(project, image, model_path, count)
        assert paused.parent == incoming and paused.exists() == (count != 3), left
        crops = list((paths.own / "4").glob(f"*{own.CROP_SUFFIX}"))
        assert len(crops) == (count > 2), left
        sh(project, "dvc", "repro", "collect")  # what the person runs next; once it failed on the temp, every time
        assert "collect: 0 own digits" in sh(project, "python", "-m", "stages.collect").stdout, left
    for path in incoming.iterdir():  # what kills 2 and 4 left, unless a store or collect since found it stale
        aged(path)
    assert "stored 1 digit(s)" in sh(project, "python", "-m", "stages.predict", str(image), "--label", "4", "--model",
                                     str(model_path)).stdout
    assert list(incoming.iterdir()) == [] and own.counts(paths.own)[4] == 1
    assert "collect: 1 own digits" in sh(project, "dvc", "repro", "collect").stdout
    assert json.loads(sh(project, "dvc", "status", "collect", "--json").stdout) == {}


# --- end to end: one person teaches the pipeline their handwriting ---------------------------------------------------

# The smallest honest setup: the 8,000 training digits of the shipped sample, LeNet, 3 epochs. Its held-out accuracy
# moves by up to about a point from one training to the next (a different shuffle), so that is what is checked here;
# docs/own-digits.md's table holds this setup's numbers, measured by hand (train.own_weight 3: within 0.05 points).
# Augmentation off: with it on (the default since train.augment), 3 epochs learn the long-flag 1 but not the slashed
# 0, whatever train.own_weight (3 or 10): measured, see docs/own-digits.md.
MNIST_TOLERANCE = 0.01
# MLflow on (the project's own mlflow.db): the champion rule, with its tolerance at MNIST_TOLERANCE (in points).
PERSON = {**TINY, "model.architecture": "lenet", "train.epochs": 3, "preprocess.limit": None, "data.own": True,
          "tracking.enabled": True, "champion.tolerance": MNIST_TOLERANCE * 100, "train.augment.enabled": False}
SHEETS = 20  # calibration sheets, each 0-9 in a row: 20 digits per class


def read_json(path: Path) -> dict:
    return json.loads(path.read_text())


class Page:
    def __init__(self, url: str, process: subprocess.Popen, log: Path):
        self.url, self.process, self.log = url, process, log


def serving_the_champion(project: Path, log: Path) -> Page:
    """`python -m stages.predict --serve --model champion` in `project`, up and answering."""
    from helpers.project import project_env

    port = free_port()
    with open(log, "w") as output:
        process = subprocess.Popen([sys.executable, "-m", "stages.predict", "--serve", "--model", "champion", "--port",
                                    str(port)], cwd=project, stdout=output, stderr=subprocess.STDOUT,
                                   env=project_env([project]))
    page = Page(f"http://127.0.0.1:{port}/", process, log)
    try:
        wait_until(lambda: answers(page.url), 240, "the drawing page", process, log)
    except BaseException:
        process.terminate()
        raise
    return page


def page_answer(url: str, data: bytes) -> dict:
    """The page's JSON answer to one drawing (the last one kept, to print)."""
    import urllib.request

    request = urllib.request.Request(url + "predict", data=data, headers={"Content-Type": "image/png"})
    with urllib.request.urlopen(request, timeout=120) as response:
        page_answer.last = json.loads(response.read())
    return page_answer.last


def ran(output: str) -> set[str]:
    return set(re.findall(r"Running stage '([^']+)'", output))


def own_test_accuracy_per_class(model_path: Path, own_test: Path) -> np.ndarray:
    from stages.core.architectures import load_model

    with np.load(own_test) as arrays:
        images, labels = arrays["x"], arrays["labels"]
    predicted = load_model(model_path, 10, "").predict(images, verbose=0).argmax(axis=1)
    return np.array([np.mean(predicted[labels == label] == label) for label in range(10)])


def test_a_person_teaches_the_pipeline_their_handwriting(project_copy, tmp_path, mnist_10k):
    from helpers.handwriting import QUIRKY, person_drawing, person_sheet
    from helpers.project import project_paths, sh

    origin, storage, a = tmp_path / "origin.git", tmp_path / "storage", tmp_path / "a"
    subprocess.run(["git", "init", "-q", "--bare", str(origin)], check=True)
    a.mkdir()
    project_copy(a, {**PERSON, "data.source": str(mnist_10k)})
    sh(a, "dvc", "remote", "add", "-d", "storage", str(storage))
    sh(a, "git", "remote", "add", "origin", str(origin))
    sh(a, "git", "commit", "-qam", "DVC remote: a shared folder")
    paths = project_paths(a)

    # Before: the folder exists (its README, versioned), the model knows MNIST only.
    first = sh(a, "dvc", "repro").stdout
    assert {"collect", "preprocess", "train", "evaluate"} <= ran(first)
    assert sorted(path.name for path in paths.own.iterdir()) == [own.README]
    before = read_json(paths.metrics)
    assert read_json(paths.processed / "dataset.json")["splits"]["own_test"]["images"] == 0
    assert "own_test_accuracy" not in before
    shutil.copy(paths.model, tmp_path / "before.keras")

    # The drawing page serves the champion (the model just trained) while the person teaches it.
    name = "mnist_10k-cnn"
    first_version = read_json(paths.registered)["versions"][name]
    page = serving_the_champion(a, tmp_path / "page.log")
    drawing = io.BytesIO()
    person_drawing(0, np.random.default_rng(1)).save(drawing, format="PNG")
    answer = page_answer(page.url, drawing.getvalue())
    assert f"= {name} version {first_version} " in answer["model"], answer["model"]

    # The person fills calibration sheets and confirms what they wrote, from files.
    rng = np.random.default_rng(0)
    sheets = []
    for index in range(SHEETS):
        sheets.append(tmp_path / "sheets" / f"sheet-{index:02d}.png")
        sheets[-1].parent.mkdir(exist_ok=True)
        person_sheet(rng).save(sheets[-1])
    confirmed = sh(a, "python", "-m", "stages.predict", "--number", "--label", "0123456789", *map(str, sheets))
    assert f"stored {10 * SHEETS} digit(s) as your own in data/own" in confirmed.stdout
    assert own.counts(paths.own) == [SHEETS] * 10

    # DVC sees the new digits, and reruns what depends on them, nothing upstream.
    status = json.loads(sh(a, "dvc", "status", "--json").stdout)
    assert set(status) == {"collect", "preprocess"}, status
    second = sh(a, "dvc", "repro").stdout
    upstream = {"params", "source", "download"}
    everything = set(yaml.safe_load((a / "dvc.yaml").read_text())["stages"])
    assert ran(second) == everything - upstream, second

    after = read_json(paths.metrics)
    held_out = [path for path, _ in own.digit_files(paths.own) if own.held_out(path.stem, 0.3)]
    held_out_images = read_json(paths.processed / "dataset.json")["splits"]["own_test"]["images"]
    assert held_out_images == len(held_out) > 0 and "own_test_accuracy" in after
    old = own_test_accuracy_per_class(tmp_path / "before.keras", paths.processed / "own_test.npz")
    new = own_test_accuracy_per_class(paths.model, paths.processed / "own_test.npz")
    table = "\n".join(f"  {label}: {old[label]:.0%} -> {new[label]:.0%}" for label in range(10))
    print(f"\nown_test accuracy per class, before -> after ({held_out_images} digits held out):\n{table}\n"
          f"MNIST held-out: {before['test_accuracy']:.4f} -> {after['test_accuracy']:.4f}")
    for label in QUIRKY:
        assert old[label] <= 0.8 and new[label] >= old[label] + 0.15, table
    assert abs(after["test_accuracy"] - before["test_accuracy"]) <= MNIST_TOLERANCE

    # The rule gave the taught model the alias and said why; the page answers with it, not restarted.
    taught = read_json(paths.registered)["versions"][name]
    [line] = [line for line in second.splitlines() if line.startswith("champion")]
    print(line)
    assert line.startswith(f"champion: {name} v{taught} (was v{first_version}): own_test "), line
    try:
        wait_until(lambda: f"= {name} version {taught} " in page_answer(page.url, drawing.getvalue())["model"], 300,
                   "the page answering with the taught champion", page.process, page.log)
    finally:
        page.process.terminate()
        page.process.wait(timeout=30)
    print(page_answer.last)
    check_card(paths.model_card.read_text(), paths)  # its own_test section too
    shown = sh(a, "dvc", "metrics", "show", "--json").stdout + sh(a, "dvc", "exp", "show", "--json").stdout
    assert shown.count("own_test_accuracy") >= 2

    # Shared: the digits and the results travel with git and the DVC remote; a clone pulls them, trains nothing.
    sh(a, "git", "add", "dvc.lock")
    sh(a, "git", "commit", "-qm", "My handwriting, versioned")
    sh(a, "dvc", "push")
    sh(a, "git", "push", "-q", "origin", "HEAD:main")
    b = tmp_path / "b"
    sh(tmp_path, "git", "clone", "-q", "--branch", "main", str(origin), str(b))
    sh(b, "dvc", "pull")
    assert json.loads(sh(b, "dvc", "status", "--json").stdout) == {}
    assert "Running stage" not in sh(b, "dvc", "repro").stdout
    pulled = project_paths(b)
    assert read_json(pulled.metrics) == after
    assert {path.relative_to(paths.own): path.read_bytes() for path in paths.own.rglob("*") if path.is_file()} == {
        path.relative_to(pulled.own): path.read_bytes() for path in pulled.own.rglob("*") if path.is_file()}
