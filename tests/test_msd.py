"""Tests for the msd source against a loopback Range server: resume, streaming, faults."""
from __future__ import annotations

import tarfile
from pathlib import Path

import pytest

from ctspine_builder.errors import FetchError
from ctspine_builder.manifest.model import SourceRecord
from ctspine_builder.sources.base import open_source
from ctspine_builder.sources import msd as msd_module
from range_server import Fault, RangeServer
from msd_fixtures import (
    add_tar_file,
    cache_files,
    image_case,
    make_context,
    make_manifest,
    make_task03_tar,
    nifti_bytes,
)

TAR = "Task03_Liver.tar"


@pytest.fixture(scope="module")
def images() -> dict[str, bytes]:
    # About 0.9 MB each, so the tar spans several of the 1 MiB chunks the
    # downloader reads and a cut leaves a non-empty partial file.
    shape = (96, 96, 48)
    return {
        "imagesTr/liver_0.nii.gz": nifti_bytes(0, shape),
        "imagesTr/liver_7.nii.gz": nifti_bytes(7, shape),
        "imagesTs/liver_150.nii.gz": nifti_bytes(150, shape),
    }


@pytest.fixture
def served(tmp_path: Path, images):
    root = tmp_path / "www"
    root.mkdir()
    md5 = make_task03_tar(root / TAR, images)
    with RangeServer(root) as server:
        yield server, md5


def _setup(tmp_path: Path, locator: str, md5: str, *, case_ids=("liver_0", "liver_150"), **options):
    record = SourceRecord(id="msd", kind="msd", license="CC-BY-SA-4.0", locator=locator, options={"md5": md5})
    cases = [image_case(case_id, "msd") for case_id in case_ids]
    manifest = make_manifest(tmp_path, [record], cases)
    context = make_context(manifest, tmp_path, **options)
    return manifest, context


def _fetch(manifest, context, case_id: str) -> Path:
    source = open_source(manifest.sources["msd"], context)
    return source.fetch_image(manifest.case(case_id), context).path


def _tar_gets(server: RangeServer) -> list:
    return [r for r in server.requests if r.path == TAR and r.method == "GET"]


def _cached_images(tmp_path: Path) -> list[str]:
    return [name for name in cache_files(tmp_path / "cache") if name.startswith("sha256/")]


def test_kept_archive_extracts_once(tmp_path: Path, served, images) -> None:
    server, md5 = served
    manifest, context = _setup(tmp_path, server.url(TAR), md5)

    first = _fetch(manifest, context, "liver_0")
    second = _fetch(manifest, context, "liver_150")

    assert first.read_bytes() == images["imagesTr/liver_0.nii.gz"]
    assert second.read_bytes() == images["imagesTs/liver_150.nii.gz"]
    assert len(_tar_gets(server)) == 1
    assert f"md5/{md5[:2]}/{md5}.tar" in cache_files(tmp_path / "cache")
    # Only the two images the manifest needs are cached, not liver_7 or labels.
    assert len(_cached_images(tmp_path)) == 2
    assert not [name for name in cache_files(tmp_path / "cache") if name.endswith(".partial")]


def test_selected_cases_only_extracted(tmp_path: Path, served, images) -> None:
    server, md5 = served
    manifest, context = _setup(tmp_path, server.url(TAR), md5, selected_case_ids=["liver_150"])

    path = _fetch(manifest, context, "liver_150")

    assert path.read_bytes() == images["imagesTs/liver_150.nii.gz"]
    assert len(_cached_images(tmp_path)) == 1


def test_kept_archive_second_build_offline(tmp_path: Path, served, images) -> None:
    server, md5 = served
    manifest, context = _setup(tmp_path, server.url(TAR), md5)
    _fetch(manifest, context, "liver_0")
    server.stop()

    path = _fetch(manifest, make_context(manifest, tmp_path), "liver_150")
    assert path.read_bytes() == images["imagesTs/liver_150.nii.gz"]


def test_truncated_tar_resumes_with_range(tmp_path: Path, served, images) -> None:
    server, md5 = served
    server.add_fault(TAR, Fault("truncate", after_bytes=1_500_000))
    manifest, context = _setup(tmp_path, server.url(TAR), md5, retries=0)

    with pytest.raises(FetchError, match="failed 1 times while receiving data"):
        _fetch(manifest, context, "liver_0")
    cached = cache_files(tmp_path / "cache")
    assert _cached_images(tmp_path) == []
    assert not [name for name in cached if name.endswith(".tar")]
    partials = [name for name in cached if name.endswith(".tar.partial")]
    assert len(partials) == 1
    kept = (tmp_path / "cache" / partials[0]).stat().st_size
    assert 0 < kept <= 1_500_000

    path = _fetch(manifest, make_context(manifest, tmp_path), "liver_0")

    gets = _tar_gets(server)
    assert [request.range for request in gets] == [None, f"bytes={kept}-"]
    assert gets[1].status == 206
    assert path.read_bytes() == images["imagesTr/liver_0.nii.gz"]
    assert not [name for name in cache_files(tmp_path / "cache") if name.endswith(".partial")]


def test_no_keep_archive_stores_no_tar(tmp_path: Path, served, images) -> None:
    server, md5 = served
    manifest, context = _setup(tmp_path, server.url(TAR), md5, keep_archive=False)

    assert _fetch(manifest, context, "liver_0").read_bytes() == images["imagesTr/liver_0.nii.gz"]
    assert _fetch(manifest, context, "liver_150").read_bytes() == images["imagesTs/liver_150.nii.gz"]

    assert len(_tar_gets(server)) == 1
    cached = cache_files(tmp_path / "cache")
    assert not [name for name in cached if ".tar" in name]
    assert len(_cached_images(tmp_path)) == 2


def test_no_keep_archive_restarts_after_cut(tmp_path: Path, served, images) -> None:
    server, md5 = served
    server.add_fault(TAR, Fault("truncate", after_bytes=150_000))
    manifest, context = _setup(tmp_path, server.url(TAR), md5, keep_archive=False, retries=1)

    path = _fetch(manifest, context, "liver_150")

    assert [request.range for request in _tar_gets(server)] == [None, None]
    assert path.read_bytes() == images["imagesTs/liver_150.nii.gz"]
    assert not [name for name in cache_files(tmp_path / "cache") if ".tar" in name]


def test_no_keep_archive_cut_error(tmp_path: Path, served) -> None:
    server, md5 = served
    server.add_fault(TAR, Fault("truncate", after_bytes=150_000))
    manifest, context = _setup(tmp_path, server.url(TAR), md5, keep_archive=False, retries=0)

    with pytest.raises(FetchError) as excinfo:
        _fetch(manifest, context, "liver_150")
    message = str(excinfo.value)
    assert "was interrupted 1 times" in message
    assert "--keep-archive" in message
    assert cache_files(tmp_path / "cache") == []


def test_no_keep_archive_stall_restarts(tmp_path: Path, served, images) -> None:
    server, md5 = served
    server.add_fault(TAR, Fault("stall", after_bytes=50_000))
    manifest, context = _setup(tmp_path, server.url(TAR), md5, keep_archive=False, retries=1, read_timeout=0.5)

    path = _fetch(manifest, context, "liver_0")

    assert len(_tar_gets(server)) == 2
    assert path.read_bytes() == images["imagesTr/liver_0.nii.gz"]


def test_kept_archive_stall_resumes(tmp_path: Path, served, images) -> None:
    server, md5 = served
    server.add_fault(TAR, Fault("stall", after_bytes=1_200_000))
    manifest, context = _setup(tmp_path, server.url(TAR), md5, retries=1, read_timeout=0.5)

    path = _fetch(manifest, context, "liver_0")

    gets = _tar_gets(server)
    assert len(gets) == 2
    assert gets[0].range is None
    assert gets[1].range is not None and gets[1].range.startswith("bytes=")
    assert gets[1].status == 206
    assert path.read_bytes() == images["imagesTr/liver_0.nii.gz"]


@pytest.mark.parametrize("keep_archive", [True, False], ids=["kept", "streamed"])
def test_wrong_md5_caches_nothing(tmp_path: Path, served, keep_archive: bool) -> None:
    server, _ = served
    manifest, context = _setup(tmp_path, server.url(TAR), "0" * 32, keep_archive=keep_archive)

    with pytest.raises(FetchError) as excinfo:
        _fetch(manifest, context, "liver_0")
    assert "MD5" in str(excinfo.value)
    assert "expected 00000000000000000000000000000000" in str(excinfo.value)
    assert cache_files(tmp_path / "cache") == []


@pytest.mark.parametrize(
    "keep_archive, fault",
    [(True, "html"), (False, "html"), (False, "html-octet")],
    ids=["kept", "streamed", "streamed-octet-stream"],
)
def test_html_page_instead_of_tar(tmp_path: Path, served, keep_archive: bool, fault: str) -> None:
    server, md5 = served
    server.add_fault(TAR, Fault(fault))
    manifest, context = _setup(tmp_path, server.url(TAR), md5, keep_archive=keep_archive)

    with pytest.raises(FetchError, match="HTML page"):
        _fetch(manifest, context, "liver_0")
    assert cache_files(tmp_path / "cache") == []


def test_http_429_retry_after_honoured(tmp_path: Path, served, images) -> None:
    server, md5 = served
    server.add_fault(TAR, Fault("status", status=429, retry_after="1"))
    sleeps: list[float] = []
    manifest, context = _setup(tmp_path, server.url(TAR), md5, retries=2, sleeps=sleeps)

    path = _fetch(manifest, context, "liver_0")

    assert sleeps == [1.0]
    assert [request.status for request in _tar_gets(server)] == [429, 200]
    assert path.read_bytes() == images["imagesTr/liver_0.nii.gz"]


def test_http_500_exhausts_retries(tmp_path: Path, served) -> None:
    server, md5 = served
    server.add_fault(TAR, Fault("status", status=500), times=3)
    manifest, context = _setup(tmp_path, server.url(TAR), md5, retries=2)

    with pytest.raises(FetchError, match="failed after 3 attempts: HTTP 500"):
        _fetch(manifest, context, "liver_0")
    assert cache_files(tmp_path / "cache") == []


@pytest.mark.parametrize(
    "entry, reason",
    [
        (lambda tar: add_tar_file(tar, "Task03_Liver/imagesTr/../../../escape.nii.gz", b"x"), "'..'"),
        (lambda tar: add_tar_file(tar, "/tmp/escape.nii.gz", b"x"), "absolute path"),
        (lambda tar: tar.addfile(_symlink("Task03_Liver/imagesTr/liver_9.nii.gz", "/etc/passwd")), "link to"),
    ],
    ids=["dotdot", "absolute", "symlink"],
)
def test_escaping_member_rejected(tmp_path: Path, images, entry, reason: str) -> None:
    archive = tmp_path / TAR
    md5 = make_task03_tar(archive, images, extra=entry)
    manifest, context = _setup(tmp_path, str(archive), md5)

    with pytest.raises(FetchError) as excinfo:
        _fetch(manifest, context, "liver_0")
    assert reason in str(excinfo.value)
    assert "rejected" in str(excinfo.value)
    assert cache_files(tmp_path / "cache") == []
    assert not (tmp_path / "escape.nii.gz").exists()


def _symlink(name: str, target: str) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = tarfile.SYMTYPE
    info.linkname = target
    return info


@pytest.mark.parametrize("as_url", [False, True], ids=["path", "file-url"])
def test_local_tar_accepted(tmp_path: Path, images, as_url: bool) -> None:
    archive = tmp_path / "downloads" / TAR
    archive.parent.mkdir()
    md5 = make_task03_tar(archive, images)
    locator = archive.as_uri() if as_url else str(archive)
    manifest, context = _setup(tmp_path, locator, md5)

    assert _fetch(manifest, context, "liver_150").read_bytes() == images["imagesTs/liver_150.nii.gz"]
    assert archive.is_file()
    assert not [name for name in cache_files(tmp_path / "cache") if ".tar" in name]


def test_local_tar_wrong_md5(tmp_path: Path, images) -> None:
    archive = tmp_path / TAR
    make_task03_tar(archive, images)
    manifest, context = _setup(tmp_path, str(archive), "f" * 32)

    with pytest.raises(FetchError, match="nothing from it was cached"):
        _fetch(manifest, context, "liver_0")
    assert cache_files(tmp_path / "cache") == []


@pytest.mark.parametrize("level", ["parent", "task-folder"])
def test_extracted_folder_accepted(tmp_path: Path, images, level: str) -> None:
    parent = tmp_path / "msd"
    for key, data in images.items():
        path = parent / "Task03_Liver" / key
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    folder = parent if level == "parent" else parent / "Task03_Liver"
    manifest, context = _setup(tmp_path, str(folder), "")

    path = _fetch(manifest, context, "liver_150")
    assert path.samefile(parent / "Task03_Liver" / "imagesTs" / "liver_150.nii.gz")
    assert cache_files(tmp_path / "cache") == []


def test_extracted_folder_truncated_image(tmp_path: Path, images) -> None:
    folder = tmp_path / "Task03_Liver"
    path = folder / "imagesTr" / "liver_0.nii.gz"
    path.parent.mkdir(parents=True)
    path.write_bytes(images["imagesTr/liver_0.nii.gz"][:20_000])
    manifest, context = _setup(tmp_path, str(folder), "", case_ids=("liver_0",))

    with pytest.raises(FetchError) as excinfo:
        _fetch(manifest, context, "liver_0")
    message = str(excinfo.value)
    assert "case liver_0" in message
    assert "image file is a truncated or corrupt gzip" in message


def test_case_not_in_archive(tmp_path: Path, served) -> None:
    server, md5 = served
    manifest, context = _setup(tmp_path, server.url(TAR), md5, case_ids=("liver_0", "liver_199"))

    with pytest.raises(FetchError) as excinfo:
        _fetch(manifest, context, "liver_199")
    message = str(excinfo.value)
    assert "case liver_199" in message
    assert "imagesTr/liver_199.nii.gz, imagesTs/liver_199.nii.gz" in message
    # The other case was extracted in the same pass and is still usable.
    assert len(_tar_gets(server)) == 1
    assert _fetch(manifest, context, "liver_0").is_file()


def test_invalid_image_locator(tmp_path: Path, served) -> None:
    server, md5 = served
    record = SourceRecord(id="msd", kind="msd", license="CC-BY-SA-4.0", locator=server.url(TAR))
    manifest = make_manifest(tmp_path, [record], [image_case("liver_0", "msd", "labelsTr/liver_0.nii.gz")])
    context = make_context(manifest, tmp_path)

    with pytest.raises(FetchError, match="'labelsTr/liver_0.nii.gz' is not an image in imagesTr or imagesTs"):
        _fetch(manifest, context, "liver_0")


def test_fetch_mask_rejected(tmp_path: Path, served) -> None:
    server, md5 = served
    manifest, context = _setup(tmp_path, server.url(TAR), md5)
    source = open_source(manifest.sources["msd"], context)

    with pytest.raises(FetchError, match="provides images only"):
        source.fetch_mask(manifest.case("liver_0"), context)


def test_plan_counts_tar_once(tmp_path: Path, served, monkeypatch) -> None:
    server, md5 = served
    monkeypatch.setattr(msd_module, "_PLANNED_ARCHIVES", set())
    monkeypatch.setattr(msd_module, "_REMOTE_SIZES", {})
    manifest, context = _setup(tmp_path, server.url(TAR), md5)
    source = open_source(manifest.sources["msd"], context)
    size = (server.state.root / TAR).stat().st_size

    first = source.plan(manifest.case("liver_0"), context)
    second = source.plan(manifest.case("liver_150"), context)

    assert first.download_bytes == size
    assert second.download_bytes == 0
    assert first.disk_bytes > size
    assert [request.method for request in server.requests] == ["HEAD"]
    assert cache_files(tmp_path / "cache") == []


def test_missing_local_path(tmp_path: Path) -> None:
    with pytest.raises(FetchError, match="no tar file or folder at"):
        manifest, context = _setup(tmp_path, str(tmp_path / "absent.tar"), "")
        open_source(manifest.sources["msd"], context)
