"""Tests of `ctspine build` on phantom DICOM series: layout, re-runs, failures, filters, dry run."""
from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from click.testing import CliRunner

from ctspine_builder.cli import main
from ctspine_builder.demo import write_demo_sources
from ctspine_builder.nifti import save_nifti


@pytest.fixture()
def sources(tmp_path: Path):
    """Three phantom cases (one per split) with their manifest."""
    return write_demo_sources(tmp_path / "sources", cases=3)


def run_build(manifest: Path, out: Path, *extra: str):
    result = CliRunner().invoke(main, ["-q", "build", "--manifest", str(manifest), "--out", str(out), *extra])
    return result


def edit_manifest(manifest: Path, change) -> None:
    document = json.loads(manifest.read_text())
    change(document)
    manifest.write_text(json.dumps(document, indent=2))


def snapshot(folder: Path) -> dict[str, tuple[bytes, int]]:
    return {
        p.relative_to(folder).as_posix(): (p.read_bytes(), p.stat().st_mtime_ns)
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def test_build_writes_dataset_layout(sources, tmp_path):
    out = tmp_path / "dataset"
    result = run_build(sources.manifest, out)
    assert result.exit_code == 0, result.output
    assert "3 built" in result.output
    for split, case_id in (("trainset", "phantom_000"), ("test_public", "phantom_001"), ("test_private", "phantom_002")):
        assert (out / f"data/{split}/images/{case_id}.nii.gz").is_file()
        assert (out / f"data/{split}/masks/{case_id}.nii.gz").is_file()
        assert (out / f"data/{split}/metadata.jsonl").is_file()
        assert (out / f"sidecars/{case_id}.json").is_file()
    for name in ("README.md", "SHA256SUMS", "build.json", "LICENSES/phantom-dicom.md", "LICENSES/phantom-masks.md"):
        assert (out / name).is_file(), name
    assert not (out / ".staging").exists()


def test_built_mask_sits_on_phantom_bone(sources, tmp_path):
    out = tmp_path / "dataset"
    assert run_build(sources.manifest, out).exit_code == 0
    image = nib.load(out / "data/trainset/images/phantom_000.nii.gz")
    mask = nib.load(out / "data/trainset/masks/phantom_000.nii.gz")
    labels = np.asarray(mask.dataobj)
    hu = image.get_fdata()
    assert np.allclose(image.affine, mask.affine)
    assert mask.get_data_dtype() == np.uint8
    assert sorted(np.unique(labels)) == [0, 18, 19, 20]
    # Phantom bone is 700 HU with 10 HU noise; every labelled voxel must be bone.
    assert hu[labels > 0].min() > 600
    assert hu[labels == 0].max() < 600


def test_rerun_changes_nothing(sources, tmp_path):
    out = tmp_path / "dataset"
    assert run_build(sources.manifest, out).exit_code == 0
    before = snapshot(out)
    result = run_build(sources.manifest, out)
    assert result.exit_code == 0, result.output
    assert "3 unchanged" in result.output
    assert snapshot(out) == before


def test_changed_mask_rebuilds_one_case(sources, tmp_path):
    out = tmp_path / "dataset"
    assert run_build(sources.manifest, out).exit_code == 0
    mask_path = sources.root / "masks" / "phantom_001.nii.gz"
    mask = nib.load(mask_path)
    labels = np.asarray(mask.dataobj).copy()
    labels[labels == 21] = 22
    save_nifti(labels, mask.affine, mask_path)
    result = run_build(sources.manifest, out)
    assert result.exit_code == 0, result.output
    assert "1 built, 2 unchanged" in result.output
    rebuilt = np.asarray(nib.load(out / "data/test_public/masks/phantom_001.nii.gz").dataobj)
    assert 22 in rebuilt
    assert 21 not in rebuilt


def test_two_builds_are_byte_identical(sources, tmp_path):
    first, second = tmp_path / "one", tmp_path / "two"
    assert run_build(sources.manifest, first).exit_code == 0
    assert run_build(sources.manifest, second, "--jobs", "2").exit_code == 0
    one = {name: data for name, (data, _) in snapshot(first).items()}
    two = {name: data for name, (data, _) in snapshot(second).items()}
    assert sorted(one) == sorted(two)
    for name in one:
        assert one[name] == two[name], name


def test_corrupt_case_fails_others_finish(sources, tmp_path):
    for dicom_file in (sources.root / "dicom" / "phantom_001").iterdir():
        dicom_file.write_bytes(b"not a DICOM file" * 20)
    out = tmp_path / "dataset"
    result = run_build(sources.manifest, out)
    assert result.exit_code == 1
    assert "phantom_001" in result.output
    assert "failed" in result.output
    assert "2 built" in result.output
    assert (out / "data/trainset/images/phantom_000.nii.gz").is_file()
    assert (out / "data/test_private/images/phantom_002.nii.gz").is_file()
    assert not (out / "data/test_public").exists()
    assert "phantom_001" not in (out / "SHA256SUMS").read_text()


def test_missing_dicom_folder_names_case_and_path(sources, tmp_path):
    edit_manifest(sources.manifest, lambda doc: doc["cases"][0]["image"].update(locator="nowhere"))
    result = run_build(sources.manifest, tmp_path / "dataset")
    assert result.exit_code == 1
    assert "case phantom_000: DICOM folder not found in local source 'phantom-dicom'" in result.output
    assert "nowhere" in result.output
    assert "Place the DICOM folder there" in result.output


def test_missing_mask_file_names_case_and_path(sources, tmp_path):
    (sources.root / "masks" / "phantom_002.nii.gz").unlink()
    result = run_build(sources.manifest, tmp_path / "dataset")
    assert result.exit_code == 1
    assert "case phantom_002: mask NIfTI file not found in local source 'phantom-masks'" in result.output
    assert "phantom_002.nii.gz" in result.output


def test_pinned_hash_mismatch_fails_case(sources, tmp_path):
    edit_manifest(sources.manifest, lambda doc: doc["cases"][0].update(image_sha256="0" * 64))
    result = run_build(sources.manifest, tmp_path / "dataset")
    assert result.exit_code == 1
    assert "but the manifest pins 0000" in result.output


def test_invalid_geometry_option_rejected(sources, tmp_path):
    edit_manifest(sources.manifest, lambda doc: doc["sources"][0].update(options={"geometry": "sideways"}))
    result = run_build(sources.manifest, tmp_path / "dataset")
    assert result.exit_code == 1
    assert "invalid geometry option 'sideways'" in result.output


def test_case_and_split_filters(sources, tmp_path):
    out = tmp_path / "dataset"
    result = run_build(sources.manifest, out, "--cases", "phantom_002")
    assert result.exit_code == 0, result.output
    assert [p.name for p in (out / "data").iterdir()] == ["test_private"]
    result = run_build(sources.manifest, out, "--split", "trainset")
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (out / "data").iterdir()) == ["test_private", "trainset"]


def test_unknown_case_id_rejected(sources, tmp_path):
    result = run_build(sources.manifest, tmp_path / "dataset", "--cases", "phantom_999")
    assert result.exit_code == 1
    assert "case id(s) not in the manifest: phantom_999" in result.output


def test_dry_run_writes_nothing(sources, tmp_path):
    out = tmp_path / "dataset"
    result = run_build(sources.manifest, out, "--dry-run")
    assert result.exit_code == 0, result.output
    assert "phantom_001" in result.output
    assert "download 0 B" in result.output
    assert not out.exists()


def test_dry_run_reports_missing_input(sources, tmp_path):
    (sources.root / "masks" / "phantom_000.nii.gz").unlink()
    result = run_build(sources.manifest, tmp_path / "dataset", "--dry-run")
    assert result.exit_code == 1
    assert "1 case(s) cannot be planned" in result.output


def test_final_verification_catches_leaked_value(sources, tmp_path):
    import pydicom

    # A station name read from the DICOM input that the manifest's description
    # repeats: the per-case scan cannot see the card, the final check must.
    for path in (sources.root / "dicom" / "phantom_000").iterdir():
        dataset = pydicom.dcmread(path)
        dataset.StationName = "STATIONLEAK42"
        dataset.save_as(path)
    edit_manifest(sources.manifest, lambda doc: doc["dataset"].update(description="Scanned at STATIONLEAK42."))
    out = tmp_path / "dataset"
    result = run_build(sources.manifest, out)
    assert result.exit_code == 1
    assert f"Verification of {out} failed" in result.output
    assert "STATIONLEAK42" not in result.output


def test_lock_hash_recorded_in_build_json(sources, tmp_path):
    from ctspine_builder.fileio import sha256_file

    lock = tmp_path / "my-lock.json"
    lock.write_text('{"format": 1, "series": {}}\n')
    out = tmp_path / "dataset"
    result = run_build(sources.manifest, out, "--lock", str(lock))
    assert result.exit_code == 0, result.output
    document = json.loads((out / "build.json").read_text())
    assert document["lock_sha256"] == sha256_file(lock)
    assert sha256_file(lock) in (out / "README.md").read_text()


def test_unrelated_nonempty_folder_rejected(sources, tmp_path):
    out = tmp_path / "holiday-photos"
    out.mkdir()
    (out / "beach.jpg").write_bytes(b"jpeg")
    result = run_build(sources.manifest, out)
    assert result.exit_code == 1
    assert "output folder is not empty and holds no earlier build" in result.output
    assert "beach.jpg" in result.output
    assert sorted(p.name for p in out.iterdir()) == ["beach.jpg"]


def test_concurrent_build_rejected(sources, tmp_path):
    import fcntl

    out = tmp_path / "dataset"
    out.mkdir()
    with open(out / ".ctspine-build.lock", "a+b") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        result = run_build(sources.manifest, out)
    assert result.exit_code == 1
    assert "another build is writing into this folder" in result.output
    assert not (out / "build.json").exists()


def test_no_verify_skips_final_check(sources, tmp_path):
    import pydicom

    for path in (sources.root / "dicom" / "phantom_000").iterdir():
        dataset = pydicom.dcmread(path)
        dataset.StationName = "STATIONLEAK42"
        dataset.save_as(path)
    edit_manifest(sources.manifest, lambda doc: doc["dataset"].update(description="Scanned at STATIONLEAK42."))
    out = tmp_path / "dataset"
    result = run_build(sources.manifest, out, "--no-verify")
    assert result.exit_code == 0, result.output
    assert "Verification" not in result.output
