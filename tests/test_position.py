"""Tests of prone/supine classification and of building a colonography position variant."""
from __future__ import annotations

import logging
from pathlib import Path

import pydicom
import pytest

from ctspine_builder.dicom.position import classify_position, classify_series_folder
from ctspine_builder.errors import FetchError
from ctspine_builder.sources.base import open_source
from tests.dicomgen import write_series
from tests.nbia_server import NbiaServer, series_from_folder
from tests.test_nbia_source import COLLECTION, SOURCE_ID, make_context, make_manifest

SUPINE_IOP = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
PRONE_IOP = [-1.0, 0.0, 0.0, 0.0, -1.0, 0.0]


@pytest.mark.parametrize(
    ("patient_position", "orientation", "description", "expected", "basis"),
    [
        ("HFS", SUPINE_IOP, None, "supine", "PatientPosition"),
        ("FFS", SUPINE_IOP, None, "supine", "PatientPosition"),
        ("HFP", PRONE_IOP, None, "prone", "PatientPosition"),
        ("FFP", PRONE_IOP, None, "prone", "PatientPosition"),
        (None, PRONE_IOP, "supine", "prone", "ImageOrientationPatient"),
        ("", SUPINE_IOP, None, "supine", "ImageOrientationPatient"),
        (None, None, "COLON PRONE 1.0", "prone", "SeriesDescription"),
        (None, [1, 0, 0, 0, 0, -1], "Supine scan", "supine", "SeriesDescription"),
        (None, None, "prone and supine", None, None),
        ("HFDR", None, None, None, None),
    ],
)
def test_classify_position_table(patient_position, orientation, description, expected, basis):
    result = classify_position(patient_position, orientation, description)
    assert result.position == expected
    assert result.basis == basis


def test_disagreeing_headers_warn_and_use_patient_position(caplog):
    with caplog.at_level(logging.WARNING):
        result = classify_position("HFS", PRONE_IOP, "PRONE")
    assert result.position == "supine"
    assert "ImageOrientationPatient suggests prone" in caplog.text


def write_positioned_series(folder: Path, patient_position: str, orientation: list[float], seed: int,
                            description: str):
    info = write_series(folder, rows=8, cols=8, slices=3, seed=seed, row_cosine=orientation[:3],
                        column_cosine=orientation[3:], series_number=seed + 2)
    for path in info.files:
        ds = pydicom.dcmread(path)
        ds.PatientPosition = patient_position
        ds.SeriesDescription = description
        ds.save_as(path)
    return info


def test_classify_series_folder_reads_headers(tmp_path):
    info = write_positioned_series(tmp_path / "s", "FFP", PRONE_IOP, 1, "misleading SUPINE")
    (info.folder / "notes.txt").write_text("not dicom")
    result = classify_series_folder(info.folder)
    assert (result.position, result.basis) == ("prone", "PatientPosition")


@pytest.fixture()
def colonography_patient(tmp_path):
    """A patient with a supine series (the authors' choice) and a prone one."""
    supine = write_positioned_series(tmp_path / "supine", "HFS", SUPINE_IOP, 0, "SUPINE")
    prone = write_positioned_series(tmp_path / "prone", "HFP", PRONE_IOP, 1, "PRONE")
    supine_series = series_from_folder(supine.folder, collection=COLLECTION, patient_id="CTC-0001",
                                       series_number=2, series_description="SUPINE")
    prone_series = series_from_folder(prone.folder, collection=COLLECTION, patient_id="CTC-0001",
                                      series_number=3, series_description="PRONE")
    with NbiaServer([supine_series, prone_series]) as server:
        yield server, supine_series, prone_series, make_manifest(tmp_path, [supine_series])


def fetch_with_position(tmp_path, server, manifest, position):
    context = make_context(tmp_path, server, manifest, position=position)
    return open_source(manifest.sources[SOURCE_ID], context).fetch_image(manifest.case("CTC-0001"), context)


def test_authors_choice_builds_with_mask(tmp_path, colonography_patient):
    server, supine, _, manifest = colonography_patient
    image = fetch_with_position(tmp_path, server, manifest, "authors")
    assert image.series_uid == supine.series_uid
    assert image.provenance["position"] == "supine"
    assert image.provenance["mask_applies"] is True
    assert server.count("getImage") == 1


def test_prone_variant_is_image_only(tmp_path, colonography_patient):
    server, _, prone, manifest = colonography_patient
    image = fetch_with_position(tmp_path, server, manifest, "prone")
    assert image.series_uid == prone.series_uid
    assert image.provenance["position"] == "prone"
    assert image.provenance["position_basis"] == "PatientPosition"
    assert image.provenance["position_choice"] == "prone"
    assert image.provenance["mask_applies"] is False
    assert sorted(p.name for p in image.path.iterdir()) == sorted(prone.files)


def test_variant_matching_authors_choice_keeps_mask(tmp_path, colonography_patient):
    server, supine, _, manifest = colonography_patient
    image = fetch_with_position(tmp_path, server, manifest, "supine")
    assert image.series_uid == supine.series_uid
    assert image.provenance["mask_applies"] is True
    assert server.count("getImage") == 1


def test_variant_without_such_series_is_an_error(tmp_path, colonography_patient):
    server, supine, prone, manifest = colonography_patient
    server.series.remove(prone)
    with pytest.raises(FetchError, match="case CTC-0001: no prone series found for the patient"):
        fetch_with_position(tmp_path, server, manifest, "prone")


def test_unknown_position_option_is_rejected(tmp_path, colonography_patient):
    server, _, _, manifest = colonography_patient
    with pytest.raises(FetchError, match="unknown position 'sideways'"):
        fetch_with_position(tmp_path, server, manifest, "sideways")
