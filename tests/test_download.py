"""The download stage against a real HTTP server on 127.0.0.1 serving small generated IDX files, and local sources.

Each route of the server behaves one way (`/good/`, `/missing/` 404, `/truncated/`, `/other/` valid files with
the wrong checksum, ...), so a test lists the mirrors it wants in a DatasetSpec of its own, with checksums of the
generated files, instead of patching the registry.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from helpers.net import LocalServer, QuietHandler, free_port
from helpers.params import write_params
from helpers.project import ROOT

from stages import download as download_stage
from stages import source as source_stage
from stages.core.datasets import DATASETS, FILE_NAMES, TEST_LABELS, TRAIN_IMAGES, TRAIN_LABELS, DatasetSpec, sample_of
from stages.core.errors import PipelineError
from stages.core.idx import encode_idx, read_idx
from stages.download import DownloadError, download, resolve_origins

SLOW_ANSWER_S = 1.0


def make_files(seed: int, train: int = 20, test: int = 10) -> dict[str, bytes]:
    """The four canonical .gz files of a tiny random dataset (labels cycle through 0-9, starting at `seed`)."""
    rng = np.random.default_rng(seed)
    arrays = {
        "train-images-idx3-ubyte.gz": rng.integers(0, 256, size=(train, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte.gz": ((np.arange(train) + seed) % 10).astype(np.uint8),
        "t10k-images-idx3-ubyte.gz": rng.integers(0, 256, size=(test, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte.gz": ((np.arange(test) + seed) % 10).astype(np.uint8),
    }
    return {name: gzip.compress(encode_idx(array), mtime=0) for name, array in arrays.items()}


GOOD = make_files(seed=1)
OTHER = make_files(seed=2)  # valid IDX whose checksums match nothing published


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def content_sha256(gz_bytes: bytes) -> str:
    return sha256(gzip.decompress(gz_bytes))


class MirrorServer(LocalServer):
    """Serves GOOD (or a variation of it) under /<behaviour>/<file name> and records every request."""

    # Handler threads are joined by server_close(), so a slow answer can't print into a later test's output.
    daemon_threads = False

    def __init__(self):
        self.requests: list[tuple[str, str, str]] = []
        self.lock = threading.Lock()
        super().__init__(MirrorHandler)

    def mirror(self, behaviour: str) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/{behaviour}/"

    def count(self, behaviour: str | None = None, name: str | None = None) -> int:
        return sum(1 for b, n, _ in self.requests if behaviour in (None, b) and name in (None, n))


def trickle(stream, body: bytes, bytes_per_second: float = 1.0) -> None:
    """Send `body` a byte at a time, each in time to beat any per-read timeout, until the client hangs up."""
    for byte in body:
        stream.write(bytes([byte]))
        stream.flush()
        time.sleep(1 / bytes_per_second)


class MirrorHandler(QuietHandler):
    server: MirrorServer

    def do_GET(self):
        behaviour, _, name = self.path.strip("/").partition("/")
        with self.server.lock:
            self.server.requests.append((behaviour, name, self.headers.get("User-Agent", "")))
            attempt = self.server.count(behaviour, name)
        if name not in GOOD or behaviour == "missing":
            self.send_error(404, "Not Found")
            return
        if behaviour == "flaky" and attempt == 1:
            self.send_error(503, "Service Unavailable")
            return
        body = {
            "other": OTHER[name],
            "regzipped": gzip.compress(gzip.decompress(GOOD[name]), compresslevel=1, mtime=1_700_000_000),
            "html": b"<html><body>Moved to our new site!</body></html>",
        }.get(behaviour, GOOD[name])
        declared = len(body)
        if behaviour == "truncated":
            body = body[: len(body) // 2]
        if behaviour == "slow":
            time.sleep(SLOW_ANSWER_S)
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(declared))
        self.end_headers()
        if behaviour == "trickle":
            trickle(self.wfile, body)
            return
        self.wfile.write(body)


@pytest.fixture
def server():
    with MirrorServer() as mirror:
        yield mirror


@pytest.fixture(autouse=True)
def no_backoff(monkeypatch):
    monkeypatch.setattr(download_stage, "RETRY_BASE_DELAY", 0.0)


def closed_port_url() -> str:
    return f"http://127.0.0.1:{free_port()}/"


def spec_with(*mirrors: str, digests: dict[str, str] | None = None) -> DatasetSpec:
    """A stand-in for the registry's mnist entry: these mirrors, and GOOD's .gz sha256 as the published checksums."""
    digests = digests or {name: sha256(data) for name, data in GOOD.items()}
    return DatasetSpec(name="mnist", mirrors=mirrors, known_digests={n: frozenset({d}) for n, d in digests.items()})


def assert_clean(raw: Path) -> None:
    """Nothing at all under data/raw: no dataset folder, no temp folder left behind."""
    assert not raw.exists() or list(raw.iterdir()) == []


def assert_holds(destination: Path, files: dict[str, bytes]) -> dict:
    """The folder holds exactly `files` (the bytes served), and its manifest agrees with an independent reading of
    the files written: each one's unpacked sha256, and the dataset hash over them as the manifest format defines it
    (sha256 of the four hex digests, canonical order)."""
    manifest = json.loads((destination / "manifest.json").read_text())
    assert sorted(p.name for p in destination.iterdir()) == sorted([*FILE_NAMES, "manifest.json"])
    written = {name: hashlib.sha256(gzip.decompress((destination / name).read_bytes())).hexdigest()
               for name in FILE_NAMES}
    for name in FILE_NAMES:
        assert gzip.decompress((destination / name).read_bytes()) == gzip.decompress(files[name])
        assert manifest["files"][name]["sha256"] == written[name]
    assert list(manifest["files"]) == list(FILE_NAMES)
    assert manifest["content_hash"] == hashlib.sha256("".join(written[n] for n in FILE_NAMES).encode()).hexdigest()
    return manifest


# --- official mirrors -------------------------------------------------------------------------------------------


def test_success_from_first_mirror(server, tmp_path, capsys):
    destination = tmp_path / "raw" / "mnist"
    manifest = download(spec_with(server.mirror("good"), server.mirror("missing")), destination)

    assert manifest == assert_holds(destination, GOOD)
    assert manifest["dataset"] == "mnist"
    for name in FILE_NAMES:
        assert manifest["files"][name] == {"source": server.mirror("good") + name, "sha256": content_sha256(GOOD[name]),
                                           "verified": True}
    assert server.count("missing") == 0
    assert all(agent.startswith("mnist-pipeline/") for _, _, agent in server.requests)
    assert sorted(p.name for p in destination.parent.iterdir()) == ["mnist"]  # no temp folder left
    assert capsys.readouterr().err == ""  # no progress bar when stderr is not a terminal, no warning


def test_404_falls_back_to_next_mirror_without_retrying(server, tmp_path):
    destination = tmp_path / "raw" / "mnist"
    manifest = download(spec_with(server.mirror("missing"), server.mirror("good")), destination, retries=2)
    assert_holds(destination, GOOD)
    assert all(entry["source"].startswith(server.mirror("good")) for entry in manifest["files"].values())
    # A 404 will not go away: one request per file, no retries.
    assert server.count("missing") == len(FILE_NAMES)


def test_truncated_body_is_retried_then_falls_back(server, tmp_path):
    destination = tmp_path / "raw" / "mnist"
    manifest = download(spec_with(server.mirror("truncated"), server.mirror("good")), destination, retries=1)
    assert_holds(destination, GOOD)
    assert manifest["files"][TRAIN_IMAGES]["source"] == server.mirror("good") + TRAIN_IMAGES
    assert server.count("truncated", TRAIN_IMAGES) == 2


def test_wrong_checksum_falls_back(server, tmp_path):
    destination = tmp_path / "raw" / "mnist"
    manifest = download(spec_with(server.mirror("other"), server.mirror("good")), destination)
    assert_holds(destination, GOOD)
    assert all(entry["verified"] for entry in manifest["files"].values())
    assert server.count("other", TRAIN_IMAGES) == 1  # a checksum mismatch is not retried


def test_html_page_instead_of_gzip_falls_back(server, tmp_path):
    destination = tmp_path / "raw" / "mnist"
    download(spec_with(server.mirror("html"), server.mirror("good")), destination)
    assert_holds(destination, GOOD)


def test_connection_refused_falls_back(server, tmp_path):
    destination = tmp_path / "raw" / "mnist"
    download(spec_with(closed_port_url(), server.mirror("good")), destination)
    assert_holds(destination, GOOD)


def test_server_error_is_retried_on_the_same_mirror(server, tmp_path):
    destination = tmp_path / "raw" / "mnist"
    manifest = download(spec_with(server.mirror("flaky"), server.mirror("missing")), destination, retries=1)
    assert_holds(destination, GOOD)
    assert manifest["files"][TRAIN_IMAGES]["source"] == server.mirror("flaky") + TRAIN_IMAGES
    assert server.count("flaky", TRAIN_IMAGES) == 2
    assert server.count("missing") == 0


def test_re_gzipped_copy_with_official_content_is_verified(server, tmp_path):
    # Debian's Fashion-MNIST case: the .gz bytes differ, the unpacked IDX bytes are the published ones.
    content_digests = {name: content_sha256(data) for name, data in GOOD.items()}
    destination = tmp_path / "raw" / "mnist"
    manifest = download(spec_with(server.mirror("regzipped"), digests=content_digests), destination)
    assert_holds(destination, GOOD)
    assert all(entry["verified"] for entry in manifest["files"].values())


def test_all_mirrors_failing_lists_each_one_and_leaves_nothing(server, tmp_path):
    refused = closed_port_url()
    mirrors = (refused, *(server.mirror(behaviour) for behaviour in ("missing", "truncated", "other", "html")))
    raw = tmp_path / "raw"
    with pytest.raises(DownloadError) as failure:
        download(spec_with(*mirrors), raw / "mnist", retries=1)
    message = str(failure.value)
    assert message.startswith(f"could not download {TRAIN_IMAGES} of mnist from any official mirror:")
    for mirror, reason in zip(mirrors, ["connection refused", "HTTP 404", "truncated body", "checksum mismatch",
                                        "not an IDX file"], strict=True):
        assert f"  - {mirror}{TRAIN_IMAGES}: {reason}" in message
    assert "dvc exp run -S data.source=/path/to/folder" in message and "params.yaml" in message
    assert_clean(raw)


def test_failure_on_a_later_file_leaves_nothing(server, tmp_path):
    # The first two files download fine; the test labels are missing everywhere: no half folder may remain.
    raw = tmp_path / "raw"
    folder = tmp_path / "partial"
    folder.mkdir()
    for name in (TRAIN_IMAGES, TRAIN_LABELS):
        (folder / name).write_bytes(GOOD[name])
    with pytest.raises(DownloadError, match="t10k-images-idx3-ubyte.gz of mnist from data.source"):
        download(spec_with(), raw / "mnist", source=str(folder))
    assert_clean(raw)


def test_stalled_server_times_out(server, tmp_path):
    raw = tmp_path / "raw"
    with pytest.raises(DownloadError, match=r"no answer within 0.2 s \(data.timeout\)"):
        download(spec_with(server.mirror("slow")), raw / "mnist", timeout=0.2, retries=0)
    assert_clean(raw)


def test_trickling_mirror_hits_the_overall_deadline(server, tmp_path):
    # 1 byte/s never trips the 1.5 s per-read timeout; the deadline from the file's size does, within seconds.
    started = time.monotonic()
    too_slow = r"too slow: \d+ of \d+ bytes in \d+ s .*16 KiB/s after data.timeout = 1.5 s"
    with pytest.raises(DownloadError, match=too_slow):
        download(spec_with(server.mirror("trickle")), tmp_path / "raw" / "mnist", timeout=1.5, retries=0)
    assert time.monotonic() - started < 10
    assert not (tmp_path / "raw" / "mnist").exists()


def test_existing_download_is_kept_when_a_new_one_fails(server, tmp_path):
    destination = tmp_path / "raw" / "mnist"
    download(spec_with(server.mirror("good")), destination, source=server.mirror("other"))
    with pytest.raises(DownloadError):
        download(spec_with(server.mirror("missing")), destination)
    assert_holds(destination, OTHER)
    assert sorted(p.name for p in destination.parent.iterdir()) == ["mnist"]


# --- rerun -------------------------------------------------------------------------------------------------------


def test_rerun_with_verified_files_downloads_nothing(server, tmp_path, capsys):
    destination = tmp_path / "raw" / "mnist"
    spec = spec_with(server.mirror("good"))
    first = download(spec, destination)
    requests = len(server.requests)
    assert download(spec, destination) == first
    assert len(server.requests) == requests
    assert "nothing to fetch" in capsys.readouterr().out


def test_rerun_repairs_a_damaged_file(server, tmp_path):
    destination = tmp_path / "raw" / "mnist"
    spec = spec_with(server.mirror("good"))
    download(spec, destination)
    (destination / TEST_LABELS).write_bytes(OTHER[TEST_LABELS])
    download(spec, destination)
    assert_holds(destination, GOOD)
    assert server.count("good", TEST_LABELS) == 2


def test_unverified_copy_is_replaced_when_switching_to_official_mirrors(server, tmp_path):
    destination = tmp_path / "raw" / "mnist"
    spec = spec_with(server.mirror("good"))
    download(spec, destination, source=server.mirror("other"))
    requests = len(server.requests)
    download(spec, destination, source=server.mirror("other"))  # same source: nothing fetched
    assert len(server.requests) == requests
    manifest = download(spec, destination)  # official mirrors now: the unverified copy does not count
    assert_holds(destination, GOOD)
    assert all(entry["verified"] for entry in manifest["files"].values())


# --- data.source -------------------------------------------------------------------------------------------------


def test_http_source_matching_no_checksum_is_accepted_with_a_warning(server, tmp_path, capsys):
    destination = tmp_path / "raw" / "mnist"
    manifest = download(spec_with(server.mirror("missing")), destination, source=server.mirror("other").rstrip("/"))
    assert_holds(destination, OTHER)
    assert [entry["verified"] for entry in manifest["files"].values()] == [False] * 4
    assert manifest["files"][TRAIN_IMAGES]["source"] == server.mirror("other") + TRAIN_IMAGES
    assert server.count("missing") == 0  # data.source replaces the mirrors
    assert "warning:" in capsys.readouterr().err


def test_local_folder_holding_the_sample_is_recognised_as_the_sample(tmp_path, capsys, mnist_10k):
    destination = tmp_path / "raw" / "mnist"
    manifest = download("mnist", destination, source=str(mnist_10k))
    files = {name: (mnist_10k / name).read_bytes() for name in FILE_NAMES}
    assert_holds(destination, files)
    assert all((destination / name).read_bytes() == files[name] for name in FILE_NAMES)  # copied byte for byte
    # By its content checksums: the shipped sample's, not MNIST's, so nothing downstream calls it MNIST.
    assert (manifest["dataset"], manifest["sample_of"]) == ("mnist_10k", "mnist")
    assert all(entry["verified"] for entry in manifest["files"].values())
    assert manifest["files"][TRAIN_IMAGES]["source"] == str(mnist_10k / TRAIN_IMAGES)
    output = capsys.readouterr()
    assert "warning" not in output.err and "(unverified)" not in output.out
    assert "the files of mnist_10k" in output.out
    assert read_idx(destination / TRAIN_IMAGES).shape == (8000, 28, 28)
    # Asked again, the earlier copy is reused rather than fetched anew.
    assert download("mnist", destination, source=str(mnist_10k)) == manifest
    assert "nothing to fetch" in capsys.readouterr().out


def test_relative_folder_is_taken_from_the_dvc_root(tmp_path, mnist_10k):
    manifest = download("mnist", tmp_path / "raw" / "mnist", source=mnist_10k.name, root=str(mnist_10k.parent))
    assert manifest["files"][TRAIN_IMAGES]["source"] == f"{mnist_10k.name}/{TRAIN_IMAGES}"


def test_file_url_source_with_published_checksums_is_verified(tmp_path, capsys):
    folder = tmp_path / "copy of mnist"  # the space checks the URL is unquoted
    folder.mkdir()
    for name, data in GOOD.items():
        (folder / name).write_bytes(data)
    destination = tmp_path / "raw" / "mnist"
    manifest = download(spec_with(), destination, source=folder.as_uri())
    assert_holds(destination, GOOD)
    assert all(entry["verified"] for entry in manifest["files"].values())
    assert manifest["files"][TRAIN_IMAGES]["source"] == f"{folder.as_uri()}/{TRAIN_IMAGES}"
    assert capsys.readouterr().err == ""


def test_plain_idx_files_are_stored_gzipped(tmp_path):
    folder = tmp_path / "plain"
    folder.mkdir()
    for name, data in GOOD.items():
        (folder / name).write_bytes(gzip.decompress(data))
    destination = tmp_path / "raw" / "mnist"
    manifest = download(spec_with(), destination, source=str(folder))
    assert (destination / TRAIN_IMAGES).read_bytes()[:2] == b"\x1f\x8b"
    assert manifest == assert_holds(destination, GOOD)


def test_missing_source_folder_is_a_clear_error(tmp_path):
    with pytest.raises(DownloadError, match="folder .*nowhere does not exist"):
        download("mnist", tmp_path / "raw" / "mnist", source=str(tmp_path / "nowhere"))
    assert_clean(tmp_path / "raw")


def test_unsupported_scheme_is_a_clear_error(tmp_path):
    with pytest.raises(DownloadError, match="unsupported scheme ftp://"):
        download("mnist", tmp_path / "raw" / "mnist", source="ftp://example.org/mnist/")


def test_files_that_do_not_fit_together_are_rejected(tmp_path):
    folder = tmp_path / "mismatched"
    folder.mkdir()
    files = {**GOOD, TRAIN_LABELS: make_files(seed=1, train=19)[TRAIN_LABELS]}
    for name, data in files.items():
        (folder / name).write_bytes(data)
    with pytest.raises(DownloadError, match="do not fit together: .* has 20 images but .* has 19 labels"):
        download(spec_with(), tmp_path / "raw" / "mnist", source=str(folder))
    assert_clean(tmp_path / "raw")


def test_labels_where_images_belong_are_rejected(tmp_path):
    folder = tmp_path / "swapped"
    folder.mkdir()
    for name, data in {**GOOD, TRAIN_IMAGES: GOOD[TRAIN_LABELS]}.items():
        (folder / name).write_bytes(data)
    with pytest.raises(DownloadError, match="not N x rows x cols images"):
        download(spec_with(), tmp_path / "raw" / "mnist", source=str(folder))


# --- registry and stage shell ---------------------------------------------------------------------------------------


def test_registry_lists_two_mirrors_or_a_shipped_copy_and_every_file_for_each_dataset():
    for spec in DATASETS.values():
        if spec.folder is None:
            assert len(spec.mirrors) >= 2 and all(m.startswith(("http://", "https://")) for m in spec.mirrors)
        else:
            assert not spec.mirrors and spec.sample_of in DATASETS
        assert set(spec.known_digests) == set(FILE_NAMES)
        assert all(len(digest) in (32, 64) for digests in spec.known_digests.values() for digest in digests)
        assert len(spec.class_names) == 10


def test_the_shipped_sample_is_real_mnist_10k_and_matches_its_registry_checksums(tmp_path):
    sample = DATASETS["mnist_10k"]
    assert sample_of("mnist") is sample and sample_of("fashion_mnist") is None
    assert sample.class_names == DATASETS["mnist"].class_names and sample.test_split != "test"
    for name in FILE_NAMES:
        gz_bytes = (sample.folder / name).read_bytes()
        # Both published digests of each file: the .gz bytes and the unpacked IDX bytes.
        assert sample.known_digests[name] == {sha256(gz_bytes), content_sha256(gz_bytes)}
    assert "CC BY-SA 3.0" in (sample.folder / "README.md").read_text()

    manifest = download("mnist_10k", tmp_path / "raw" / "mnist_10k")
    assert manifest["dataset"] == "mnist_10k"
    assert all(entry["verified"] for entry in manifest["files"].values())
    assert manifest["files"][TRAIN_IMAGES]["source"] == f"stages/mnist_10k/{TRAIN_IMAGES}"  # the same on every clone
    train_labels = read_idx(tmp_path / "raw" / "mnist_10k" / TRAIN_LABELS)
    test_labels = read_idx(tmp_path / "raw" / "mnist_10k" / TEST_LABELS)
    assert (len(train_labels), len(test_labels)) == (8000, 2000)
    assert set(np.unique(train_labels)) == set(np.unique(test_labels)) == set(range(10))


def test_official_mirrors_are_tried_in_registry_order():
    origins = resolve_origins(DATASETS["mnist"], None)
    assert [origin.base for origin in origins] == list(DATASETS["mnist"].mirrors)
    assert all(origin.official for origin in origins)
    assert not resolve_origins(DATASETS["mnist"], "https://example.org/mnist")[0].official


def test_run_writes_the_dataset_folder(make_params, mnist_10k):
    """The folder holds the source's four files, unchanged, and a manifest whose checksums are those of the files'
    unpacked bytes, computed here."""
    params = make_params(data__dataset="mnist")
    source_stage.run(params)
    download_stage.run(params)
    folder = Path(params.paths.raw) / "mnist"
    assert sorted(path.name for path in folder.iterdir()) == sorted([*FILE_NAMES, "manifest.json"])
    manifest = json.loads((folder / "manifest.json").read_text())
    for name in FILE_NAMES:
        unpacked = gzip.decompress((folder / name).read_bytes())
        assert unpacked == gzip.decompress((mnist_10k / name).read_bytes()), name
        assert manifest["files"][name]["sha256"] == hashlib.sha256(unpacked).hexdigest(), name


def test_run_without_the_source_decision_says_which_stage_writes_it(make_params):
    with pytest.raises(PipelineError, match=r"source.json not found: run the source stage first"):
        download_stage.run(make_params())


def test_main_reports_a_bad_source_in_one_line(tmp_path, make_params):
    write_params(tmp_path, make_params(data__source=str(tmp_path / "nowhere"), paths__raw=str(tmp_path / "raw")))
    env = {"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}
    subprocess.run([sys.executable, "-m", "stages.source"], cwd=tmp_path, env=env, check=True, timeout=120)
    result = subprocess.run([sys.executable, "-m", "stages.download"], cwd=tmp_path, capture_output=True, text=True,
                            env=env, timeout=120)
    assert result.returncode == 1
    assert result.stderr.startswith("error: data.source") and len(result.stderr.splitlines()) == 1
    assert_clean(tmp_path / "raw")
