"""Fetch stage: stream a URL to disk with resume, checksum checks and an atomic rename."""
from __future__ import annotations

import hashlib
import logging
import os
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import BinaryIO, Protocol

import requests
import urllib3.exceptions

from ctspine_builder.errors import FetchError
from ctspine_builder.fetch.http import HttpClient, describe_exception, redact_url
from ctspine_builder.fileio import HASH_CHUNK_BYTES, PARTIAL_SUFFIX

logger = logging.getLogger(__name__)

# Read size for response bodies. 1 MiB keeps the per-chunk Python overhead
# small next to hashing and writing.
CHUNK_BYTES = 1 << 20

# Exceptions raised while a body is still arriving: the connection was reset
# or closed early, or the read timed out. A download resumes after these.
BODY_ERRORS = (
    requests.ConnectionError,
    requests.Timeout,
    requests.exceptions.ChunkedEncodingError,
    urllib3.exceptions.ProtocolError,
    urllib3.exceptions.ReadTimeoutError,
    ConnectionError,
    TimeoutError,
)

HTML_PREFIXES = (b"<!doctype html", b"<html")

# Written bytes between background fdatasync calls. Flushing while the body
# still arrives leaves little for the fsync before the rename, which
# otherwise took about 0.26 s for 256 MiB on the development machine.
SYNC_EVERY_BYTES = 32 << 20


class Progress(Protocol):
    """Progress bar interface used by stream_response; a tqdm bar fits it."""

    def update(self, n: int) -> object: ...


class BackgroundSync:
    """A thread that flushes a file being written to disk with fdatasync every ``every_bytes``.

    Also a progress sink: `update(n)` counts bytes written and forwards them
    to ``progress``. Use as a context manager around the writes.
    """

    def __init__(self, fd: int, progress: Progress | None = None, every_bytes: int = SYNC_EVERY_BYTES) -> None:
        self.fd = fd
        self.progress = progress
        self.every_bytes = every_bytes
        self._pending = 0
        self._wanted = threading.Event()
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="fdatasync", daemon=True)

    def update(self, n: int) -> None:
        """Count ``n`` written bytes and wake the thread once enough have piled up."""
        if self.progress is not None:
            self.progress.update(n)
        self._pending += n
        if self._pending >= self.every_bytes:
            self._pending = 0
            self._wanted.set()

    def _run(self) -> None:
        while True:
            self._wanted.wait()
            self._wanted.clear()
            if self._stopping:
                return
            try:
                os.fdatasync(self.fd)
            except OSError as error:  # the final fsync before the rename reports real failures
                logger.debug("background fdatasync failed: %s", error)
                return

    def __enter__(self) -> BackgroundSync:
        self._thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._stopping = True
        self._wanted.set()
        self._thread.join()


class BodyInterrupted(Exception):
    """The connection failed while a body was being streamed."""


def looks_like_html(first_bytes: bytes) -> bool:
    """Return True when a body starts like an HTML page (for example a login or virus-scan page)."""
    head = first_bytes[:512].lstrip().lower()
    return head.startswith(HTML_PREFIXES)


def stream_response(
    response: requests.Response,
    sink: BinaryIO,
    *,
    progress: Progress | None = None,
    hashers: Iterable = (),
) -> int:
    """Copy a streamed response body into ``sink`` chunk by chunk; return the byte count.

    Each chunk also updates every hashlib object in ``hashers`` and the
    progress bar, so the body is never held whole in memory. A connection
    failure during the body raises BodyInterrupted, and the bytes written
    so far stay in ``sink``.
    """
    hashers = list(hashers)
    total = 0
    try:
        for chunk in response.iter_content(chunk_size=CHUNK_BYTES):
            if not chunk:
                continue
            sink.write(chunk)
            for hasher in hashers:
                hasher.update(chunk)
            total += len(chunk)
            if progress is not None:
                progress.update(len(chunk))
    except BODY_ERRORS as error:
        raise BodyInterrupted(describe_exception(error)) from error
    return total


def partial_path(dest: Path) -> Path:
    """Return where the download of ``dest`` is kept until it is complete."""
    return dest.with_name(dest.name + PARTIAL_SUFFIX)


def _hash_existing(path: Path, hashers: list) -> int:
    """Feed a kept partial file into ``hashers``; return its size."""
    size = 0
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(HASH_CHUNK_BYTES), b""):
            for hasher in hashers:
                hasher.update(chunk)
            size += len(chunk)
    return size


def _new_hashers(md5: str | None, sha256: str | None) -> dict[str, object]:
    hashers: dict[str, object] = {}
    if md5:
        hashers["md5"] = hashlib.md5(usedforsecurity=False)
    if sha256:
        hashers["sha256"] = hashlib.sha256()
    return hashers


def download_file(
    client: HttpClient,
    url: str,
    dest: str | Path,
    *,
    md5: str | None = None,
    sha256: str | None = None,
    expected_size: int | None = None,
    resume: bool = True,
    progress: bool = True,
    description: str | None = None,
) -> Path:
    """Download ``url`` to ``dest``, verify it, and return ``dest``.

    The body goes to ``dest.partial`` first. With ``resume``, a kept partial
    file is re-hashed and continued with a Range request. A server that
    returns 200 instead of 206 gets a full download. A connection failure
    during the body resumes up to ``client.retries`` times (from zero
    without ``resume``). The size, MD5
    and SHA-256, where given, are checked before the rename into place, so
    ``dest`` only ever holds a complete, verified file. An existing ``dest``
    that passes the checks is returned without a request.
    """
    dest = Path(dest)
    if dest.is_file() and _verify_existing(dest, md5=md5, sha256=sha256, expected_size=expected_size):
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    partial = partial_path(dest)

    failures = 0
    while True:
        if not resume:
            partial.unlink(missing_ok=True)
        try:
            hashers = _download_once(client, url, partial, md5, sha256, expected_size, progress, description)
            break
        except BodyInterrupted as error:
            failures += 1
            if failures > client.retries:
                if not resume:
                    partial.unlink(missing_ok=True)
                raise FetchError(
                    f"download of {redact_url(url)} failed {failures} times while receiving data ({error})",
                    path=dest,
                    hint="Run the command again; it resumes from the bytes already received.",
                ) from None
            delay = client.backoff_delay(failures - 1)
            logger.warning(
                "download of %s interrupted (%s); resuming in %.1f s (%d retries left)",
                redact_url(url), error, delay, client.retries - failures,
            )
            client._sleep(delay)

    _check_download(partial, url, dest, hashers, md5=md5, sha256=sha256, expected_size=expected_size)
    with open(partial, "rb+") as handle:
        os.fsync(handle.fileno())
    os.replace(partial, dest)
    return dest


def _download_once(client, url, partial, md5, sha256, expected_size, progress, description) -> dict:
    """Run one request of a download, appending to ``partial``; return the hashers."""
    from tqdm import tqdm

    hashers = _new_hashers(md5, sha256)
    offset = _hash_existing(partial, list(hashers.values())) if partial.is_file() else 0
    headers = {"Range": f"bytes={offset}-"} if offset else None
    response = client.get(url, headers=headers, stream=True)
    with response:
        if offset and response.status_code == 416 and expected_size == offset:
            return hashers  # the kept part is already the whole file
        if offset and not _resumed(response, offset):
            # The server ignored or mangled the Range request: start over.
            logger.info("server did not resume %s; downloading it from the start", redact_url(url))
            offset = 0
            hashers = _new_hashers(md5, sha256)
            if response.status_code != 200:
                response.close()
                partial.unlink(missing_ok=True)
                response = client.get(url, stream=True)
        _check_status(response, url, partial.with_suffix(""))
        if offset == 0:
            _reject_html_response(response, url)
        length = response.headers.get("Content-Length")
        total = expected_size or (int(length) + offset if length and length.isdigit() else None)
        with tqdm(
            total=total, initial=offset, unit="B", unit_scale=True, unit_divisor=1024,
            desc=description, disable=not progress, leave=False,
        ) as bar, open(partial, "ab" if offset else "wb") as sink, BackgroundSync(sink.fileno(), bar) as syncer:
            stream_response(response, sink, progress=syncer, hashers=hashers.values())
    return hashers


def _resumed(response: requests.Response, offset: int) -> bool:
    """Return True when a response continues the body at ``offset`` (HTTP 206, matching Content-Range)."""
    if response.status_code != 206:
        return False
    content_range = response.headers.get("Content-Range", "")
    # Content-Range: bytes <first>-<last>/<length or *>  (RFC 9110, section 14.4)
    unit, _, spec = content_range.partition(" ")
    first = spec.split("-", 1)[0]
    return unit == "bytes" and first.isdigit() and int(first) == offset


def _check_status(response: requests.Response, url: str, dest: Path) -> None:
    if response.status_code in (200, 206):
        return
    raise FetchError(
        f"GET {redact_url(url)} returned HTTP {response.status_code}",
        path=dest,
        hint="Check the URL and that the file is still published there.",
    )


def _reject_html_response(response: requests.Response, url: str) -> None:
    content_type = response.headers.get("Content-Type", "").lower()
    if content_type.startswith("text/html"):
        raise FetchError(
            f"{redact_url(url)} returned an HTML page instead of the file",
            hint="The server sent a web page (a login, quota or virus-scan page); "
            "check the URL, or download the file in a browser and pass the local copy.",
        )


def _check_download(partial: Path, url: str, dest: Path, hashers: dict, *, md5, sha256, expected_size) -> None:
    """Raise FetchError, deleting ``partial``, when the download fails a check."""
    problems = []
    with open(partial, "rb") as handle:
        if looks_like_html(handle.read(512)):
            problems.append("the body is an HTML page, not the file")
    size = partial.stat().st_size
    if expected_size is not None and size != expected_size:
        problems.append(f"size {size} bytes, expected {expected_size}")
    for name, expected in (("md5", md5), ("sha256", sha256)):
        if expected:
            actual = hashers[name].hexdigest()
            if actual != expected.lower():
                problems.append(f"{name.upper()} {actual}, expected {expected.lower()}")
    if problems:
        partial.unlink(missing_ok=True)
        raise FetchError(
            f"download of {redact_url(url)} failed its checks: {'; '.join(problems)}",
            path=dest,
            hint="The partial file was deleted. Run the command again; if this repeats, "
            "the published file differs from the pinned checksum or the URL is wrong.",
        )


def _verify_existing(dest: Path, *, md5, sha256, expected_size) -> bool:
    """Return True when an existing final file passes every check given."""
    if expected_size is not None and dest.stat().st_size != expected_size:
        logger.warning("%s has the wrong size; downloading it again", dest)
        return False
    hashers = _new_hashers(md5, sha256)
    if hashers:
        _hash_existing(dest, list(hashers.values()))
    for name, expected in (("md5", md5), ("sha256", sha256)):
        if expected and hashers[name].hexdigest() != expected.lower():
            logger.warning("%s fails its %s check; downloading it again", dest, name.upper())
            return False
    return True
