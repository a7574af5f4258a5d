"""Tests of the tcia source against the loopback NBIA v4 stand-in: downloads, checks, cache and faults."""
from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pydicom
import pytest

from ctspine_builder import __version__
from ctspine_builder.errors import FetchError
from ctspine_builder.fetch.cache import Cache
from ctspine_builder.manifest.model import CaseRecord, DatasetInfo, FileRef, Manifest, SourceRecord
from ctspine_builder.sources.base import BuildContext, open_source
from ctspine_builder.sources.tcia_naming import series_folder_name, study_folder_name
from tests.dicomgen import write_series
from tests.nbia_server import FakeSeries, NbiaServer, series_from_folder

COLLECTION = "CT COLONOGRAPHY"
SOURCE_ID = "tcia-colonog"


def make_series(tmp_path: Path, patient_id: str, *, seed: int = 0, slices: int = 4, **fields) -> FakeSeries:
    info = write_series(tmp_path / "dicom" / f"{patient_id}-{seed}", rows=12, cols=10, slices=slices, seed=seed)
    return series_from_folder(info.folder, collection=COLLECTION, patient_id=patient_id, **fields)


def hint_for(series: FakeSeries) -> str:
    record = series.record()
    return f"{series.patient_id}/{study_folder_name(record)}/{series_folder_name(record)}"


def make_manifest(root: Path, series: list[FakeSeries], *, license: str = "CC-BY-4.0") -> Manifest:
    source = SourceRecord(id=SOURCE_ID, kind="tcia", license=license, locator=COLLECTION)
    cases = [
        CaseRecord(case_id=s.patient_id, subset="COLONOG", split="trainset",
                   image=FileRef(SOURCE_ID, s.patient_id), series_hint=hint_for(s))
        for s in series
    ]
    return Manifest(DatasetInfo("test", "1.0.0", "cite"), {SOURCE_ID: source}, cases, root)


def make_context(tmp_path: Path, server: NbiaServer, manifest: Manifest, **options) -> BuildContext:
    defaults = {"nbia_url": server.url, "progress": False, "http_backoff_s": 0.01, "http_timeout": (2.0, 2.0)}
    defaults.update(options)
    return BuildContext(manifest, tmp_path / "work", cache_dir=tmp_path / "cache", options=defaults)


@pytest.fixture()
def one_series(tmp_path):
    series = make_series(tmp_path, "CTC-0001")
    with NbiaServer([series]) as server:
        manifest = make_manifest(tmp_path, [series])
        yield server, series, manifest


def fetch(tmp_path, server, manifest, case_id="CTC-0001", **options):
    context = make_context(tmp_path, server, manifest, **options)
    source = open_source(manifest.sources[SOURCE_ID], context)
    return source.fetch_image(manifest.case(case_id), context)


def assert_cache_clean(tmp_path: Path) -> None:
    """No cache entry and no leftover staging folder after a failed fetch."""
    cache = Cache(tmp_path / "cache")
    assert cache.entries() == []
    staging = tmp_path / "cache" / ".staging"
    assert not staging.exists() or list(staging.iterdir()) == []


def test_fetch_downloads_and_verifies_series(tmp_path, one_series):
    server, series, manifest = one_series
    image = fetch(tmp_path, server, manifest)
    assert image.kind == "dicom"
    assert image.geometry == "simpleitk"
    assert image.series_uid == series.series_uid
    files = sorted(path.name for path in image.path.iterdir())
    assert files == sorted(series.files)
    for name in files:
        assert (image.path / name).read_bytes() == series.files[name]
    assert image.provenance["series_md5"] == series.series_md5()
    assert image.provenance["license_uri"] == "https://creativecommons.org/licenses/by/4.0/"
    assert "Creative Commons Attribution 4.0" in image.provenance["license_text"]
    assert image.provenance["mask_applies"] is True
    assert image.provenance["position"] == "supine"


def test_provenance_holds_no_dicom_uid(tmp_path, one_series):
    server, series, manifest = one_series
    image = fetch(tmp_path, server, manifest)
    text = repr(image.provenance)
    assert series.series_uid not in text
    assert series.study_uid not in text


def test_second_fetch_uses_cache(tmp_path, one_series):
    server, _, manifest = one_series
    fetch(tmp_path, server, manifest)
    fetch(tmp_path, server, manifest)
    assert server.count("getImage") == 1


def test_user_agent_sent_on_every_request(tmp_path, one_series):
    server, _, manifest = one_series
    fetch(tmp_path, server, manifest)
    agents = {headers.get("User-Agent") for _, _, headers in server.requests}
    assert agents == {f"ctspine_builder/{__version__}"}


def test_429_with_retry_after_then_success(tmp_path, one_series, caplog):
    server, _, manifest = one_series
    server.faults.status_429 = 1
    server.faults.retry_after = "0"
    with caplog.at_level(logging.WARNING):
        image = fetch(tmp_path, server, manifest)
    assert image.path.is_dir()
    assert "HTTP 429" in caplog.text


def test_500_then_success(tmp_path, one_series, caplog):
    server, _, manifest = one_series
    server.faults.status_500 = 2
    with caplog.at_level(logging.WARNING):
        image = fetch(tmp_path, server, manifest)
    assert image.path.is_dir()
    assert caplog.text.count("HTTP 500") == 2


def test_connection_reset_mid_body_is_retried(tmp_path, tmp_path_factory):
    big = make_series(tmp_path, "CTC-0001", slices=12)
    with NbiaServer([big], chunk_bytes=2048) as server:
        server.faults.reset_mid_body = 1
        manifest = make_manifest(tmp_path, [big])
        image = fetch(tmp_path, server, manifest)
        assert server.count("getImage") == 2
    assert len(list(image.path.iterdir())) == 12


def test_short_zip_with_http_200_is_rejected(tmp_path, one_series):
    server, series, manifest = one_series
    server.faults.short_zip = 5
    with pytest.raises(FetchError) as error:
        fetch(tmp_path, server, manifest)
    message = str(error.value)
    assert "case CTC-0001" in message
    assert f"holds {len(series.files) - 1} DICOM files but getSeries reports ImageCount {len(series.files)}" in message
    assert_cache_clean(tmp_path)


def test_short_zip_once_is_downloaded_again(tmp_path, one_series):
    server, series, manifest = one_series
    server.faults.short_zip = 1
    image = fetch(tmp_path, server, manifest)
    assert len(list(image.path.iterdir())) == len(series.files)
    assert server.count("getImage") == 2


def test_wrong_md5_in_csv_is_rejected(tmp_path, one_series):
    server, _, manifest = one_series
    server.faults.wrong_md5 = 5
    with pytest.raises(FetchError, match="md5hashes.csv lists 0{32}"):
        fetch(tmp_path, server, manifest)
    assert_cache_clean(tmp_path)


def test_stalled_server_times_out(tmp_path, one_series):
    server, _, manifest = one_series
    server.faults.stall_s = 1.5
    with pytest.raises(FetchError, match="timed out"):
        fetch(tmp_path, server, manifest, http_timeout=(1.0, 0.3), http_retries=1)
    assert_cache_clean(tmp_path)


def test_html_page_instead_of_zip(tmp_path, one_series):
    server, _, manifest = one_series
    server.faults.html = 5
    with pytest.raises(FetchError, match="returned an HTML page instead of the file"):
        fetch(tmp_path, server, manifest)
    assert_cache_clean(tmp_path)


@pytest.mark.parametrize(
    ("entry", "reason"),
    [("../escape.dcm", "path contains '..'"), ("/tmp/absolute.dcm", "absolute path")],
    ids=["dotdot", "absolute"],
)
def test_zip_entry_escaping_target_is_rejected(tmp_path, one_series, entry, reason):
    server, _, manifest = one_series
    server.faults.extra_entries = {entry: b"not dicom"}
    with pytest.raises(FetchError, match=reason):
        fetch(tmp_path, server, manifest)
    assert_cache_clean(tmp_path)
    assert not list(tmp_path.rglob("escape.dcm"))
    assert not Path("/tmp/absolute.dcm").exists()


def test_zip_symlink_entry_is_rejected(tmp_path, one_series):
    server, _, manifest = one_series
    server.faults.symlink_entry = "link.dcm"
    with pytest.raises(FetchError, match="symbolic link"):
        fetch(tmp_path, server, manifest)
    assert_cache_clean(tmp_path)


def test_license_mismatch_stops_source(tmp_path):
    first = make_series(tmp_path, "CTC-0001")
    second = make_series(tmp_path, "CTC-0002", seed=1)
    with NbiaServer([first, second]) as server:
        manifest = make_manifest(tmp_path, [first, second], license="CC-BY-NC-4.0")
        context = make_context(tmp_path, server, manifest)
        source = open_source(manifest.sources[SOURCE_ID], context)
        with pytest.raises(FetchError) as error:
            source.fetch_image(manifest.case("CTC-0001"), context)
        message = str(error.value)
        assert "manifest states licence CC-BY-NC-4.0" in message
        assert "https://creativecommons.org/licenses/by/4.0/" in message
        with pytest.raises(FetchError, match="case CTC-0002: source 'tcia-colonog'"):
            source.fetch_image(manifest.case("CTC-0002"), context)
        assert server.count("getImage") == 0


@pytest.mark.parametrize("concurrency", [1, 2])
def test_concurrency_limits_parallel_downloads(tmp_path, concurrency):
    series = [make_series(tmp_path, f"CTC-000{i}", seed=i, slices=8) for i in range(4)]
    with NbiaServer(series, chunk_bytes=1024) as server:
        manifest = make_manifest(tmp_path, series)
        context = make_context(tmp_path, server, manifest, concurrency=concurrency)
        source = open_source(manifest.sources[SOURCE_ID], context)
        with ThreadPoolExecutor(4) as pool:
            images = list(pool.map(lambda case: source.fetch_image(case, context), manifest.cases))
        assert len(images) == 4
        assert 1 <= server.max_active_images <= concurrency


def test_plan_reads_metadata_only(tmp_path, one_series):
    server, series, manifest = one_series
    context = make_context(tmp_path, server, manifest)
    plan = open_source(manifest.sources[SOURCE_ID], context).plan(manifest.case("CTC-0001"), context)
    size = sum(len(data) for data in series.files.values())
    assert plan.download_bytes == size
    assert plan.disk_bytes == size + size // 2
    assert server.count("getImage") == 0


def test_real_shared_series_round_trip(tmp_path, siemens_dicom):
    # The shared files have blank UIDs, so the stand-in lists made-up ones, ending in dotted suffixes.
    series = series_from_folder(siemens_dicom, collection=COLLECTION, patient_id="CTC-9001",
                                series_uid="1.2.826.0.1.3680043.8.498.7712.9.50.4.1",
                                study_uid="1.2.826.0.1.3680043.8.498.7712.8.1240")
    with NbiaServer([series]) as server:
        manifest = make_manifest(tmp_path, [series])
        image = fetch(tmp_path, server, manifest, case_id="CTC-9001")
    assert len(list(image.path.iterdir())) == 20
    for path in image.path.iterdir():
        assert path.read_bytes() == series.files[path.name]
    first = pydicom.dcmread(next(image.path.iterdir()), stop_before_pixels=True)
    assert first.Modality == "CT"
