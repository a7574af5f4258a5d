"""Fetch stage: the content-addressed download cache shared by all builds."""
from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from ctspine_builder import TOOL_NAME
from ctspine_builder.errors import FetchError
from ctspine_builder.fileio import PARTIAL_SUFFIX

logger = logging.getLogger(__name__)

CACHE_ENV = "CTSPINE_CACHE_DIR"

# Staging folder inside the cache root, so that the final rename never
# crosses a file system and is atomic.
STAGING_DIR = ".staging"

# A staging folder untouched for this long belongs to a run that stopped;
# a running build touches its folder within seconds.
STALE_STAGING_S = 86400


def default_cache_dir() -> Path:
    """Return the cache folder: $CTSPINE_CACHE_DIR, else the platform's user cache folder."""
    override = os.environ.get(CACHE_ENV)
    if override:
        return Path(override).expanduser()
    import platformdirs

    return Path(platformdirs.user_cache_dir(TOOL_NAME))


@dataclass(frozen=True)
class CacheEntry:
    """One cached file or folder: its key, size in bytes and last use (POSIX time).

    ``partial`` marks a download kept for resuming (its name ends in
    ``.partial``): its content does not match the digest yet.
    """

    algorithm: str
    digest: str
    path: Path
    size: int
    last_used: float
    partial: bool = False


def _tree_size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(item.stat().st_size for item in path.rglob("*") if item.is_file() and not item.is_symlink())


def _validate_key(algorithm: str, digest: str) -> None:
    for value in (algorithm, digest):
        if not value or not value.replace("-", "").replace("_", "").isalnum():
            raise FetchError(f"invalid cache key part {value!r}", hint="Use letters, digits, '-' and '_' only.")


class Cache:
    """A store of verified downloads, keyed by a hash algorithm name and digest.

    Entries live at ``<root>/<algorithm>/<digest[:2]>/<digest><suffix>`` and
    may be files or folders. An entry appears only through an atomic rename
    from the staging folder, so a reader sees a complete entry or none.
    Reading an entry updates its modification time, which ``prune`` uses as
    the time of last use.
    """

    def __init__(self, root: str | Path | None = None) -> None:
        self.root = Path(root).expanduser() if root is not None else default_cache_dir()

    def path_for(self, algorithm: str, digest: str, suffix: str = "") -> Path:
        """Return where the entry for this key lives, whether or not it exists."""
        _validate_key(algorithm, digest)
        digest = digest.lower()
        return self.root / algorithm / digest[:2] / f"{digest}{suffix}"

    def staging_dir(self) -> Path:
        """Return a new empty folder inside the cache for building an entry."""
        staging = self.root / STAGING_DIR
        staging.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix="entry.", suffix=PARTIAL_SUFFIX, dir=staging))

    def add(self, src: str | Path, algorithm: str, digest: str, suffix: str = "") -> Path:
        """Move a verified file or folder into the cache under its key; return the entry's path.

        ``src`` is moved, not copied, when it is on the cache's file system.
        When the entry already exists, ``src`` is deleted and the existing
        entry kept, because two entries with one key hold the same content.
        """
        src = Path(src)
        final = self.path_for(algorithm, digest, suffix)
        final.parent.mkdir(parents=True, exist_ok=True)
        if final.exists():
            _remove(src)
            return final
        staged = self.staging_dir() / "entry"
        try:
            shutil.move(str(src), staged)
            os.replace(staged, final)
        except OSError as error:
            if final.exists():  # another process added the same key first
                _remove(staged)
                return final
            _remove(staged)
            raise FetchError(f"could not add {src.name} to the cache: {error}", path=final) from error
        finally:
            shutil.rmtree(staged.parent, ignore_errors=True)
        logger.debug("cached %s/%s", algorithm, digest)
        return final

    def get(self, algorithm: str, digest: str, suffix: str = "") -> Path | None:
        """Return the entry's path if it is cached, else None; marks it as used now."""
        path = self.path_for(algorithm, digest, suffix)
        if not path.exists():
            return None
        os.utime(path)
        return path

    def entries(self) -> list[CacheEntry]:
        """List every entry, most recently used first."""
        found = []
        if not self.root.is_dir():
            return found
        for algorithm_dir in sorted(self.root.iterdir()):
            if algorithm_dir.name == STAGING_DIR or not algorithm_dir.is_dir():
                continue
            for path in algorithm_dir.glob("*/*"):
                digest = path.name.split(".", 1)[0]
                partial = path.name.endswith(".partial")
                found.append(CacheEntry(algorithm_dir.name, digest, path, _tree_size(path), path.stat().st_mtime, partial))
        return sorted(found, key=lambda entry: (-entry.last_used, entry.algorithm, entry.digest))

    def prune(self, *, older_than_days: float | None = None, keep: int | None = None) -> list[CacheEntry]:
        """Delete entries unused for more than ``older_than_days``, and all but the ``keep`` most recent.

        With neither limit, every entry is deleted. Staging folders left by
        runs that stopped more than a day ago are deleted too. Returns the
        deleted entries.
        """
        entries = self.entries()
        cutoff = time.time() - older_than_days * 86400 if older_than_days is not None else None
        removed = []
        for index, entry in enumerate(entries):
            too_old = cutoff is not None and entry.last_used < cutoff
            beyond_keep = keep is not None and index >= keep
            if (older_than_days is None and keep is None) or too_old or beyond_keep:
                _remove(entry.path)
                removed.append(entry)
        self._remove_stale_staging(time.time() - STALE_STAGING_S)
        return removed

    def _remove_stale_staging(self, cutoff: float) -> None:
        staging = self.root / STAGING_DIR
        if not staging.is_dir():
            return
        for folder in staging.iterdir():
            if folder.stat().st_mtime < cutoff:
                _remove(folder)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)
