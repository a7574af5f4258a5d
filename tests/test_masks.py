"""Tests for the masks-folder and masks-hf sources: lookup, ambiguity, bad files, pinned revisions."""
from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from ctspine_builder.errors import FetchError, ManifestError
from ctspine_builder.manifest.model import FileRef, SourceRecord
from ctspine_builder.sources import masks as masks_module
from ctspine_builder.sources.base import open_source
from hub_server import Blob, Commit, start_hub
from msd_fixtures import cache_files, image_case, make_context, make_manifest, nifti_bytes
from range_server import HTML_PAGE

CASE = "volume-covid19-A-0003_ct"
SUBSET = "COVID-19"


def _mask_bytes(seed: int) -> bytes:
    return nifti_bytes(seed, shape=(16, 16, 8))


def _folder_setup(tmp_path: Path, folder: Path, mask_locator: str = ""):
    record = SourceRecord(id="masks", kind="masks-folder", license="CC-BY-NC-SA-4.0", locator=str(folder))
    case = image_case(CASE, "images", subset=SUBSET, mask=FileRef("masks", mask_locator))
    manifest = make_manifest(tmp_path, [record], [case])
    return manifest, make_context(manifest, tmp_path)


def _fetch_mask(manifest, context, case_id: str = CASE) -> Path:
    return open_source(manifest.sources["masks"], context).fetch_mask(manifest.case(case_id), context)


def _write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def test_folder_nested_seg_name(tmp_path: Path) -> None:
    folder = tmp_path / "CTSpine1K masks"
    expected = _write(folder / "download 2" / "labels" / SUBSET / f"{CASE}_seg.nii.gz", _mask_bytes(1))
    _write(folder / "labels" / SUBSET / "volume-covid19-A-0011_ct_seg.nii.gz", _mask_bytes(2))
    manifest, context = _folder_setup(tmp_path, folder)

    assert _fetch_mask(manifest, context) == expected


def test_folder_plain_name_fallback(tmp_path: Path) -> None:
    folder = tmp_path / "masks"
    expected = _write(folder / "a" / f"{CASE}.nii.gz", _mask_bytes(1))
    manifest, context = _folder_setup(tmp_path, folder)

    assert _fetch_mask(manifest, context) == expected


def test_folder_seg_name_preferred(tmp_path: Path) -> None:
    folder = tmp_path / "data"
    _write(folder / "volumes" / SUBSET / f"{CASE}.nii.gz", _mask_bytes(1))
    expected = _write(folder / "labels" / SUBSET / f"{CASE}_seg.nii.gz", _mask_bytes(2))
    manifest, context = _folder_setup(tmp_path, folder)

    assert _fetch_mask(manifest, context) == expected


def test_folder_mask_locator_used(tmp_path: Path) -> None:
    folder = tmp_path / "masks"
    expected = _write(folder / SUBSET / f"{CASE}_seg.nii.gz", _mask_bytes(1))
    _write(folder / "old" / f"{CASE}_seg.nii.gz", _mask_bytes(2))
    manifest, context = _folder_setup(tmp_path, folder, mask_locator=f"{SUBSET}/{CASE}_seg.nii.gz")

    assert _fetch_mask(manifest, context) == expected


def test_folder_subset_folder_breaks_tie(tmp_path: Path) -> None:
    folder = tmp_path / "masks"
    expected = _write(folder / SUBSET / f"{CASE}_seg.nii.gz", _mask_bytes(1))
    _write(folder / "backup" / f"{CASE}_seg.nii.gz", _mask_bytes(1))
    manifest, context = _folder_setup(tmp_path, folder)

    assert _fetch_mask(manifest, context) == expected


def test_folder_ambiguous_masks(tmp_path: Path) -> None:
    folder = tmp_path / "masks"
    _write(folder / "v1" / SUBSET / f"{CASE}_seg.nii.gz", _mask_bytes(1))
    _write(folder / "v2" / SUBSET / f"{CASE}_seg.nii.gz", _mask_bytes(2))
    manifest, context = _folder_setup(tmp_path, folder)

    with pytest.raises(FetchError) as excinfo:
        _fetch_mask(manifest, context)
    message = str(excinfo.value)
    assert f"case {CASE}" in message
    assert "2 candidate masks" in message
    assert f"v1/{SUBSET}/{CASE}_seg.nii.gz" in message
    assert f"v2/{SUBSET}/{CASE}_seg.nii.gz" in message
    assert "set the case's mask locator" in message


def test_folder_mask_missing(tmp_path: Path) -> None:
    folder = tmp_path / "masks"
    _write(folder / SUBSET / "volume-covid19-A-0011_ct_seg.nii.gz", _mask_bytes(1))
    manifest, context = _folder_setup(tmp_path, folder)

    with pytest.raises(FetchError) as excinfo:
        _fetch_mask(manifest, context)
    message = str(excinfo.value)
    assert "mask not found under" in message
    assert f"{CASE}_seg.nii.gz" in message


def test_folder_missing_folder(tmp_path: Path) -> None:
    manifest, context = _folder_setup(tmp_path, tmp_path / "absent")
    with pytest.raises(FetchError, match="masks folder .* not found"):
        open_source(manifest.sources["masks"], context)


def test_folder_html_mask(tmp_path: Path) -> None:
    folder = tmp_path / "masks"
    _write(folder / SUBSET / f"{CASE}_seg.nii.gz", HTML_PAGE)
    manifest, context = _folder_setup(tmp_path, folder)

    with pytest.raises(FetchError) as excinfo:
        _fetch_mask(manifest, context)
    message = str(excinfo.value)
    assert "mask file is an HTML page" in message
    assert "virus-scan page" in message
    assert "gdown" in message
    assert "masks-hf" in message


def test_folder_truncated_gzip_mask(tmp_path: Path) -> None:
    folder = tmp_path / "masks"
    _write(folder / SUBSET / f"{CASE}_seg.nii.gz", _mask_bytes(1)[:300])
    manifest, context = _folder_setup(tmp_path, folder)

    with pytest.raises(FetchError, match="mask file is a truncated or corrupt gzip"):
        _fetch_mask(manifest, context)


def test_folder_gzip_without_nifti(tmp_path: Path) -> None:
    import gzip

    folder = tmp_path / "masks"
    _write(folder / SUBSET / f"{CASE}_seg.nii.gz", gzip.compress(b"not a nifti header at all" * 20))
    manifest, context = _folder_setup(tmp_path, folder)

    with pytest.raises(FetchError, match="gzip but does not contain a NIfTI header"):
        _fetch_mask(manifest, context)


def test_folder_fetch_image_rejected(tmp_path: Path) -> None:
    folder = tmp_path / "masks"
    folder.mkdir()
    manifest, context = _folder_setup(tmp_path, folder)
    source = open_source(manifest.sources["masks"], context)

    with pytest.raises(FetchError, match="provides masks only"):
        source.fetch_image(manifest.case(CASE), context)


REPO = "community/CTSpine1K"


@pytest.fixture
def hub(tmp_path, monkeypatch):
    """A Hub stand-in with a dataset repo whose two commits hold different masks."""
    server, state, url = start_hub()
    repo = state.create_repo(REPO, private=False)
    first_mask, second_mask = _mask_bytes(11), _mask_bytes(12)
    path = f"raw_data/labels/{SUBSET}/{CASE}_seg.nii.gz"
    commits = []
    parent = repo.branches["main"]
    for title, data in (("v1", first_mask), ("v2", second_mask)):
        files = dict(repo.commits[parent].files)
        files[path] = Blob(data, lfs_oid=hashlib.sha256(data).hexdigest())
        files["raw_data/labels/bad/html_seg.nii.gz"] = Blob(HTML_PAGE)
        sha = state.new_sha(title)
        repo.commits[sha] = Commit(sha, files, title, parent)
        parent = sha
        commits.append(sha)
    repo.branches["main"] = parent
    monkeypatch.setenv("HF_ENDPOINT", url)
    monkeypatch.setenv("HF_HUB_DISABLE_XET", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    monkeypatch.setattr(masks_module, "_RESOLVED_REVISIONS", {})
    yield state, commits, (first_mask, second_mask)
    server.shutdown()
    server.server_close()


def _hub_setup(tmp_path: Path, revision: str | None, *, case_id: str = CASE, subset: str = SUBSET, **options):
    if revision is not None:
        options["revision"] = revision
    record = SourceRecord(id="masks", kind="masks-hf", license="CC-BY-NC-SA-4.0", locator=REPO, options=options)
    case = image_case(case_id, "images", subset=subset, mask=FileRef("masks", ""))
    manifest = make_manifest(tmp_path, [record], [case])
    return manifest, make_context(manifest, tmp_path)


def test_hub_pinned_revision(tmp_path: Path, hub) -> None:
    state, commits, (first_mask, _) = hub
    manifest, context = _hub_setup(tmp_path, commits[0])

    path = _fetch_mask(manifest, context)

    assert path.read_bytes() == first_mask
    assert path.is_relative_to(tmp_path / "cache")
    resolves = [request for request in state.requests if "/resolve/" in request[1]]
    assert resolves
    assert all(f"/resolve/{commits[0]}/" in request[1] for request in resolves)
    # No staging folder or huggingface metadata is left in the cache.
    assert [name for name in cache_files(tmp_path / "cache") if not name.startswith("hf/")] == []


def test_hub_second_fetch_uses_cache(tmp_path: Path, hub) -> None:
    state, commits, (first_mask, _) = hub
    manifest, context = _hub_setup(tmp_path, commits[0])
    _fetch_mask(manifest, context)
    count = len(state.requests)

    path = _fetch_mask(manifest, make_context(manifest, tmp_path))

    assert path.read_bytes() == first_mask
    assert len(state.requests) == count


def test_hub_branch_resolved_and_warned(tmp_path: Path, hub, caplog) -> None:
    state, commits, (_, second_mask) = hub
    manifest, context = _hub_setup(tmp_path, "main")

    with caplog.at_level("WARNING", logger="ctspine_builder.sources.masks"):
        path = _fetch_mask(manifest, context)

    assert path.read_bytes() == second_mask
    assert f"using its current commit {commits[1]}" in caplog.text


def test_hub_revision_required(tmp_path: Path, hub) -> None:
    manifest, context = _hub_setup(tmp_path, None)
    with pytest.raises(ManifestError, match="needs a repository id .* and a revision"):
        open_source(manifest.sources["masks"], context)


def test_hub_unknown_revision(tmp_path: Path, hub) -> None:
    manifest, context = _hub_setup(tmp_path, "v9.9.9")
    with pytest.raises(FetchError, match="revision not found: dataset community/CTSpine1K at revision v9.9.9"):
        _fetch_mask(manifest, context)


def test_hub_missing_file(tmp_path: Path, hub) -> None:
    _, commits, _ = hub
    manifest, context = _hub_setup(tmp_path, commits[0], case_id="liver_0", subset="MSD-T10")
    with pytest.raises(FetchError) as excinfo:
        _fetch_mask(manifest, context, "liver_0")
    message = str(excinfo.value)
    assert "case liver_0" in message
    assert "mask file raw_data/labels/MSD-T10/liver_0_seg.nii.gz not found" in message
    assert cache_files(tmp_path / "cache") == []


def test_hub_html_file_rejected(tmp_path: Path, hub) -> None:
    _, commits, _ = hub
    manifest, context = _hub_setup(tmp_path, commits[0], case_id="html", subset="bad")
    with pytest.raises(FetchError, match="mask file is an HTML page"):
        _fetch_mask(manifest, context, "html")
    assert cache_files(tmp_path / "cache") == []


def test_hub_locator_base_and_pattern(tmp_path: Path, hub) -> None:
    _, commits, (first_mask, _) = hub
    record = SourceRecord(
        id="masks", kind="masks-hf", license="CC-BY-NC-SA-4.0", locator=REPO,
        options={"revision": commits[0], "locator_base": "raw_data/labels"},
    )
    case = image_case(CASE, "images", subset=SUBSET, mask=FileRef("masks", f"{SUBSET}/{CASE}_seg.nii.gz"))
    manifest = make_manifest(tmp_path, [record], [case])
    source = open_source(record, make_context(manifest, tmp_path))

    assert source.repo_path(case) == f"raw_data/labels/{SUBSET}/{CASE}_seg.nii.gz"
    assert _fetch_mask(manifest, make_context(manifest, tmp_path)).read_bytes() == first_mask


def test_hub_plan_size(tmp_path: Path, hub) -> None:
    _, commits, (first_mask, _) = hub
    manifest, context = _hub_setup(tmp_path, commits[0])
    source = open_source(manifest.sources["masks"], context)

    plan = source.plan(manifest.case(CASE), context)

    assert plan.download_bytes == len(first_mask)
    assert cache_files(tmp_path / "cache") == []
