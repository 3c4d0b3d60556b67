"""download stage: fetch a dataset's four IDX files, verify them and write `{paths.raw}/{dataset}/` with a manifest.

Reads params: data.dataset, data.timeout, data.retries, paths.raw; and `{paths.source}`, where the source stage
wrote which registry entry to get and from where (see stages/source.py).
Writes: `{paths.raw}/{dataset}/` holding train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz,
t10k-images-idx3-ubyte.gz, t10k-labels-idx1-ubyte.gz and manifest.json:
`{"dataset" (what the files are, e.g. mnist_10k), "sample_of" (null, or the full dataset a sample stands in for),
"files": {name: {"source", "sha256" (of the unpacked IDX bytes), "verified"}}, "content_hash"}`.
Run alone: `python -m stages.download` from the project root.

From the official mirrors each file is tried mirror by mirror: network errors, 5xx answers and truncated bodies
are retried with a short backoff, then any failure (HTTP error, bad gzip, invalid IDX, a checksum matching no
published value) moves on to the next mirror. The shipped sample is read from the package and verified against
its registry checksums. A `data.source` folder, file:// URL or http(s):// base URL is verified against the same
checksums; a copy of the shipped sample is recognised as the sample, and one that matches nothing but is valid
IDX is accepted with a warning and recorded as unverified. The folder is written atomically: a failure leaves
nothing in `{paths.raw}`.
"""

from __future__ import annotations

import stages.core.venv  # noqa: F401  (first: without the project's packages, one line, not a traceback)

import gzip
import hashlib
import http.client
import os
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from stages.core.datasets import (
    FILE_NAMES,
    IMAGE_FILES,
    TEST_IMAGES,
    TEST_LABELS,
    TRAIN_IMAGES,
    TRAIN_LABELS,
    DatasetSpec,
    dataset_spec,
    local_copy_advice,
    sample_of,
)
from stages.core.entry import stage_main
from stages.core.errors import PipelineError
from stages.core.files import CODE_ROOT, atomic_path
from stages.core.idx import IdxError, load_images_labels, parse_idx, unpack
from stages.core.mirrors import USER_AGENT, describe_network_error
from stages.core.records import raw_folder, read_manifest, read_source, write_manifest
from stages.core.schema import Params

# Backoff before retry n is RETRY_BASE_DELAY * 2**n seconds, capped so that even data.retries=10 stays short;
# tests set it to 0.
RETRY_BASE_DELAY = 0.5
RETRY_MAX_DELAY = 4.0
CHUNK_SIZE = 1 << 16
# data.timeout bounds each wait for bytes; this bounds the whole body: after a grace of data.timeout a mirror must
# have delivered this many bytes a second on average, so a file of N bytes gets at most data.timeout + N / rate
# seconds however slowly a server trickles it (MNIST's largest file: ~10 min).
MIN_BYTES_PER_SECOND = 16 * 1024
# HTTP statuses that a later attempt may not get again; any other 4xx is final for that mirror.
TRANSIENT_HTTP_STATUSES = frozenset({408, 425, 429})


class DownloadError(PipelineError):
    """No source could deliver a valid copy of a dataset file, or data.source is unusable."""


class FetchError(Exception):
    """One attempt to get one file failed; `transient` says whether trying the same place again may help."""

    def __init__(self, reason: str, transient: bool = False):
        super().__init__(reason)
        self.reason = reason
        self.transient = transient


@dataclass(frozen=True)
class Origin:
    """A place the four files can come from: an official mirror or the user's data.source."""

    base: str  # as written in the registry or in params.yaml; file locations recorded in the manifest derive from it
    official: bool  # an official mirror's file must match a published checksum; a user's copy only gets a warning
    folder: Path | None = None  # the local folder to read, for a folder or file:// source; None for http(s)

    def locate(self, name: str) -> str:
        if self.folder is not None and "://" not in self.base:
            return str(Path(self.base) / name)
        return f"{self.base.rstrip('/')}/{name}"


@dataclass(frozen=True)
class CheckedFile:
    """A fetched file that is valid IDX of the expected rank, with its digests."""

    gz_bytes: bytes
    content_sha256: str
    verified: bool


def shipped_label(folder: Path) -> str:
    """A shipped folder as the manifest names it: relative to the project, so every clone writes the same bytes."""
    try:
        return str(folder.relative_to(CODE_ROOT))
    except ValueError:
        return str(folder)


def resolve_origins(spec: DatasetSpec, source: str | None, root: str | None = None) -> list[Origin]:
    """The origins to try in order: the official mirrors, or the one place data.source names.

    A relative folder is taken from `root` when given: DVC sets DVC_ROOT to the project, and a queued experiment
    runs in a copy under .dvc/tmp/exps/ where `../data/...` would point elsewhere.
    """
    if source is None:
        if spec.folder is not None:
            return [Origin(shipped_label(spec.folder), official=True, folder=spec.folder)]
        return [Origin(mirror, official=True) for mirror in spec.mirrors]
    scheme = urllib.parse.urlparse(source).scheme.lower() if "://" in source else ""
    if scheme in ("http", "https"):
        return [Origin(source, official=False)]
    if scheme == "file":
        parsed = urllib.parse.urlparse(source)
        if parsed.netloc not in ("", "localhost"):
            raise DownloadError(f"data.source {source!r}: a file:// URL must name a local path, e.g. "
                                "file:///home/me/mnist (three slashes)")
        return [Origin(source, official=False, folder=Path(urllib.request.url2pathname(parsed.path)))]
    if scheme:
        raise DownloadError(f"data.source {source!r}: unsupported scheme {scheme}://; use a local folder, "
                            "a file:// URL or an http(s):// base URL")
    folder = Path(source).expanduser()
    if not folder.is_absolute() and root:
        folder = Path(root) / folder
    return [Origin(source, official=False, folder=folder)]


def digests_of(gz_bytes: bytes, content: bytes) -> dict[str, str]:
    return {
        "gz_md5": hashlib.md5(gz_bytes, usedforsecurity=False).hexdigest(),
        "gz_sha256": hashlib.sha256(gz_bytes).hexdigest(),
        "content_sha256": hashlib.sha256(content).hexdigest(),
    }


def check_file(name: str, raw: bytes, spec: DatasetSpec) -> CheckedFile:
    """Validate fetched bytes as IDX of the right rank and compare their digests with the published ones.

    Raises FetchError (never transient: the same place would serve the same bytes) when they are not usable.
    """
    try:
        content = unpack(raw, "file")
        array = parse_idx(content, "file")
    except IdxError as error:
        raise FetchError(str(error).removeprefix("file: ").removesuffix("; re-download it")) from None
    expected_rank = 3 if name in IMAGE_FILES else 1
    if array.ndim != expected_rank:
        kind = "N x rows x cols images" if expected_rank == 3 else "a 1-D label vector"
        raise FetchError(f"not {kind}: IDX shape is {array.shape}")
    digests = digests_of(raw, content)
    verified = not spec.known_digests.get(name, frozenset()).isdisjoint(digests.values())
    # Canonical names promise gzip; a source holding plain IDX is stored compressed so every reader sees one format.
    gz_bytes = raw if content is not raw else gzip.compress(content, mtime=0)
    return CheckedFile(gz_bytes, digests["content_sha256"], verified)


def http_get(url: str, timeout: float, label: str) -> bytes:
    """One GET of `url`, checking the body against Content-Length; a progress bar only on a terminal."""
    request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
    chunks: list[bytes] = []
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            header = response.headers.get("Content-Length", "")
            expected = int(header) if header.isdigit() else None
            with tqdm(total=expected, desc=label, unit="B", unit_scale=True, unit_divisor=1024, leave=False,
                      disable=not sys.stderr.isatty()) as progress:
                started, received = time.monotonic(), 0
                # read1: whatever has arrived, so a trickle is noticed between bytes, not after a full chunk.
                while chunk := response.read1(CHUNK_SIZE):
                    chunks.append(chunk)
                    received += len(chunk)
                    progress.update(len(chunk))
                    elapsed = time.monotonic() - started
                    if elapsed > timeout + received / MIN_BYTES_PER_SECOND:
                        raise FetchError(f"too slow: {received} of {expected or '?'} bytes in {elapsed:.0f} s (a "
                                         f"mirror must average {MIN_BYTES_PER_SECOND // 1024} KiB/s after "
                                         f"data.timeout = {timeout:g} s)")
    except urllib.error.HTTPError as error:
        transient = error.code >= 500 or error.code in TRANSIENT_HTTP_STATUSES
        raise FetchError(f"HTTP {error.code} {error.reason}", transient=transient) from None
    except urllib.error.URLError as error:
        raise FetchError(describe_network_error(error.reason, timeout), transient=True) from None
    except (OSError, http.client.HTTPException) as error:
        raise FetchError(describe_network_error(error, timeout), transient=True) from None
    body = b"".join(chunks)
    # http.client does not raise when a server closes the connection before Content-Length bytes have arrived.
    if expected is not None and len(body) != expected:
        raise FetchError(f"truncated body: received {len(body)} of {expected} bytes", transient=True)
    return body


def fetch(origin: Origin, name: str, timeout: float, retries: int) -> bytes:
    """The raw bytes of one file from one origin; network failures are retried with exponential backoff."""
    if origin.folder is not None:
        path = origin.folder / name
        try:
            return path.read_bytes()
        except FileNotFoundError:
            raise FetchError(f"no such file ({path})") from None
        except OSError as error:
            raise FetchError(f"cannot read {path}: {error.strerror or error}") from None
    url = origin.locate(name)
    for attempt in range(retries + 1):
        try:
            return http_get(url, timeout, name)
        except FetchError as error:
            if not error.transient or attempt == retries:
                if attempt:
                    error.reason += f" (after {attempt + 1} attempts)"
                raise
            time.sleep(min(RETRY_MAX_DELAY, RETRY_BASE_DELAY * 2**attempt))
    raise AssertionError("unreachable: the loop returns or raises")


def fetch_checked(spec: DatasetSpec, name: str, origins: list[Origin], timeout: float, retries: int
                  ) -> tuple[CheckedFile, Origin]:
    """The first valid copy of `name` among `origins`; one DownloadError naming every origin tried if none has one."""
    failures: list[str] = []
    for origin in origins:
        try:
            checked = check_file(name, fetch(origin, name, timeout, retries), spec)
            if origin.official and not checked.verified:
                raise FetchError(f"checksum mismatch: content sha256 {checked.content_sha256[:16]}... and the .gz "
                                 f"digests match no published {spec.name} checksum")
            return checked, origin
        except FetchError as error:
            failures.append(f"  - {origin.locate(name)}: {error.reason}")
    if origins[0].official:
        what = f"could not download {name} of {spec.name} from any official mirror:"
        sample = sample_of(spec.name)
        advice = f"To use a local copy instead, {local_copy_advice(spec.name)}." + (
            f" Or train on the {sample.name} sample shipped with the project: `dvc exp run -S data.source=sample`."
            if sample else "")
    else:
        what = f"could not get {name} of {spec.name} from data.source:"
        advice = f"Fix it: {local_copy_advice(spec.name)}; or set it to auto to use the official mirrors."
    raise DownloadError("\n".join([what, *failures, advice]))


def content_hash(content_sha256s: list[str]) -> str:
    """One hash for the dataset: sha256 over the four files' content sha256 hex digests, in canonical order."""
    return hashlib.sha256("".join(content_sha256s).encode()).hexdigest()


def identified_name(spec: DatasetSpec, source: str | None) -> str | None:
    """The registry entry a user's copy may turn out to be: the shipped sample of `spec`, if it has one."""
    sample = sample_of(spec.name)
    return sample.name if source is not None and sample is not None else None


def identify(spec: DatasetSpec, entries: dict[str, dict]) -> DatasetSpec:
    """The shipped sample when a user's copy of `spec` is exactly it (by content checksums), else `spec`."""
    sample = sample_of(spec.name)
    if sample is not None and all(entries[name]["sha256"] in sample.known_digests[name] for name in FILE_NAMES):
        for entry in entries.values():
            entry["verified"] = True
        return sample
    return spec


def build_manifest(spec: DatasetSpec, entries: dict[str, dict]) -> dict:
    return {
        "dataset": spec.name,
        "sample_of": spec.sample_of,
        "files": {name: entries[name] for name in FILE_NAMES},
        "content_hash": content_hash([entries[name]["sha256"] for name in FILE_NAMES]),
    }


def reusable_manifest(destination: Path, spec: DatasetSpec, source: str | None, origins: list[Origin]
                      ) -> dict | None:
    """The manifest of an intact earlier download that the current settings would fetch again, else None.

    Intact: every file is present and unpacks to the sha256 recorded. With the official mirrors any verified copy
    will do (its content is the official one wherever it came from); with data.source, only a copy from that place.
    """
    try:
        manifest = read_manifest(destination)
        files = manifest["files"]
        if manifest["dataset"] not in (spec.name, identified_name(spec, source)) or set(files) != set(FILE_NAMES):
            return None
        for name in FILE_NAMES:
            entry = files[name]
            if source is None and entry["verified"] is not True:
                return None
            if source is not None and entry["source"] != origins[0].locate(name):
                return None
            if hashlib.sha256(unpack((destination / name).read_bytes(), name)).hexdigest() != entry["sha256"]:
                return None
    except (PipelineError, OSError, ValueError, KeyError, TypeError, IdxError):
        return None
    return manifest


def download(spec: DatasetSpec | str, destination: str | os.PathLike, source: str | None = None,
             timeout: float = 30.0, retries: int = 2, root: str | None = None) -> dict:
    """Make `destination` hold a valid copy of the dataset's four files and manifest.json; return the manifest.

    `spec` is a registry name or a DatasetSpec (tests pass one with their own mirrors and checksums). Nothing is
    fetched when an intact earlier download fits the current settings (see reusable_manifest).
    """
    spec = dataset_spec(spec) if isinstance(spec, str) else spec
    destination = Path(destination)
    origins = resolve_origins(spec, source, root)
    if origins[0].folder is not None and not origins[0].folder.is_dir():
        raise DownloadError(f"data.source {source!r}: folder {origins[0].folder} does not exist; "
                            f"{local_copy_advice(spec.name)}; or set it to auto to use the official mirrors")
    manifest = reusable_manifest(destination, spec, source, origins)
    if manifest is not None:
        print(f"download: {spec.name} already in {destination} (content {manifest['content_hash'][:12]}); "
              "nothing to fetch")
        return manifest

    entries: dict[str, dict] = {}
    with atomic_path(destination, directory=True) as staging:
        staging.chmod(0o755)  # mkdtemp makes it owner-only; the finished folder should read like any other
        for name in FILE_NAMES:
            checked, origin = fetch_checked(spec, name, origins, timeout, retries)
            (staging / name).write_bytes(checked.gz_bytes)
            entries[name] = {"source": origin.locate(name), "sha256": checked.content_sha256,
                             "verified": checked.verified}
        # Each file is valid on its own; the pairs must also agree (as many labels as images, labels 0-9).
        try:
            load_images_labels(staging / TRAIN_IMAGES, staging / TRAIN_LABELS)
            load_images_labels(staging / TEST_IMAGES, staging / TEST_LABELS)
        except IdxError as error:
            where = source or "the official mirrors"
            raise DownloadError(f"the files from {where} do not fit together: "
                                f"{str(error).replace(str(staging), str(destination))}") from None
        if source is not None and not all(entry["verified"] for entry in entries.values()):
            spec = identify(spec, entries)
            if spec.sample_of:
                print(f"download: these are the files of {spec.name}, the {spec.sample_of} sample shipped with the "
                      "project (their content checksums match); recorded as such")
        for name, entry in entries.items():
            print(f"download: {name} <- {entry['source']} ({'verified' if entry['verified'] else 'unverified'})")
        manifest = build_manifest(spec, entries)
        write_manifest(staging, manifest)

    unverified = [name for name in FILE_NAMES if not entries[name]["verified"]]
    if unverified:
        print(f"warning: {', '.join(unverified)} from {source} match no published {spec.name} checksum; accepted "
              "because they are valid IDX, and recorded as unverified in the manifest with their content sha256",
              file=sys.stderr)
    return manifest


def run(params: Params) -> dict:
    choice = read_source(params.paths)
    destination = raw_folder(params.paths, params.data.dataset)
    source = None if choice["source"] in ("mirrors", "sample") else choice["source"]
    manifest = download(choice["dataset"], destination, source=source, timeout=params.data.timeout,
                        retries=params.data.retries, root=os.environ.get("DVC_ROOT"))
    verified = all(entry["verified"] for entry in manifest["files"].values())
    print(f"download: {manifest['dataset']} ready in {destination} ({'verified' if verified else 'UNVERIFIED'}, "
          f"content hash {manifest['content_hash'][:12]})")
    return manifest


def main() -> None:
    stage_main(run, fast_exit=True)


if __name__ == "__main__":
    main()
