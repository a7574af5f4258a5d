"""Tests of the lock file format and `ctspine lock` against the NBIA v4 stand-in."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from ctspine_builder.cli import main
from ctspine_builder.errors import FetchError, ManifestError
from ctspine_builder.manifest.lock import Lock, LockedSeries, load_lock, save_lock
from ctspine_builder.manifest.model import CaseRecord, FileRef
from ctspine_builder.sources.base import open_source
from tests.nbia_server import NbiaServer
from tests.test_nbia_source import (
    COLLECTION,
    SOURCE_ID,
    hint_for,
    make_context,
    make_manifest,
    make_series,
)

MD5 = "0123456789abcdef" * 2


def entry(case_id: str = "CTC-0001", **overrides) -> LockedSeries:
    values = dict(case_id=case_id, collection=COLLECTION, patient_id=case_id,
                  series_instance_uid="1.2.3.4", study_instance_uid="1.2.3", image_count=4, file_size=4096,
                  series_md5=MD5, license_name="CC BY 4.0", license_uri="https://creativecommons.org/licenses/by/4.0/")
    values.update(overrides)
    return LockedSeries(**values)


def test_lock_round_trip_is_byte_identical(tmp_path):
    lock = Lock("ctspine1k", "1.0.0", {"B": entry("B"), "A": entry("A")})
    first = save_lock(lock, tmp_path / "lock.json").read_bytes()
    loaded = load_lock(tmp_path / "lock.json")
    assert loaded.series == lock.series
    assert save_lock(loaded, tmp_path / "again.json").read_bytes() == first
    assert list(json.loads(first)["cases"]) == ["A", "B"]


def test_lock_with_bad_md5_is_rejected(tmp_path):
    save_lock(Lock("m", "1", {"A": entry("A", series_md5="xyz")}), tmp_path / "lock.json")
    with pytest.raises(ManifestError, match="case A: invalid lock entry: series_md5 is not 32 lowercase hex"):
        load_lock(tmp_path / "lock.json")


def test_lock_with_unknown_field_is_rejected(tmp_path):
    document = json.loads(Lock("m", "1", {"A": entry("A")}).to_json())
    document["cases"]["A"]["surprise"] = 1
    (tmp_path / "lock.json").write_text(json.dumps(document))
    with pytest.raises(ManifestError, match="missing or unknown fields"):
        load_lock(tmp_path / "lock.json")


def test_lock_with_other_format_version_is_rejected(tmp_path):
    (tmp_path / "lock.json").write_text('{"format_version": 9, "cases": {}}')
    with pytest.raises(ManifestError, match="format_version 9, expected 1"):
        load_lock(tmp_path / "lock.json")


def test_missing_lock_file_names_the_fix(tmp_path):
    with pytest.raises(ManifestError, match="Run `ctspine lock` to create it"):
        load_lock(tmp_path / "absent.json")


def write_manifest_file(root: Path, cases: list[dict], license: str = "CC-BY-4.0") -> Path:
    document = {
        "format": 1,
        "dataset": {"name": "locktest", "version": "0.1.0", "citation": "Lock test."},
        "sources": [{"id": SOURCE_ID, "kind": "tcia", "license": license, "locator": COLLECTION,
                     "doi": "10.7937/K9/TCIA.2015.NWTESAY1"}],
        "cases": cases,
    }
    path = root / "manifest.json"
    path.write_text(json.dumps(document, indent=2))
    return path


def case_entry(series, hint: str | None = None) -> dict:
    return {"case_id": series.patient_id, "subset": "COLONOG", "split": "trainset",
            "image": {"source": SOURCE_ID, "locator": series.patient_id}, "mask": None,
            "series_hint": hint or hint_for(series)}


@pytest.fixture()
def two_patients(tmp_path):
    first = make_series(tmp_path, "CTC-0001", series_description="Colon 1.0 (Adult)", study_desc="A" * 60)
    second = make_series(tmp_path, "CTC-0002", seed=1, study_date=None)
    with NbiaServer([first, second]) as server:
        yield server, first, second


def test_cli_lock_writes_entries(tmp_path, two_patients):
    server, first, second = two_patients
    # Written by hand as the retriever names them: "(Adult)" loses its brackets, the
    # study description is cut at 53 characters, and a missing StudyDate is left out.
    first_hint = f"CTC-0001/06-04-2001-{'A' * 53}-{first.study_uid[-5:]}/3.000000-Colon 1.0 Adult-{first.series_uid[-5:]}"
    second_hint = f"CTC-0002/STUDY-{second.study_uid[-5:]}/3.000000-SERIES-{second.series_uid[-5:]}"
    manifest = write_manifest_file(tmp_path, [case_entry(first, first_hint), case_entry(second, second_hint)])
    result = CliRunner().invoke(main, ["lock", "--manifest", str(manifest), "--nbia-url", server.url])
    assert result.exit_code == 0, result.output
    lock = load_lock(tmp_path / "lock.json")
    assert lock.get("CTC-0002").series_instance_uid == second.series_uid
    assert sorted(lock.series) == ["CTC-0001", "CTC-0002"]
    locked = lock.get("CTC-0001")
    assert locked.series_instance_uid == first.series_uid
    assert locked.study_instance_uid == first.study_uid
    assert locked.image_count == len(first.files)
    assert locked.file_size == sum(len(data) for data in first.files.values())
    assert locked.series_md5 == first.series_md5()
    assert locked.license_uri == "https://creativecommons.org/licenses/by/4.0/"
    assert server.count("getImage") == 0


def test_cli_lock_uses_nbia_url_env(tmp_path, two_patients, monkeypatch):
    server, first, _ = two_patients
    manifest = write_manifest_file(tmp_path, [case_entry(first)])
    monkeypatch.setenv("CTSPINE_NBIA_URL", server.url)
    out = tmp_path / "custom.lock.json"
    result = CliRunner().invoke(main, ["lock", "--manifest", str(manifest), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert load_lock(out).get("CTC-0001").series_md5 == first.series_md5()


def test_cli_lock_unresolved_case_exits_1_and_keeps_others(tmp_path, two_patients):
    server, first, second = two_patients
    bad_hint = f"{second.patient_id}/01-01-2000-XXXXX/9.000000-nothing-ZZZZZ"
    manifest = write_manifest_file(tmp_path, [case_entry(first), case_entry(second, bad_hint)])
    result = CliRunner().invoke(main, ["lock", "--manifest", str(manifest), "--nbia-url", server.url])
    assert result.exit_code == 1
    assert "case CTC-0002: no series matches the folder hint" in result.output
    assert "1 case(s) could not be resolved" in result.output
    assert sorted(load_lock(tmp_path / "lock.json").series) == ["CTC-0001"]


def test_cli_lock_nothing_resolved_writes_no_file(tmp_path, two_patients):
    server, first, _ = two_patients
    bad_hint = f"{first.patient_id}/01-01-2000-XXXXX/9.000000-nothing-ZZZZZ"
    manifest = write_manifest_file(tmp_path, [case_entry(first, bad_hint)])
    result = CliRunner().invoke(main, ["lock", "--manifest", str(manifest), "--nbia-url", server.url])
    assert result.exit_code == 1
    assert "no series could be locked" in result.output
    assert result.output.count("no series matches the folder hint") == 1
    assert not (tmp_path / "lock.json").exists()


def test_cli_lock_license_mismatch_names_both(tmp_path, two_patients):
    server, first, _ = two_patients
    manifest = write_manifest_file(tmp_path, [case_entry(first)], license="CC-BY-NC-SA-4.0")
    result = CliRunner().invoke(main, ["lock", "--manifest", str(manifest), "--nbia-url", server.url])
    assert result.exit_code == 1
    assert "manifest states licence CC-BY-NC-SA-4.0 but TCIA reports" in result.output
    assert "creativecommons.org/licenses/by/4.0/" in result.output


def test_cli_lock_cases_option_keeps_other_entries(tmp_path, two_patients):
    server, first, second = two_patients
    manifest = write_manifest_file(tmp_path, [case_entry(first), case_entry(second)])
    runner = CliRunner()
    assert runner.invoke(main, ["lock", "--manifest", str(manifest), "--nbia-url", server.url]).exit_code == 0
    requests_before = server.count("getSeries")
    result = runner.invoke(main, ["lock", "--manifest", str(manifest), "--nbia-url", server.url,
                                  "--cases", "CTC-0002"])
    assert result.exit_code == 0, result.output
    assert server.count("getSeries") == requests_before + 1
    assert sorted(load_lock(tmp_path / "lock.json").series) == ["CTC-0001", "CTC-0002"]


def test_build_uses_lock_and_detects_changed_series(tmp_path, two_patients):
    server, first, _ = two_patients
    manifest = make_manifest(tmp_path, [first])
    # A lock entry that names the series by UID, with no hint at all in the case.
    manifest.cases[0] = CaseRecord("CTC-0001", "COLONOG", "trainset", FileRef(SOURCE_ID, "CTC-0001"))
    save_lock(Lock("test", "1.0.0", {"CTC-0001": entry(series_instance_uid=first.series_uid,
                                                      study_instance_uid=first.study_uid,
                                                      series_md5=first.series_md5())}), tmp_path / "lock.json")
    context = make_context(tmp_path, server, manifest)
    image = open_source(manifest.sources[SOURCE_ID], context).fetch_image(manifest.case("CTC-0001"), context)
    assert image.series_uid == first.series_uid
    assert server.count("getMD5Hierarchy") == 0

    name = sorted(first.files)[0]
    first.files[name] = first.files[name] + b"\0"  # the series changed on the server
    context = make_context(tmp_path / "again", server, manifest)
    with pytest.raises(FetchError, match="The series changed on the server since the lock was made"):
        open_source(manifest.sources[SOURCE_ID], context).fetch_image(manifest.case("CTC-0001"), context)


def test_cli_lock_splits_twins_by_study_id(tmp_path):
    first = make_series(tmp_path, "CTC-0001", study_id="7781")
    twin = make_series(tmp_path, "CTC-0001", seed=1, study_id="9999")
    # Same SeriesNumber, description, date and UID suffixes: only StudyID tells them apart.
    first.series_uid = "1.2.826.0.1.3680043.8.498.7712.1.50.4.1"
    twin.series_uid = "1.2.826.0.1.3680043.8.498.7712.2.50.4.1"
    first.study_uid = "1.2.826.0.1.3680043.8.498.7712.3.1240"
    twin.study_uid = "1.2.826.0.1.3680043.8.498.7712.4.1240"
    with NbiaServer([twin, first]) as server:
        hint = "CTC-0001/06-04-2001-7781-STUDY-.1240/3.000000-SERIES-0.4.1"
        manifest = write_manifest_file(tmp_path, [case_entry(first, hint)])
        result = CliRunner().invoke(main, ["lock", "--manifest", str(manifest), "--nbia-url", server.url])
        assert result.exit_code == 0, result.output
        assert server.count("getSeriesMetadata") == 1
    assert load_lock(tmp_path / "lock.json").get("CTC-0001").series_instance_uid == first.series_uid


def test_changed_lock_changes_case_fingerprint(tmp_path, two_patients):
    from ctspine_builder.pipeline import case_fingerprint

    server, first, _ = two_patients
    manifest = make_manifest(tmp_path, [first])
    case = manifest.cases[0]
    unlocked = case_fingerprint(manifest, case, make_context(tmp_path / "a", server, manifest))

    save_lock(Lock("test", "1.0.0", {case.case_id: entry(case.case_id)}), tmp_path / "lock.json")
    locked = case_fingerprint(manifest, case, make_context(tmp_path / "b", server, manifest))
    save_lock(Lock("test", "1.0.0", {case.case_id: entry(case.case_id, series_md5="f" * 32)}), tmp_path / "lock.json")
    relocked = case_fingerprint(manifest, case, make_context(tmp_path / "c", server, manifest))

    assert len({unlocked, locked, relocked}) == 3
    assert server.requests == []
