"""Tests for the identifier scan of outputs: deny values, patterns, NIfTI headers and sidecars."""
from __future__ import annotations

import gzip
import json
import logging
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest

from ctspine_builder import deid
from ctspine_builder.deid import (
    DATE,
    DENY_VALUE,
    EXTENSION,
    HEADER_FIELD,
    SIDECAR_KEY,
    TIME,
    UID,
    prepare_deny_values,
    scan_file,
    scan_text,
    scan_tree,
)
from ctspine_builder.dicom.sidecar import collect_deny_values
from ctspine_builder.nifti import save_nifti

CASE_UID = "1.3.6.1.4.1.9328.50.4.0001"
PLANTED = ["Jane^Doe-Planted", "STATION-X17", "SERIAL90210", "20221208"]
AFFINE = np.diag([-0.8, -0.8, 2.0, 1.0])


def kinds(findings) -> list[str]:
    return [finding.kind for finding in findings]


def assert_no_value_printed(findings, values) -> None:
    # Compare by index, so a failure never prints the identifying value itself.
    text = "\n".join(finding.format() for finding in findings).lower()
    leaked = [index for index, value in enumerate(values) if value.lower() in text]
    assert leaked == []


# --- deny values -------------------------------------------------------------


def test_deny_value_in_gzip_json_found(tmp_path: Path) -> None:
    path = tmp_path / "report.json.gz"
    path.write_bytes(gzip.compress(json.dumps({"note": "seen at station-x17 today"}).encode()))
    findings = scan_file(path, PLANTED, [])
    assert kinds(findings) == [DENY_VALUE]
    assert findings[0].detail == "deny-list value #2"
    assert "decompressed" in findings[0].location
    assert_no_value_printed(findings, PLANTED)


def test_deny_value_in_voxels_found(tmp_path: Path) -> None:
    # Spell the value in the voxel bytes (NIfTI stores voxels in Fortran order):
    # the scan covers every byte, not only headers.
    raw = np.frombuffer(b"xxSERIAL90210xxx", dtype=np.uint8).reshape((4, 2, 2), order="F")
    path = tmp_path / "image.nii.gz"
    save_nifti(raw.copy(), AFFINE, path)
    findings = scan_file(path, PLANTED, [])
    assert kinds(findings) == [DENY_VALUE]
    assert findings[0].detail == "deny-list value #3"


def test_deny_value_across_chunks_found(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(deid, "SEARCH_CHUNK_BYTES", 16)
    path = tmp_path / "blob.bin"
    path.write_bytes(b"\0" * 13 + b"STATION-X17" + b"\0" * 40)
    findings = scan_file(path, PLANTED, [])
    assert kinds(findings) == [DENY_VALUE]
    assert findings[0].location == "byte 13 of the content"


def test_numeric_deny_value_needs_boundaries(tmp_path: Path) -> None:
    path = tmp_path / "SHA256SUMS"
    path.write_text("0d9b4417290a  data/x.nii.gz\nserial 44172\n")
    findings = scan_file(path, ["44172", "4417"], [])
    assert [(f.detail, f.location) for f in findings] == [("deny-list value #1", "byte 35 of the content")]


def test_thousands_of_deny_values_found(tmp_path: Path) -> None:
    # A whole build passes the deny values of every case at once.
    values = [f"SERIAL{index:06d}" for index in range(5000)] + ["Station-Q"]
    path = tmp_path / "image.nii.gz"
    raw = np.frombuffer(b"..serial004321..STATION-Q.", dtype=np.uint8).reshape((26, 1, 1), order="F")
    save_nifti(raw.copy(), AFFINE, path)
    findings = scan_file(path, values, [])
    assert sorted(f.detail for f in findings) == ["deny-list value #4322", "deny-list value #5001"]


def test_scan_stores_content_hashes(tmp_path: Path) -> None:
    from ctspine_builder.fileio import sha256_content

    save_nifti(np.full((4, 4, 3), -1000, dtype=np.int16), AFFINE, tmp_path / "image.nii.gz")
    (tmp_path / "notes.txt").write_text("nothing\n")
    hashes: dict[str, str] = {}
    assert scan_tree(tmp_path, PLANTED, [], content_hashes=hashes) == []
    assert hashes == {name: sha256_content(tmp_path / name) for name in ("image.nii.gz", "notes.txt")}


def test_person_name_parts_found(tmp_path: Path) -> None:
    path = tmp_path / "card.md"
    path.write_text("Reviewed by doe-planted.\n")
    findings = scan_file(path, PLANTED, [])
    assert kinds(findings) == [DENY_VALUE]
    assert findings[0].detail == "deny-list value #1"


def test_deny_value_in_file_name_found(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "station-x17_scan.txt").write_text("nothing here\n")
    findings = scan_tree(tmp_path, PLANTED, [])
    assert [(finding.path, finding.location) for finding in findings] == [("data/station-x17_scan.txt", "file or folder name")]


def test_short_deny_values_skipped_and_logged(tmp_path: Path, caplog) -> None:
    path = tmp_path / "notes.txt"
    path.write_text("CT M 120 kV\n")
    with caplog.at_level(logging.WARNING, logger="ctspine_builder.deid"):
        findings = scan_file(path, ["CT", "M", "120"], [])
    assert findings == []
    assert "3 deny values shorter than 4 characters are not searched" in caplog.text


def test_deny_value_inside_case_id_skipped() -> None:
    deny = prepare_deny_values([CASE_UID, "HN_P001", "SERIAL90210"], [CASE_UID, "HN_P001"])
    assert [number for number, _ in deny.needles] == [3]
    assert deny.skipped_case_id == 2


def test_partial_files_skipped(tmp_path: Path) -> None:
    (tmp_path / ".image.nii.gz.abc.partial").write_bytes(b"SERIAL90210")
    assert scan_tree(tmp_path, PLANTED, []) == []


# --- patterns ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "kind", "detail"),
    [
        ('{"a": "20221208"}', DATE, "YYYYMMDD"),
        ('{"a": "2022-12-08"}', DATE, "YYYY-MM-DD"),
        ('{"a": "31-12-2022"}', DATE, "DD-MM-YYYY"),
        ('{"a": "12-31-2022"}', DATE, "MM-DD-YYYY"),
        ('{"a": "101530.123456"}', TIME, "HHMMSS.ffffff"),
        ('{"a": "1.2.840.113619.2.55.3"}', UID, "digits and dots"),
        ("file_20221208_ct", DATE, "YYYYMMDD"),
    ],
    ids=["yyyymmdd", "iso-date", "dd-mm-yyyy", "mm-dd-yyyy", "time", "uid", "date-in-name"],
)
def test_pattern_found(text: str, kind: str, detail: str) -> None:
    findings = scan_text(text, [], "x.json")
    assert kinds(findings) == [kind]
    assert detail in findings[0].detail
    assert_no_value_printed(findings, [text.split('"')[-2] if '"' in text else "20221208"])


@pytest.mark.parametrize(
    "text",
    [
        "ctspine_builder 0.1.0, SimpleITK 2.3.1, Python 3.11.4",
        "sha256 0d9b20221208c1a3e5f7a9b1c3d5e7f9a1b3c5d7e9f1a3b5c7d9e1f3a5b7c9d1",
        '{"PixelSpacing": [0.9765625, 0.9765625], "KVP": 120.0, "RescaleIntercept": -1024.0}',
        "doi:10.7937/K9/TCIA.2015.NWTESAY1, arXiv:2105.14711, size 512x512x20",
        "Copyright 2021. Licence CC-BY-4.0.",
    ],
    ids=["versions", "hex-digest", "sidecar-numbers", "citations", "year"],
)
def test_ordinary_text_not_flagged(text: str) -> None:
    assert scan_text(text, [], "x.md") == []


def test_case_id_uid_allowed() -> None:
    text = f'{{"case_id": "{CASE_UID}", "image_file_name": "images/{CASE_UID}.nii.gz"}}'
    assert scan_text(text, [CASE_UID], "metadata.jsonl") == []
    assert kinds(scan_text(text, [], "metadata.jsonl")) == [UID, UID]


def test_uid_extending_case_id_found() -> None:
    findings = scan_text(f"study {CASE_UID}.2.77 of images/{CASE_UID}.nii.gz", [CASE_UID], "build.json")
    assert [(f.kind, f.location) for f in findings] == [(UID, "line 1, column 7")]


def test_case_id_prefix_of_longer_id_not_blanked() -> None:
    # liver_1 is allowed, but the date inside liver_1_20221208 must still be found.
    findings = scan_text("liver_1 liver_1_20221208", ["liver_1"], "x.md")
    assert kinds(findings) == [DATE]


def test_pattern_location_names_line_and_column() -> None:
    findings = scan_text('{\n  "seen": "2022-12-08"\n}', [], "build.json")
    assert findings[0].location == "line 2, column 12"


def test_uid_in_folder_name_found(tmp_path: Path) -> None:
    (tmp_path / "1.2.840.113619.2.55").mkdir()
    findings = scan_tree(tmp_path, [], [])
    assert [(finding.kind, finding.location) for finding in findings] == [(UID, "file or folder name")]


# --- NIfTI headers -----------------------------------------------------------


def test_clean_nifti_has_no_findings(tmp_path: Path) -> None:
    path = tmp_path / "image.nii.gz"
    save_nifti(np.full((4, 4, 3), -1000, dtype=np.int16), AFFINE, path)
    assert scan_file(path, PLANTED, []) == []


@pytest.mark.parametrize("field", ["descrip", "aux_file", "intent_name", "db_name"])
def test_nifti_text_field_flagged(tmp_path: Path, field: str) -> None:
    image = nib.Nifti1Image(np.zeros((2, 2, 2), dtype=np.uint8), AFFINE)
    image.header[field] = b"scan 2022-12-08"[: 15 if field != "intent_name" else 15]
    path = tmp_path / "mask.nii.gz"
    nib.save(image, str(path))
    findings = scan_file(path, [], [])
    assert (HEADER_FIELD, f"NIfTI header field {field}") in [(f.kind, f.location) for f in findings]
    assert (DATE, f"NIfTI header field {field}, line 1, column 6") in [(f.kind, f.location) for f in findings]


def test_nifti_extension_flagged(tmp_path: Path) -> None:
    image = nib.Nifti1Image(np.zeros((2, 2, 2), dtype=np.uint8), AFFINE)
    image.header.extensions.append(nib.nifti1.Nifti1Extension(6, b"acquired 20221208 at 101530.5"))
    path = tmp_path / "mask.nii"
    nib.save(image, str(path))
    findings = scan_file(path, [], [])
    assert kinds(findings) == [EXTENSION, DATE, TIME]
    assert findings[0].detail == "extension code 6 present; outputs carry none"
    assert findings[1].location == "NIfTI header extension 0, line 1, column 10"


# --- sidecars ----------------------------------------------------------------


def test_sidecar_unknown_key_flagged(tmp_path: Path) -> None:
    path = tmp_path / "sidecars" / "case1.json"
    path.parent.mkdir()
    path.write_text(json.dumps({"Manufacturer": "SIEMENS", "StationName": "x", "KVP": 120}))
    findings = scan_file(path, [], [])
    assert [(f.kind, f.location) for f in findings] == [(SIDECAR_KEY, "key 'StationName'")]


def test_sidecar_invalid_json_flagged(tmp_path: Path) -> None:
    path = tmp_path / "sidecars" / "case1.json"
    path.parent.mkdir()
    path.write_text('{"Manufacturer": ')
    findings = scan_file(path, [], [])
    assert [(f.kind, f.detail) for f in findings] == [(SIDECAR_KEY, "sidecar is not valid JSON")]


def test_placeholder_values_not_searched(tmp_path: Path) -> None:
    path = tmp_path / "build.json"
    path.write_text('{"position": "supine", "split": "test_public", "note": "synthetic phantom"}')
    findings = scan_file(path, ["SUPINE", "PHANTOM", "Test_Public", "Phantom^Demo"], [])
    assert findings == []


def test_value_containing_placeholder_searched(tmp_path: Path) -> None:
    path = tmp_path / "card.md"
    path.write_text("Series: supine abdomen planted\n")
    findings = scan_file(path, ["SUPINE ABDOMEN PLANTED"], [])
    assert kinds(findings) == [DENY_VALUE]


def test_numeric_serial_number_kept_in_deny_list() -> None:
    dataset = pydicom.Dataset()
    dataset.DeviceSerialNumber = "40712"
    dataset.AccessionNumber = "99887766"
    dataset.ImageComments = "1024"
    values = collect_deny_values([dataset])
    assert "40712" in values
    assert "99887766" in values
    assert "1024" not in values


# --- real DICOM headers ------------------------------------------------------


def test_real_dicom_values_found_in_dicom(siemens_dicom: Path, tmp_path: Path) -> None:
    first = sorted(siemens_dicom.iterdir())[0]
    dataset = pydicom.dcmread(first, stop_before_pixels=True)
    values = sorted(collect_deny_values([dataset]))
    assert "SIEMENS" not in values
    # The series is partly de-identified: its UIDs are blank, but these values are real.
    for keyword in ("StudyDate", "StationName", "DeviceSerialNumber", "InstitutionAddress"):
        values.append(str(dataset.data_element(keyword).value).strip())

    # The scan finds those values in the DICOM file itself, so it would find them in any output.
    findings = scan_file(first, values, [])
    found = {int(finding.detail.rsplit("#", 1)[1]) for finding in findings if finding.kind == DENY_VALUE}
    assert len(found) >= len(prepare_deny_values(values).needles) - 2


def test_real_conversion_is_clean(siemens_dicom: Path, tmp_path: Path) -> None:
    import SimpleITK as sitk

    files = sorted(str(path) for path in siemens_dicom.iterdir())
    values = sorted(collect_deny_values(pydicom.dcmread(file, stop_before_pixels=True) for file in files))
    first = pydicom.dcmread(files[0], stop_before_pixels=True)
    assert str(first.DeviceSerialNumber).strip() in values
    values += [str(first.data_element(keyword).value).strip() for keyword in ("DeviceSerialNumber", "StudyDate")]
    image = sitk.ReadImage(files)
    data = sitk.GetArrayFromImage(image).transpose(2, 1, 0)
    save_nifti(data, AFFINE, tmp_path / "data" / "trainset" / "images" / "siemens.nii.gz")
    (tmp_path / "sidecars").mkdir()
    (tmp_path / "sidecars" / "siemens.json").write_text(json.dumps({"Manufacturer": "SIEMENS", "KVP": 120.0}))
    assert scan_tree(tmp_path, values, ["siemens"]) == []

    (tmp_path / "sidecars" / "siemens.json").write_text(json.dumps({"Station": str(pydicom.dcmread(files[0]).StationName)}))
    findings = scan_tree(tmp_path, values, ["siemens"])
    assert kinds(findings) == [DENY_VALUE, SIDECAR_KEY]
    assert_no_value_printed(findings, values)
