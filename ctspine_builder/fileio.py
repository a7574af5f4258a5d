"""File output shared by all stages: atomic writes, reproducible gzip, hashes."""
from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from isal import igzip

# Suffix of files still being written. Readers and `verify` ignore such files,
# and a later run removes them.
PARTIAL_SUFFIX = ".partial"

# isal level 1 is faster than zlib level 1 and compresses CT about as well as
# zlib level 6 (an estimate from the shared Siemens series, not a guarantee).
GZIP_LEVEL = 1

HASH_CHUNK_BYTES = 1 << 20


@contextlib.contextmanager
def atomic_path(final: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``final``, renamed into place on success.

    The temporary file is fsynced before the rename, so a crash leaves either
    the old file, no file, or the complete new file under the final name.
    On an exception the temporary file is removed and the error re-raised.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{final.name}.", suffix=PARTIAL_SUFFIX, dir=final.parent)
    # mkstemp creates the file 0600; give it the mode a plain open() would,
    # so that a dataset on a shared server is readable as the umask allows.
    os.fchmod(fd, 0o666 & ~_current_umask())
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, final)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _current_umask() -> int:
    """Return the process umask.

    Linux reports it in /proc/self/status. Elsewhere it can only be read by
    setting it, which briefly changes it for other threads, so that is the
    fallback.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def write_bytes_atomic(final: str | Path, data: bytes) -> None:
    """Write ``data`` to ``final`` through a temporary file and a rename."""
    with atomic_path(final) as tmp:
        tmp.write_bytes(data)


def gzip_bytes(data: bytes) -> bytes:
    """Compress ``data`` reproducibly: gzip header mtime 0 and no file name."""
    return igzip.compress(data, compresslevel=GZIP_LEVEL, mtime=0)


def is_gzip(path: str | Path) -> bool:
    """Return True when the file starts with the gzip magic bytes."""
    with open(path, "rb") as handle:
        return handle.read(2) == b"\x1f\x8b"


def sha256_file(path: str | Path) -> str:
    """Return the SHA-256 hex digest of the file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(HASH_CHUNK_BYTES), b""):
            digest.update(chunk)
    return digest.hexdigest()


def sha256_content(path: str | Path) -> str:
    """Return the SHA-256 of the file's content, decompressed if it is gzip.

    Pinned hashes use this, so a copy re-compressed by another tool (another
    gzip level, header or library) still has the same hash.
    """
    digest = hashlib.sha256()
    opener = igzip.open if is_gzip(path) else open
    with opener(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(HASH_CHUNK_BYTES), b""):
            digest.update(chunk)
    return digest.hexdigest()
