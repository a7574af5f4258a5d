"""Fetch stage: extract the MSD Task03_Liver images a build needs from the tar, once.

The tar is read as a forward-only stream (a kept file, a local copy or an
HTTP body) and hashed as it is read. Only the images the manifest needs are
written, into a staging folder in the cache. They move into the
content-addressed cache only after the whole stream has been read and its
MD5 matched, so a damaged or wrong archive leaves nothing behind. An index
per archive maps each member (``imagesTr/liver_0.nii.gz``) to the SHA-256 of
its cached copy, so later cases and later builds skip the archive.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from ctspine_builder.errors import FetchError
from ctspine_builder.fetch.archive import extract_tar_stream, normalize_member_name, remove_tree
from ctspine_builder.fetch.cache import Cache
from ctspine_builder.fetch.download import BODY_ERRORS, BodyInterrupted, looks_like_html
from ctspine_builder.fileio import sha256_file, write_bytes_atomic

logger = logging.getLogger(__name__)

# Task03_Liver keeps training images in imagesTr and test images in imagesTs
# (labelsTr contains liver labels, which CTSpine1K does not use).
IMAGE_FOLDERS = ("imagesTr", "imagesTs")

INDEX_KIND = "msd-index"
MEMBER_SUFFIX = ".nii.gz"


def member_key(name: str) -> str | None:
    """Return ``<folder>/<file>`` for an image entry of the tar, or None for other entries.

    The tar's top folder (``Task03_Liver/``) is dropped. macOS metadata
    entries (``._liver_0.nii.gz``), which the published tar contains, are not
    images and return None.
    """
    parts = normalize_member_name(name).split("/")
    if len(parts) < 2 or parts[-2] not in IMAGE_FOLDERS:
        return None
    file_name = parts[-1]
    if not file_name.endswith(MEMBER_SUFFIX) or file_name.startswith("._"):
        return None
    return f"{parts[-2]}/{file_name}"


class HashingReader:
    """A file-like reader that hashes and counts what passes through it.

    It raises BodyInterrupted when the underlying stream fails or ends
    before ``expected_length`` bytes, and FetchError when the first bytes
    are an HTML page rather than a tar.
    """

    def __init__(self, stream: IO[bytes], label: str, *, expected_length: int | None = None) -> None:
        self.stream = stream
        self.label = label
        self.expected_length = expected_length
        self.md5 = hashlib.md5(usedforsecurity=False)
        self.bytes_read = 0

    def read(self, size: int = -1) -> bytes:
        """Read up to ``size`` bytes from the stream, hashing them."""
        try:
            data = self.stream.read(size)
        except BODY_ERRORS as error:
            raise BodyInterrupted(f"{type(error).__name__} after {self.bytes_read} bytes") from error
        if self.bytes_read == 0 and data and looks_like_html(data):
            raise FetchError(
                f"{self.label} is an HTML page, not a tar archive",
                hint="The server sent a web page (a login, quota or virus-scan page) instead of the file. "
                "Check the URL, or download the tar in a browser and set the source's locator to the local copy.",
            )
        if not data and size != 0 and self.expected_length is not None and self.bytes_read < self.expected_length:
            raise BodyInterrupted(f"stream ended after {self.bytes_read} of {self.expected_length} bytes")
        self.md5.update(data)
        self.bytes_read += len(data)
        return data

    def drain(self, chunk_bytes: int = 1 << 20) -> None:
        """Read the rest of the stream (tar padding after the end marker) into the hash."""
        while self.read(chunk_bytes):
            pass


@dataclass
class MemberIndex:
    """Member key -> SHA-256 of the cached copy, for one archive, stored as JSON in the cache."""

    path: Path
    members: dict[str, str]

    @classmethod
    def load(cls, cache: Cache, archive_key: str) -> MemberIndex:
        """Read the index for an archive key, or start an empty one."""
        path = cache.path_for(INDEX_KIND, archive_key, ".json")
        members: dict[str, str] = {}
        if path.is_file():
            try:
                members = dict(json.loads(path.read_text(encoding="utf-8")))
            except (ValueError, TypeError):
                logger.warning("ignoring unreadable MSD member index %s", path)
        return cls(path, members)

    def save(self) -> None:
        """Write the index atomically."""
        text = json.dumps(self.members, indent=1, sort_keys=True) + "\n"
        write_bytes_atomic(self.path, text.encode("utf-8"))

    def cached_path(self, cache: Cache, key: str) -> Path | None:
        """Return the cached copy of a member, or None when it is not (or no longer) cached."""
        digest = self.members.get(key)
        if digest is None:
            return None
        return cache.get("sha256", digest, MEMBER_SUFFIX)


@contextlib.contextmanager
def archive_lock(cache: Cache, archive_key: str) -> Iterator[None]:
    """Hold an exclusive lock per archive, so parallel cases extract it once.

    NOTE: uses fcntl, so on platforms without it (Windows) there is no lock
    and parallel workers may each extract the same members.
    """
    lock_path = cache.root / ".locks" / f"{INDEX_KIND}-{archive_key}.lock"
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:
        yield
        return
    with open(lock_path, "a+b") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def extract_members(
    stream: IO[bytes],
    label: str,
    needed: set[str],
    cache: Cache,
    index: MemberIndex,
    *,
    md5: str | None,
    expected_length: int | None = None,
) -> set[str]:
    """Extract the ``needed`` member keys from a tar stream into the cache; return the keys found.

    The MD5 of the whole stream is compared with ``md5`` (when given) before
    anything moves from the staging folder into the cache. Raises
    FetchError for a wrong MD5, an HTML page or a damaged tar, and
    BodyInterrupted when the stream fails part way. The staging folder is
    removed in every case.
    """
    staging = cache.staging_dir()
    try:
        reader = HashingReader(stream, label, expected_length=expected_length)
        written = extract_tar_stream(reader, label, staging, select=lambda name: member_key(name) in needed)
        reader.drain()
        actual = reader.md5.hexdigest()
        if md5 and actual != md5.lower():
            raise FetchError(
                f"MD5 of {label} is {actual}, expected {md5.lower()}; nothing from it was cached",
                hint="The archive is damaged or is another version. Delete the local copy and download it again, "
                "or set the source's md5 option if you use another mirror on purpose.",
            )
        if not md5:
            logger.warning("%s was not checked against an MD5 because the source sets none", label)

        found: set[str] = set()
        for name, path in sorted(written.items()):
            key = member_key(name)
            if key is None or key in found:
                continue
            digest = sha256_file(path)
            cache.add(path, "sha256", digest, MEMBER_SUFFIX)
            index.members[key] = digest
            found.add(key)
        index.save()
    finally:
        remove_tree(staging)
    logger.info("extracted %d of %d needed MSD images from %s", len(found), len(needed), label)
    return found
