"""Tests that no identifying value planted in DICOM headers reaches any built file."""
from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from ctspine_builder.cli import main
from ctspine_builder.fileio import is_gzip
from dicomgen import nbia_series_folder, write_series

from isal import igzip


def output_texts(out: Path) -> dict[str, bytes]:
    """Return every output file's decompressed bytes by relative path."""
    texts = {}
    for path in sorted(out.rglob("*")):
        if path.is_file():
            data = igzip.decompress(path.read_bytes()) if is_gzip(path) else path.read_bytes()
            texts[path.relative_to(out).as_posix()] = data
    return texts


def write_manifest(root: Path, locator: str, compression: str) -> Path:
    manifest = {
        "format": 1,
        "dataset": {"name": "planted", "version": "0.1.0", "citation": "Planted-value test."},
        "sources": [{"id": "dicom", "kind": "local-dicom", "license": "CC0-1.0", "locator": "dicom",
                     "citation": "Synthetic series with planted values."}],
        "cases": [
            {"case_id": f"case_{compression}", "subset": "PLANTED", "split": "trainset",
             "image": {"source": "dicom", "locator": locator}, "mask": None},
        ],
    }
    path = root / "manifest.json"
    path.write_text(json.dumps(manifest))
    return path


def check_build_hides_planted(tmp_path: Path, compression: str) -> None:
    # The NBIA Data Retriever layout: PatientID/study/series; the case's
    # locator names the PatientID folder.
    series_folder = nbia_series_folder(tmp_path / "dicom")
    info = write_series(series_folder, compression=compression, slices=5)
    patient_folder = series_folder.parent.parent.name
    manifest = write_manifest(tmp_path, patient_folder, compression)
    out = tmp_path / "dataset"
    result = CliRunner().invoke(main, ["-q", "build", "--manifest", str(manifest), "--out", str(out)])
    assert result.exit_code == 0, result.output

    planted = info.planted_values()
    assert len(planted) > 20
    # The same search finds the values in the input, so a miss below means absence.
    input_bytes = b"".join(path.read_bytes() for path in info.files).lower()
    assert b"plantville general hospital" in input_bytes
    texts = output_texts(out)
    assert f"data/trainset/images/case_{compression}.nii.gz" in texts
    for relative, data in texts.items():
        lowered = data.lower()
        for value in planted:
            assert value.lower().encode("utf-8") not in lowered, f"planted value found in {relative}"
            assert value.lower() not in relative.lower(), f"planted value in file name {relative}"
    for value in planted:
        assert value not in result.output


def test_planted_values_absent_uncompressed(tmp_path):
    check_build_hides_planted(tmp_path, "none")


def test_planted_values_absent_jpeg2000(tmp_path):
    check_build_hides_planted(tmp_path, "jpeg2000")
