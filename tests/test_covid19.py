"""Tests for the covid19 source: name mapping, local folders, downloads and bad files."""
from __future__ import annotations

from pathlib import Path

import pytest

from ctspine_builder.errors import FetchError
from ctspine_builder.manifest.loader import load_manifest
from ctspine_builder.manifest.model import SourceRecord
from ctspine_builder.sources.base import open_source
from ctspine_builder.sources.covid19 import tcia_file_name, unmatched_case_ids, unmatched_in_manifest
from msd_fixtures import cache_files, image_case, make_context, make_manifest, nifti_bytes
from range_server import Fault, RangeServer

REPO_ROOT = Path(__file__).resolve().parents[1]
SHIPPED_MANIFEST = REPO_ROOT / "manifests" / "ctspine1k"


@pytest.mark.parametrize(
    "case_id, expected",
    [
        ("volume-covid19-A-0003_ct", "volume-covid19-A-0003.nii.gz"),
        ("volume-covid19-A-0202_0_ct", "volume-covid19-A-0202_0.nii.gz"),
        ("volume-covid19-A-0003", None),
        ("volume-covid19-B-0003_ct", None),
        ("liver_0", None),
    ],
)
def test_tcia_file_name(case_id: str, expected: str | None) -> None:
    assert tcia_file_name(case_id) == expected


def test_unmatched_case_ids_reports_each() -> None:
    ids = ["volume-covid19-A-0003_ct", "covid-0004", "volume-covid19-A-0011_ct", "volume-covid19-A-12_ct"]
    assert unmatched_case_ids(ids) == ["covid-0004", "volume-covid19-A-12_ct"]


def test_unmatched_in_manifest_locator_mismatch(tmp_path: Path) -> None:
    record = SourceRecord(id="covid", kind="covid19", license="CC-BY-4.0", locator=str(tmp_path))
    cases = [
        image_case("volume-covid19-A-0003_ct", "covid", "volume-covid19-A-0003.nii.gz", subset="COVID-19"),
        image_case("volume-covid19-A-0011_ct", "covid", "volume-covid19-A-0012.nii.gz", subset="COVID-19"),
        image_case("odd-name", "covid", "", subset="COVID-19"),
    ]
    manifest = make_manifest(tmp_path, [record], cases)
    assert unmatched_in_manifest(manifest) == ["volume-covid19-A-0011_ct", "odd-name"]


@pytest.mark.skipif(not (SHIPPED_MANIFEST / "manifest.json").is_file(), reason="shipped manifest not generated")
def test_shipped_manifest_names_fit_rule() -> None:
    manifest = load_manifest(SHIPPED_MANIFEST)
    covid_cases = [case for case in manifest.cases if case.subset == "COVID-19"]
    assert len(covid_cases) == 40
    assert unmatched_in_manifest(manifest) == []


def _covid_setup(tmp_path: Path, locator: str = "", case_ids=("volume-covid19-A-0003_ct",), **record_options):
    record = SourceRecord(id="covid", kind="covid19", license="CC-BY-4.0", locator=locator, options=record_options)
    cases = [image_case(case_id, "covid", subset="COVID-19") for case_id in case_ids]
    manifest = make_manifest(tmp_path, [record], cases)
    return manifest, make_context(manifest, tmp_path)


def _fetch(manifest, context, case_id: str) -> Path:
    return open_source(manifest.sources["covid"], context).fetch_image(manifest.case(case_id), context).path


def test_local_folder_any_nesting(tmp_path: Path) -> None:
    folder = tmp_path / "tcia"
    nested = folder / "CT Images in COVID-19" / "batch 1"
    nested.mkdir(parents=True)
    data = nifti_bytes(3)
    (nested / "volume-covid19-A-0003.nii.gz").write_bytes(data)
    (nested / "volume-covid19-A-0004.nii.gz").write_bytes(nifti_bytes(4))

    manifest, context = _covid_setup(tmp_path, folder.as_uri())
    path = _fetch(manifest, context, "volume-covid19-A-0003_ct")

    assert path == nested / "volume-covid19-A-0003.nii.gz"
    assert cache_files(tmp_path / "cache") == []


def test_local_folder_missing_file(tmp_path: Path) -> None:
    folder = tmp_path / "tcia"
    folder.mkdir()
    manifest, context = _covid_setup(tmp_path, str(folder))

    with pytest.raises(FetchError) as excinfo:
        _fetch(manifest, context, "volume-covid19-A-0003_ct")
    message = str(excinfo.value)
    assert "case volume-covid19-A-0003_ct" in message
    assert "volume-covid19-A-0003.nii.gz not found under" in message


def test_local_folder_duplicate_file(tmp_path: Path) -> None:
    folder = tmp_path / "tcia"
    for sub in ("a", "b"):
        (folder / sub).mkdir(parents=True)
        (folder / sub / "volume-covid19-A-0003.nii.gz").write_bytes(nifti_bytes(3))
    manifest, context = _covid_setup(tmp_path, str(folder))

    with pytest.raises(FetchError) as excinfo:
        _fetch(manifest, context, "volume-covid19-A-0003_ct")
    message = str(excinfo.value)
    assert "found 2 times" in message
    assert str(folder / "a" / "volume-covid19-A-0003.nii.gz") in message
    assert str(folder / "b" / "volume-covid19-A-0003.nii.gz") in message


def test_case_id_outside_rule(tmp_path: Path) -> None:
    folder = tmp_path / "tcia"
    folder.mkdir()
    manifest, context = _covid_setup(tmp_path, str(folder), case_ids=("covid-0003",))

    with pytest.raises(FetchError, match="does not fit the COVID-19 naming rule"):
        _fetch(manifest, context, "covid-0003")


def test_download_from_base_url(tmp_path: Path) -> None:
    root = tmp_path / "www" / "covid"
    root.mkdir(parents=True)
    data = nifti_bytes(3)
    (root / "volume-covid19-A-0003.nii.gz").write_bytes(data)
    with RangeServer(tmp_path / "www") as server:
        manifest, context = _covid_setup(tmp_path, base_url=server.url("covid/"))
        first = _fetch(manifest, context, "volume-covid19-A-0003_ct")
        second = _fetch(manifest, context, "volume-covid19-A-0003_ct")
        gets = [request for request in server.requests if request.method == "GET"]

    assert first == second
    assert first.read_bytes() == data
    assert [request.path for request in gets] == ["covid/volume-covid19-A-0003.nii.gz"]
    assert gets[0].user_agent.startswith("ctspine")


def test_download_html_page_rejected(tmp_path: Path) -> None:
    root = tmp_path / "www"
    root.mkdir()
    (root / "volume-covid19-A-0003.nii.gz").write_bytes(nifti_bytes(3))
    with RangeServer(root) as server:
        server.add_fault("volume-covid19-A-0003.nii.gz", Fault("html-octet"))
        manifest, context = _covid_setup(tmp_path, server.base_url)
        with pytest.raises(FetchError, match="HTML page"):
            _fetch(manifest, context, "volume-covid19-A-0003_ct")
    assert cache_files(tmp_path / "cache") == []


def test_download_truncated_gzip_rejected(tmp_path: Path) -> None:
    root = tmp_path / "www"
    root.mkdir()
    (root / "volume-covid19-A-0003.nii.gz").write_bytes(nifti_bytes(3)[:5000])
    with RangeServer(root) as server:
        manifest, context = _covid_setup(tmp_path, server.base_url)
        with pytest.raises(FetchError, match="truncated or corrupt gzip"):
            _fetch(manifest, context, "volume-covid19-A-0003_ct")
    assert cache_files(tmp_path / "cache") == []


def test_doi_landing_page_locator(tmp_path: Path) -> None:
    manifest, context = _covid_setup(tmp_path, "https://doi.org/10.7937/tcia.2020.gqry-nc81")

    with pytest.raises(FetchError) as excinfo:
        _fetch(manifest, context, "volume-covid19-A-0003_ct")
    message = str(excinfo.value)
    assert "has no download URL" in message
    assert "set the source's folder option" in message


def test_plan_head_size(tmp_path: Path) -> None:
    root = tmp_path / "www"
    root.mkdir()
    data = nifti_bytes(3)
    (root / "volume-covid19-A-0003.nii.gz").write_bytes(data)
    with RangeServer(root) as server:
        manifest, context = _covid_setup(tmp_path, server.base_url)
        source = open_source(manifest.sources["covid"], context)
        plan = source.plan(manifest.case("volume-covid19-A-0003_ct"), context)
        methods = [request.method for request in server.requests]

    assert plan.download_bytes == len(data)
    assert methods == ["HEAD"]
