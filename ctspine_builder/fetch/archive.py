"""Fetch stage: safe extraction of zip and tar archives into a target folder.

Every entry is checked before anything is written: a name that is absolute,
contains ``..`` or otherwise resolves outside the target folder is rejected,
and so are symbolic links, hard links, device files and FIFOs. Each file is
written under a temporary name beside its final path and renamed into place
only when complete, so an interrupted extraction never leaves a partial file
under a final name.
"""
from __future__ import annotations

import logging
import shutil
import stat
import tarfile
import zipfile
from collections.abc import Callable, Iterable
from pathlib import Path, PurePosixPath
from typing import IO

from ctspine_builder.errors import FetchError
from ctspine_builder.fileio import atomic_path

logger = logging.getLogger(__name__)

COPY_CHUNK_BYTES = 1 << 20

_UNSAFE_HINT = "The archive is damaged or was not made for this dataset; delete it and download it again."


def _unsafe(archive: str | Path, member_name: str, reason: str) -> FetchError:
    return FetchError(f"archive entry {member_name!r} rejected: {reason}", path=archive, hint=_UNSAFE_HINT)


def safe_member_path(target_dir: str | Path, member_name: str, *, archive: str | Path = "archive") -> Path:
    """Return the path inside ``target_dir`` where entry ``member_name`` belongs.

    Raises FetchError naming the archive and entry when the name is empty,
    absolute (``/x``, ``C:x``, ``\\\\host``), contains a ``..`` component or a
    NUL byte, or resolves outside ``target_dir`` through a symbolic link that
    already exists there.
    """
    if not member_name or "\x00" in member_name:
        raise _unsafe(archive, member_name, "empty name or NUL byte in the name")

    # Zip files written on Windows may use backslashes as separators, so both
    # separators count when looking for absolute paths and "..".
    normalized = member_name.replace("\\", "/")
    if normalized.startswith("/") or (len(normalized) > 1 and normalized[1] == ":"):
        raise _unsafe(archive, member_name, "absolute path")
    parts = [part for part in PurePosixPath(normalized).parts if part not in ("", ".")]
    if ".." in parts:
        raise _unsafe(archive, member_name, "path contains '..'")
    if not parts:
        raise _unsafe(archive, member_name, "name has no file component")

    root = Path(target_dir).resolve()
    candidate = root.joinpath(*parts)
    if not candidate.resolve().is_relative_to(root):
        raise _unsafe(archive, member_name, f"path resolves outside {root}")
    return candidate


def normalize_member_name(name: str) -> str:
    """Return an entry name without a leading ``./`` and with ``/`` separators."""
    name = name.replace("\\", "/")
    while name.startswith("./"):
        name = name[2:]
    return name


def check_tar_member(archive: str | Path, member: tarfile.TarInfo) -> None:
    """Raise FetchError unless the tar entry is a regular file or a folder."""
    if member.issym() or member.islnk():
        raise _unsafe(archive, member.name, f"link to {member.linkname!r}")
    if member.ischr() or member.isblk() or member.isfifo():
        raise _unsafe(archive, member.name, "device file or FIFO")
    if not (member.isfile() or member.isdir()):
        raise _unsafe(archive, member.name, f"unsupported tar entry type {member.type!r}")


def check_zip_member(archive: str | Path, info: zipfile.ZipInfo) -> None:
    """Raise FetchError when a zip entry is a symbolic link or special file.

    Zip has no link type of its own. Unix tools store the file mode in the
    top 16 bits of ``external_attr``. Entries with no file type in that mode
    count as regular files, because Python's zipfile writes permission bits
    only. Regular files and folders are accepted.
    """
    mode = info.external_attr >> 16
    file_type = stat.S_IFMT(mode)
    if file_type and not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
        kind = "symbolic link" if stat.S_ISLNK(mode) else "special file"
        raise _unsafe(archive, info.filename, kind)


def copy_stream_atomic(source: IO[bytes], dest: Path, *, on_chunk: Callable[[bytes], None] | None = None) -> None:
    """Copy a binary stream to ``dest`` through a temporary file and a rename."""
    with atomic_path(dest) as tmp, open(tmp, "wb") as out:
        for chunk in iter(lambda: source.read(COPY_CHUNK_BYTES), b""):
            if on_chunk is not None:
                on_chunk(chunk)
            out.write(chunk)


def extract_zip(
    archive: str | Path,
    target_dir: str | Path,
    *,
    members: Iterable[str] | None = None,
) -> list[Path]:
    """Extract a zip file safely and return the paths of the files written.

    All entries are checked before the first file is written, so a rejected
    archive leaves nothing behind. ``members`` restricts extraction to those
    entry names; a name that is not in the archive raises FetchError.
    """
    archive = Path(archive)
    target = Path(target_dir)
    try:
        with zipfile.ZipFile(archive) as zf:
            infos = _select_zip_members(archive, zf, members)
            planned = []
            for info in infos:
                check_zip_member(archive, info)
                planned.append((info, safe_member_path(target, info.filename, archive=archive)))

            written = []
            for info, dest in planned:
                if info.is_dir():
                    dest.mkdir(parents=True, exist_ok=True)
                    continue
                with zf.open(info) as source:
                    copy_stream_atomic(source, dest)
                written.append(dest)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError) as exc:
        raise FetchError(f"zip file is damaged: {exc}", path=archive, hint="Delete it and download it again.") from exc
    logger.debug("extracted %d files from %s", len(written), archive.name)
    return written


def _select_zip_members(
    archive: Path, zf: zipfile.ZipFile, members: Iterable[str] | None
) -> list[zipfile.ZipInfo]:
    infos = zf.infolist()
    if members is None:
        return infos
    by_name = {info.filename: info for info in infos}
    selected = list(members)
    missing = [name for name in selected if name not in by_name]
    if missing:
        raise FetchError(f"entries not found in the zip file: {', '.join(missing)}", path=archive)
    return [by_name[name] for name in selected]


def extract_tar_stream(
    fileobj: IO[bytes],
    archive: str | Path,
    target_dir: str | Path,
    *,
    members: Iterable[str] | None = None,
    select: Callable[[str], bool] | None = None,
) -> dict[str, Path]:
    """Extract regular files from a tar read as a forward-only stream.

    The stream is opened with mode ``r|*`` and read once from start to end
    without seeking, so an HTTP response body works. Every entry is checked
    with `check_tar_member` and `safe_member_path`, selected or not. With
    ``members`` only those entry names (compared after
    `normalize_member_name`) are written, and with ``select`` only names for
    which it returns True. Returns entry name -> path written.
    A rejected, damaged or truncated archive raises FetchError. Files written
    before the error stay complete under their final names, so callers that
    must not expose them extract into a staging folder.
    """
    target = Path(target_dir)
    selected = {normalize_member_name(name) for name in members} if members is not None else None
    written: dict[str, Path] = {}
    try:
        with tarfile.open(fileobj=fileobj, mode="r|*") as tar:
            for member in tar:
                check_tar_member(archive, member)
                dest = safe_member_path(target, member.name, archive=archive)
                name = normalize_member_name(member.name)
                if member.isdir() or (selected is not None and name not in selected):
                    continue
                if select is not None and not select(name):
                    continue
                source = tar.extractfile(member)
                if source is not None:
                    copy_stream_atomic(source, dest)
                    written[name] = dest
    except (tarfile.TarError, EOFError) as exc:
        raise FetchError(f"tar archive is damaged or truncated: {exc}", path=archive, hint=_UNSAFE_HINT) from exc
    return written


def extract_tar(
    archive: str | Path,
    target_dir: str | Path,
    *,
    members: Iterable[str] | None = None,
) -> dict[str, Path]:
    """Extract regular files of a tar file safely, in one pass.

    Returns a mapping from entry name to the path written. With ``members``
    only those entry names are written (others are still checked and skipped);
    a name not found in the archive raises FetchError. A rejected entry stops
    the extraction; files already written stay complete under their names.
    """
    archive = Path(archive)
    selected = [normalize_member_name(name) for name in members] if members is not None else None
    with open(archive, "rb") as handle:
        written = extract_tar_stream(handle, archive, target_dir, members=selected)

    if selected is not None:
        missing = sorted(set(selected) - written.keys())
        if missing:
            raise FetchError(f"entries not found in the tar file: {', '.join(missing)}", path=archive)
    return written


def remove_tree(path: Path) -> None:
    """Remove a staging folder and everything in it, if it exists."""
    shutil.rmtree(path, ignore_errors=True)
