"""End-to-end test on the real Siemens JPEG 2000 series: build, verify, load, no identifiers."""
from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from click.testing import CliRunner

from ctspine_builder.cli import main
from ctspine_builder.fileio import is_gzip

from isal import igzip

CASE_ID = "siemens_0001"

# Header fields of the shared series that identify the site, the device or the
# study, by DICOM keyword. A missing or empty one is skipped.
IDENTIFYING_KEYWORDS = (
    "StudyDate",
    "SeriesDate",
    "AcquisitionDate",
    "ContentDate",
    "StationName",
    "DeviceSerialNumber",
    "InstitutionAddress",
    "InstitutionName",
    "ProtocolName",
)
TEXT_VRS = {"LO", "SH", "CS", "ST", "LT", "UT", "PN"}


def identifying_values(dicom_dir: Path) -> set[str]:
    """Return the identifying strings of every file: header fields, private text and UIDs."""
    values: set[str] = set()
    for path in sorted(dicom_dir.iterdir()):
        dataset = pydicom.dcmread(path, stop_before_pixels=True)
        for keyword in IDENTIFYING_KEYWORDS:
            value = str(dataset.get(keyword, "") or "").strip()
            if value:
                values.add(value)
                if keyword.endswith("Date") and len(value) == 8:
                    values.add(f"{value[:4]}-{value[4:6]}-{value[6:]}")
        for element in dataset.iterall():
            text = str(element.value).strip() if element.VR in TEXT_VRS | {"UI"} and element.value else ""
            if element.VR == "UI" and text and not text.startswith("1.2.840.10008."):
                # Transfer syntax and SOP class UIDs are public standard values.
                values.add(text)
            elif element.tag.is_private and element.VR in TEXT_VRS and len(text) >= 5:
                values.add(text)
    return values


@pytest.fixture(scope="module")
def built(siemens_dir: Path, tmp_path_factory) -> tuple[Path, Path, object]:
    """Build the shared series with its mask through `ctspine build`."""
    root = tmp_path_factory.mktemp("siemens")
    manifest = {
        "format": 1,
        "dataset": {"name": "siemens-e2e", "version": "0.1.0", "citation": "End-to-end test on a real series."},
        "sources": [
            {"id": "siemens-dicom", "kind": "local-dicom", "license": "Apache-2.0", "locator": str(siemens_dir),
             "citation": "TotalSegmentator test files (github.com/wasserth/TotalSegmentator)."},
            {"id": "siemens-mask", "kind": "local-nifti", "license": "Apache-2.0", "locator": str(siemens_dir),
             "citation": "Vertebra labels derived from TotalSegmentator's example segmentation."},
        ],
        "cases": [
            {"case_id": CASE_ID, "subset": "SIEMENS", "split": "trainset",
             "image": {"source": "siemens-dicom", "locator": "dicom"},
             "mask": {"source": "siemens-mask", "locator": "vertebrae_mask.nii.gz"}},
        ],
    }
    manifest_path = root / "manifest.json"
    manifest_path.write_text(json.dumps(manifest, indent=2))
    out = root / "dataset"
    result = CliRunner().invoke(main, ["-q", "build", "--manifest", str(manifest_path), "--out", str(out)])
    return out, manifest_path, result


def test_build_succeeds(built):
    out, _, result = built
    assert result.exit_code == 0, result.output
    assert "1 built" in result.output
    assert (out / f"data/trainset/images/{CASE_ID}.nii.gz").is_file()


def test_rerun_changes_nothing(built):
    out, manifest_path, _ = built
    before = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(out.rglob("*")) if p.is_file()}
    result = CliRunner().invoke(main, ["-q", "build", "--manifest", str(manifest_path), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "1 unchanged" in result.output
    after = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(out.rglob("*")) if p.is_file()}
    assert after == before


def test_verify_passes(built):
    out, manifest_path, _ = built
    result = CliRunner().invoke(main, ["verify", str(out), "--manifest", str(manifest_path)])
    assert result.exit_code == 0, result.output


def test_label_counts_kept_by_pairing(built, siemens_mask):
    out, _, _ = built
    source = np.asarray(nib.load(siemens_mask).dataobj)
    paired = np.asarray(nib.load(out / f"data/trainset/masks/{CASE_ID}.nii.gz").dataobj)
    assert {18, 19} <= set(np.unique(paired).tolist())
    for label in (18, 19):
        expected = int((source == label).sum())
        kept = int((paired == label).sum())
        assert abs(kept - expected) <= 0.005 * expected, f"label {label}: {kept} of {expected} voxels"


def test_identifying_values_reach_no_output(built, siemens_dicom):
    out, _, result = built
    values = identifying_values(siemens_dicom)
    # Study date, station, serial, address, protocol, UIDs and private text.
    assert len(values) >= 8
    for path in sorted(out.rglob("*")):
        if not path.is_file():
            continue
        relative = path.relative_to(out).as_posix()
        data = igzip.decompress(path.read_bytes()) if is_gzip(path) else path.read_bytes()
        for value in values:
            assert value.encode("utf-8") not in data, f"an identifying header value was found in {relative}"
            assert value not in relative, f"an identifying header value is in the file name {relative}"
    for value in values:
        assert value not in result.output


@pytest.mark.slow
def test_load_dataset_values(built, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf" / "datasets"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    from datasets import load_dataset

    out, _, _ = built
    dataset = load_dataset(str(out), cache_dir=str(tmp_path / "hf" / "datasets"))
    assert list(dataset) == ["trainset"]
    sample = dataset["trainset"][0]
    assert sample["case_id"] == CASE_ID
    assert sample["subset"] == "SIEMENS"
    hu = sample["image"].get_fdata()
    assert hu.shape == (512, 512, 20)
    # RescaleIntercept is -1024: air outside the field of view sits at the floor.
    assert -1030 <= hu.min() <= -1000
    assert 1000 <= hu.max() <= 4000
    labels = np.asarray(sample["mask"].dataobj)
    assert {18, 19} <= set(np.unique(labels).tolist())
    assert labels.shape == hu.shape
