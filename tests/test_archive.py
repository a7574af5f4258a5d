"""Tests for safe zip and tar extraction: entries that escape the folder are rejected."""
from __future__ import annotations

import io
import stat
import tarfile
import zipfile
from pathlib import Path

import pytest

from ctspine_builder.errors import FetchError
from ctspine_builder.fetch.archive import (
    extract_tar,
    extract_zip,
    extract_tar_stream,
    safe_member_path,
)


def _add_file(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def _add_link(tar: tarfile.TarFile, name: str, target: str, kind: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = target
    tar.addfile(info)


def _make_tar(path: Path, build) -> Path:
    with tarfile.open(path, "w", format=tarfile.GNU_FORMAT) as tar:
        build(tar)
    return path


def _files_under(folder: Path) -> list[str]:
    if not folder.exists():
        return []
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file() or p.is_symlink())


@pytest.mark.parametrize(
    "name, reason",
    [
        ("../evil.txt", "'..'"),
        ("a/../../evil.txt", "'..'"),
        ("/etc/passwd", "absolute path"),
        ("C:/windows/evil.txt", "absolute path"),
        ("..\\evil.txt", "'..'"),
        ("", "empty name"),
    ],
)
def test_safe_member_path_rejects(tmp_path: Path, name: str, reason: str) -> None:
    with pytest.raises(FetchError) as excinfo:
        safe_member_path(tmp_path, name, archive="series.zip")
    message = str(excinfo.value)
    assert reason in message
    assert "series.zip" in message
    assert repr(name) in message


def test_safe_member_path_accepts_nested(tmp_path: Path) -> None:
    path = safe_member_path(tmp_path, "./Task03_Liver/imagesTr/liver_0.nii.gz")
    assert path == tmp_path.resolve() / "Task03_Liver" / "imagesTr" / "liver_0.nii.gz"


def test_safe_member_path_rejects_existing_symlink(tmp_path: Path) -> None:
    target = tmp_path / "target"
    target.mkdir()
    outside = tmp_path / "outside"
    outside.mkdir()
    (target / "link").symlink_to(outside)
    with pytest.raises(FetchError, match="resolves outside"):
        safe_member_path(target, "link/file.txt")


def test_extract_tar_writes_selected_members(tmp_path: Path) -> None:
    def build(tar):
        _add_file(tar, "Task03_Liver/imagesTr/liver_0.nii.gz", b"zero")
        _add_file(tar, "Task03_Liver/imagesTr/liver_1.nii.gz", b"one")
        _add_file(tar, "Task03_Liver/labelsTr/liver_0.nii.gz", b"label")

    archive = _make_tar(tmp_path / "t.tar", build)
    out = tmp_path / "out"
    written = extract_tar(archive, out, members=["Task03_Liver/imagesTr/liver_1.nii.gz"])
    assert list(written) == ["Task03_Liver/imagesTr/liver_1.nii.gz"]
    assert written["Task03_Liver/imagesTr/liver_1.nii.gz"].read_bytes() == b"one"
    assert _files_under(out) == ["Task03_Liver/imagesTr/liver_1.nii.gz"]


def test_extract_tar_missing_member(tmp_path: Path) -> None:
    archive = _make_tar(tmp_path / "t.tar", lambda tar: _add_file(tar, "a.txt", b"a"))
    with pytest.raises(FetchError, match="entries not found in the tar file: b.txt"):
        extract_tar(archive, tmp_path / "out", members=["b.txt"])


@pytest.mark.parametrize(
    "build, reason",
    [
        (lambda tar: _add_file(tar, "../escape.txt", b"x"), "'..'"),
        (lambda tar: _add_file(tar, "/tmp/escape.txt", b"x"), "absolute path"),
        (lambda tar: _add_link(tar, "imagesTr/link", "/etc/passwd", tarfile.SYMTYPE), "link to '/etc/passwd'"),
        (lambda tar: _add_link(tar, "imagesTr/hard", "/etc/passwd", tarfile.LNKTYPE), "link to '/etc/passwd'"),
        (lambda tar: _add_link(tar, "imagesTr/dev", "", tarfile.CHRTYPE), "device file"),
        (lambda tar: _add_link(tar, "imagesTr/fifo", "", tarfile.FIFOTYPE), "FIFO"),
    ],
    ids=["dotdot", "absolute", "symlink", "hardlink", "device", "fifo"],
)
def test_extract_tar_rejects_unsafe_entry(tmp_path: Path, build, reason: str) -> None:
    archive = _make_tar(tmp_path / "bad.tar", build)
    out = tmp_path / "out"
    with pytest.raises(FetchError) as excinfo:
        extract_tar(archive, out)
    assert reason in str(excinfo.value)
    assert "bad.tar" in str(excinfo.value)
    assert _files_under(out) == []
    assert not (tmp_path / "escape.txt").exists()


def test_extract_tar_symlink_then_write_through_it(tmp_path: Path) -> None:
    # A classic attack: a symlink entry, then a file entry written through it.
    outside = tmp_path / "outside"
    outside.mkdir()

    def build(tar):
        _add_link(tar, "dir", str(outside), tarfile.SYMTYPE)
        _add_file(tar, "dir/owned.txt", b"x")

    archive = _make_tar(tmp_path / "bad.tar", build)
    with pytest.raises(FetchError, match="link to"):
        extract_tar(archive, tmp_path / "out")
    assert list(outside.iterdir()) == []


def test_extract_tar_stream_truncated(tmp_path: Path) -> None:
    archive = _make_tar(tmp_path / "t.tar", lambda tar: _add_file(tar, "a.bin", b"x" * 5000))
    data = archive.read_bytes()[:1500]
    out = tmp_path / "out"
    with pytest.raises(FetchError, match="damaged or truncated"):
        extract_tar_stream(io.BytesIO(data), "t.tar", out)
    assert _files_under(out) == []


def _make_zip(path: Path, entries: list[tuple[zipfile.ZipInfo | str, bytes]]) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for info, data in entries:
            zf.writestr(info, data)
    return path


def test_extract_zip_writes_all(tmp_path: Path) -> None:
    archive = _make_zip(tmp_path / "s.zip", [("1-01.dcm", b"a"), ("LICENSE", b"lic"), ("md5hashes.csv", b"m")])
    out = tmp_path / "out"
    written = extract_zip(archive, out)
    assert sorted(p.name for p in written) == ["1-01.dcm", "LICENSE", "md5hashes.csv"]
    assert (out / "LICENSE").read_bytes() == b"lic"
    assert not list(out.glob("*.partial"))


@pytest.mark.parametrize(
    "name, reason",
    [("../escape.dcm", "'..'"), ("/abs/escape.dcm", "absolute path"), ("sub\\..\\..\\escape.dcm", "'..'")],
)
def test_extract_zip_rejects_unsafe_name(tmp_path: Path, name: str, reason: str) -> None:
    archive = _make_zip(tmp_path / "s.zip", [("ok.dcm", b"a"), (name, b"x")])
    out = tmp_path / "out"
    with pytest.raises(FetchError) as excinfo:
        extract_zip(archive, out)
    assert reason in str(excinfo.value)
    assert _files_under(out) == []


def test_extract_zip_rejects_symlink_entry(tmp_path: Path) -> None:
    info = zipfile.ZipInfo("link.dcm")
    info.external_attr = (stat.S_IFLNK | 0o777) << 16
    archive = _make_zip(tmp_path / "s.zip", [(info, b"/etc/passwd")])
    with pytest.raises(FetchError, match="symbolic link"):
        extract_zip(archive, tmp_path / "out")
    assert _files_under(tmp_path / "out") == []


def test_extract_zip_damaged(tmp_path: Path) -> None:
    archive = _make_zip(tmp_path / "s.zip", [("a.dcm", b"a" * 1000)])
    archive.write_bytes(archive.read_bytes()[:50])
    with pytest.raises(FetchError, match="zip file is damaged"):
        extract_zip(archive, tmp_path / "out")
