"""Tests for the verify stage: `ctspine verify` on intact and tampered dataset folders."""
from __future__ import annotations

import gzip
import json
import shutil
import subprocess
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from click.testing import CliRunner

from ctspine_builder.cli import main
from ctspine_builder.errors import VerificationError
from ctspine_builder.nifti import save_nifti
from ctspine_builder.verify import CHECKS, case_of, verify_dataset

from datasetgen import AFFINE, SpecCase, mask_volume, write_dataset

CASE = "case_a"
IMAGE = f"data/trainset/images/{CASE}.nii.gz"
MASK = f"data/trainset/masks/{CASE}.nii.gz"
SIDECAR = f"sidecars/{CASE}.json"


@pytest.fixture()
def dataset(tmp_path: Path):
    return write_dataset(tmp_path / "out")


def run_verify(dataset, *extra: str, manifest: bool = True):
    args = ["verify", str(dataset.root)] + (["--manifest", str(dataset.manifest)] if manifest else []) + list(extra)
    return CliRunner().invoke(main, args)


def case_row(output: str, case_id: str) -> list[str]:
    """Return the table row of ``case_id`` as its cells."""
    for line in output.splitlines():
        cells = line.split()
        if cells and cells[0] == case_id:
            return cells
    raise AssertionError(f"no table row for {case_id} in:\n{output}")


def failed_checks(output: str, case_id: str) -> set[str]:
    """Return the names of the checks that the table marks FAIL for ``case_id``."""
    cells = case_row(output, case_id)
    statuses = cells[-len(CHECKS):]
    return {name for name, status in zip(CHECKS, statuses) if status == "FAIL"}


# --- intact folders ----------------------------------------------------------


def test_intact_dataset_passes(dataset, tmp_path: Path) -> None:
    report_path = tmp_path / "report.json"
    result = run_verify(dataset, "--report", str(report_path))
    assert result.exit_code == 0, result.output
    assert "OK: 3 cases checked, 0 failed." in result.output
    for case in dataset.cases:
        assert failed_checks(result.output, case.case_id) == set()
    report = json.loads(report_path.read_text())
    assert report["ok"] is True
    assert report["summary"] == {"cases": 3, "failed_cases": 0, "dataset_ok": True}
    assert {case["case_id"] for case in report["cases"]} == {case.case_id for case in dataset.cases}
    assert set(report["cases"][0]["checks"]) == set(CHECKS)


def test_intact_dataset_passes_without_manifest(dataset) -> None:
    result = run_verify(dataset, manifest=False)
    assert result.exit_code == 0, result.output
    assert "OK: 3 cases checked, 0 failed." in result.output


def test_library_returns_report(dataset) -> None:
    report = verify_dataset(dataset.root, dataset.manifest)
    assert report.ok
    assert [case.case_id for case in report.cases] == [case.case_id for case in dataset.cases]


def test_case_without_mask_passes(tmp_path: Path) -> None:
    cases = (SpecCase("case_a", "trainset"), SpecCase("case_b", "trainset", has_mask=False))
    written = write_dataset(tmp_path / "out", cases)
    report = verify_dataset(written.root, written.manifest)
    assert report.ok, report.to_dict()


def test_missing_folder_is_reported(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["verify", str(tmp_path / "absent")])
    assert result.exit_code == 1
    assert "Error: dataset folder not found" in result.output
    assert "Traceback" not in result.output
    with pytest.raises(VerificationError):
        verify_dataset(tmp_path / "absent")


def test_case_of_maps_layout_paths() -> None:
    assert case_of("data/trainset/images/liver_0.nii.gz") == "liver_0"
    assert case_of("data/test_public/masks/1.3.6.1.4.1.9328.50.4.0001.nii.gz") == "1.3.6.1.4.1.9328.50.4.0001"
    assert case_of("sidecars/HN_P001.json") == "HN_P001"
    assert case_of("data/trainset/metadata.jsonl") is None
    assert case_of("LICENSES/msd.md") is None


def test_dicom_values_found_in_outputs(dataset, tmp_path: Path) -> None:
    from dicomgen import DEFAULT_PLANTED, write_series

    write_series(tmp_path / "dicom", slices=2)
    clean = run_verify(dataset, "--dicom", str(tmp_path / "dicom"))
    assert clean.exit_code == 0, clean.output

    path = dataset.root / SIDECAR
    sidecar = json.loads(path.read_text())
    sidecar["ConvolutionKernel"] = DEFAULT_PLANTED["StationName"]
    path.write_text(json.dumps(sidecar))
    result = run_verify(dataset, "--dicom", str(tmp_path / "dicom"))
    assert result.exit_code == 1
    assert failed_checks(result.output, CASE) == {"sums", "phi"}
    assert f"{SIDECAR}: deny value at byte" in result.output
    assert DEFAULT_PLANTED["StationName"] not in result.output


def test_missing_dicom_folder_is_rejected(dataset, tmp_path: Path) -> None:
    result = run_verify(dataset, "--dicom", str(tmp_path / "absent"))
    assert result.exit_code == 2
    assert "does not exist" in result.output


# --- tampered folders --------------------------------------------------------


def test_flipped_byte_fails(dataset) -> None:
    path = dataset.root / IMAGE
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    result = run_verify(dataset)
    assert result.exit_code == 1
    assert failed_checks(result.output, CASE) >= {"sums", "hashes"}
    assert f"{IMAGE} does not match its SHA-256 in SHA256SUMS" in result.output
    assert "content is intact" not in result.output


def test_changed_content_fails_hash(dataset) -> None:
    image = nib.load(str(dataset.root / IMAGE))
    data = np.asanyarray(image.dataobj).copy()
    data[0, 0, 0] += 1
    save_nifti(data, image.affine, dataset.root / IMAGE)
    result = run_verify(dataset)
    assert result.exit_code == 1
    assert failed_checks(result.output, CASE) == {"sums", "hashes"}
    assert "differs from" in result.output
    assert "pinned in the manifest" in result.output
    assert "recorded in build.json" in result.output


def test_changed_content_fails_with_deny_values(dataset) -> None:
    # With deny values the scan computes the content hashes that the hash check then uses.
    image = nib.load(str(dataset.root / IMAGE))
    data = np.asanyarray(image.dataobj).copy()
    data[0, 0, 0] += 1
    save_nifti(data, image.affine, dataset.root / IMAGE)
    report = verify_dataset(dataset.root, dataset.manifest, deny_values=["PLANTSTATION7"])
    case = next(case for case in report.cases if case.case_id == CASE)
    assert not case.checks["hashes"].ok
    assert all(other.ok for other in report.cases if other.case_id != CASE)


def test_deleted_file_fails(dataset) -> None:
    (dataset.root / MASK).unlink()
    result = run_verify(dataset)
    assert result.exit_code == 1
    assert failed_checks(result.output, CASE) == {"files", "sums"}
    assert f"{MASK} is missing" in result.output
    assert f"{MASK} is listed in SHA256SUMS but missing" in result.output


def test_added_file_fails(dataset) -> None:
    (dataset.root / "notes.txt").write_text("an extra file\n")
    result = run_verify(dataset)
    assert result.exit_code == 1
    assert failed_checks(result.output, "dataset") == {"sums"}
    assert "notes.txt is not listed in SHA256SUMS (extra file)" in result.output


def test_added_case_file_fails(dataset) -> None:
    shutil.copy(dataset.root / IMAGE, dataset.root / "data/trainset/images/stranger.nii.gz")
    result = run_verify(dataset)
    assert result.exit_code == 1
    assert "data/trainset/images/stranger.nii.gz belongs to case stranger, which is not an expected case" in result.output


def test_label_30_fails(dataset) -> None:
    data = mask_volume()
    data[1, 1, 1] = 30
    save_nifti(data, AFFINE, dataset.root / MASK)
    result = run_verify(dataset)
    assert result.exit_code == 1
    assert "labels" in failed_checks(result.output, CASE)
    assert "mask contains unexpected label values [30]" in result.output


def test_int16_mask_fails(dataset) -> None:
    save_nifti(mask_volume().astype(np.int16), AFFINE, dataset.root / MASK)
    result = run_verify(dataset)
    assert result.exit_code == 1
    assert "labels" in failed_checks(result.output, CASE)
    assert f"{MASK} stores int16, expected uint8" in result.output


def test_shifted_mask_affine_fails(dataset) -> None:
    shifted = AFFINE.copy()
    shifted[2, 3] += 1.25
    save_nifti(mask_volume(), shifted, dataset.root / MASK)
    result = run_verify(dataset)
    assert result.exit_code == 1
    assert "geometry" in failed_checks(result.output, CASE)
    assert "mask does not fit the image grid: voxel centres differ by up to 1.25 mm" in result.output


def test_flipped_mask_grid_fails(dataset) -> None:
    flip = np.eye(4)
    flip[1, 1] = -1
    flip[1, 3] = mask_volume().shape[1] - 1
    save_nifti(np.flip(mask_volume(), axis=1).copy(), AFFINE @ flip, dataset.root / MASK)
    result = run_verify(dataset)
    assert result.exit_code == 1
    assert "geometry" in failed_checks(result.output, CASE)
    assert f"{MASK} is on a permuted or flipped grid" in result.output


def test_date_in_sidecar_fails(dataset) -> None:
    path = dataset.root / SIDECAR
    sidecar = json.loads(path.read_text())
    sidecar["Manufacturer"] = "SIEMENS 20221208"
    path.write_text(json.dumps(sidecar, indent=2))
    result = run_verify(dataset)
    assert result.exit_code == 1
    assert "phi" in failed_checks(result.output, CASE)
    assert f"{SIDECAR}: date pattern at line" in result.output
    assert "20221208" not in result.output


def test_unknown_sidecar_key_fails(dataset) -> None:
    path = dataset.root / SIDECAR
    path.write_text(json.dumps({"CaseId": CASE, "StationName": "CTAWP00001"}))
    result = run_verify(dataset)
    assert result.exit_code == 1
    assert f"{SIDECAR}: sidecar key at key 'StationName' (key not on the sidecar allow-list)" in result.output


def test_nifti_extension_fails(dataset) -> None:
    image = nib.load(str(dataset.root / MASK))
    image.header.extensions.append(nib.nifti1.Nifti1Extension(6, b"drawn by hand"))
    nib.save(image, str(dataset.root / MASK))
    result = run_verify(dataset)
    assert result.exit_code == 1
    assert "phi" in failed_checks(result.output, CASE)
    assert f"{MASK}: extension at NIfTI header extension 0 (extension code 6 present; outputs carry none)" in result.output


def test_header_descrip_fails(dataset) -> None:
    image = nib.load(str(dataset.root / IMAGE))
    image.header["descrip"] = b"Head^Neck protocol"
    nib.save(image, str(dataset.root / IMAGE))
    result = run_verify(dataset)
    assert result.exit_code == 1
    assert f"{IMAGE}: header field at NIfTI header field descrip" in result.output
    assert "Head^Neck" not in result.output


def test_deny_value_found_by_library(dataset) -> None:
    path = dataset.root / SIDECAR
    sidecar = json.loads(path.read_text())
    sidecar["ConvolutionKernel"] = "Br40d-PLANTSTATION7"
    path.write_text(json.dumps(sidecar))
    offset = path.read_text().index("PLANTSTATION7")
    report = verify_dataset(dataset.root, deny_values=["PLANTSTATION7", "CT"])
    case = next(case for case in report.cases if case.case_id == CASE)
    messages = case.checks["phi"].messages
    assert messages == [f"{SIDECAR}: deny value at byte {offset} of the content (deny-list value #1)"]
    assert report.notes == ["1 deny values shorter than 4 characters were not searched"]


def test_removed_licence_fails(dataset) -> None:
    (dataset.root / "LICENSES" / "phantom-masks.md").unlink()
    result = run_verify(dataset)
    assert result.exit_code == 1
    for case in dataset.cases:
        assert "licence" in failed_checks(result.output, case.case_id)
    assert "LICENSES/phantom-masks.md is missing" in result.output


def test_licence_without_spdx_id_fails(dataset) -> None:
    (dataset.root / "LICENSES" / "phantom-ct.md").write_text("# phantom-ct\n\nSome licence.\n")
    result = run_verify(dataset)
    assert result.exit_code == 1
    assert "LICENSES/phantom-ct.md does not name the licence CC0-1.0" in result.output


def recompress(path: Path) -> None:
    """Re-compress a .nii.gz with the gzip command at level 9 (Python's gzip module if the command is absent)."""
    raw = gzip.decompress(path.read_bytes())
    if shutil.which("gzip"):
        result = subprocess.run(["gzip", "-9", "-c"], input=raw, capture_output=True, check=True)
        path.write_bytes(result.stdout)
    else:
        path.write_bytes(gzip.compress(raw, compresslevel=9))


def test_recompressed_copy_keeps_content_hash(dataset) -> None:
    before = (dataset.root / IMAGE).read_bytes()
    recompress(dataset.root / IMAGE)
    assert (dataset.root / IMAGE).read_bytes() != before
    result = run_verify(dataset)
    assert result.exit_code == 1
    assert failed_checks(result.output, CASE) == {"sums"}
    assert "its decompressed content is intact" in result.output
    assert "only the gzip compression differs" in result.output


def test_pinned_hash_mismatch_fails(dataset) -> None:
    manifest = json.loads(dataset.manifest.read_text())
    manifest["cases"][0]["image_sha256"] = "a" * 64
    dataset.manifest.write_text(json.dumps(manifest))
    result = run_verify(dataset)
    assert result.exit_code == 1
    assert failed_checks(result.output, CASE) == {"hashes"}
    assert f"differs from {'a' * 64} pinned in the manifest" in result.output


def test_case_missing_from_metadata_fails(dataset) -> None:
    path = dataset.root / "data" / "trainset" / "metadata.jsonl"
    path.write_text("")
    result = run_verify(dataset)
    assert result.exit_code == 1
    assert "files" in failed_checks(result.output, CASE)
    assert "case is missing from data/trainset/metadata.jsonl" in result.output


def test_case_not_in_manifest_fails(dataset) -> None:
    manifest = json.loads(dataset.manifest.read_text())
    manifest["cases"] = manifest["cases"][1:]
    dataset.manifest.write_text(json.dumps(manifest))
    result = run_verify(dataset)
    assert result.exit_code == 1
    assert f"case {CASE} is in the dataset but not in the manifest" in result.output


def test_malformed_sums_line_fails(dataset) -> None:
    with open(dataset.root / "SHA256SUMS", "a") as handle:
        handle.write("not a checksum line\n")
    result = run_verify(dataset)
    assert result.exit_code == 1
    assert failed_checks(result.output, "dataset") == {"sums"}
    assert "is not '<sha256>  <path>'" in result.output


def test_sums_path_outside_folder_fails(dataset) -> None:
    with open(dataset.root / "SHA256SUMS", "a") as handle:
        handle.write(f"{'0' * 64}  ../outside.txt\n")
    result = run_verify(dataset)
    assert result.exit_code == 1
    assert "names a path outside the dataset folder" in result.output


def test_binary_metadata_fails(dataset) -> None:
    (dataset.root / "data" / "trainset" / "metadata.jsonl").write_bytes(b"\xff\xfe\x00garbage")
    result = run_verify(dataset)
    assert result.exit_code == 1
    assert "data/trainset/metadata.jsonl cannot be read as UTF-8 text (UnicodeDecodeError)" in result.output
    assert "Traceback" not in result.output


def test_missing_build_json_fails(dataset) -> None:
    (dataset.root / "build.json").unlink()
    result = run_verify(dataset)
    assert result.exit_code == 1
    assert "build.json is missing" in result.output


# --- the demo build ------------------------------------------------------------

DEMO_CASE = "phantom_000"
DEMO_IMAGE = f"data/trainset/images/{DEMO_CASE}.nii.gz"
DEMO_MASK = f"data/trainset/masks/{DEMO_CASE}.nii.gz"
DEMO_SIDECAR = f"sidecars/{DEMO_CASE}.json"


@pytest.fixture(scope="module")
def demo_build(tmp_path_factory) -> Path:
    """A dataset folder built by `ctspine demo` (three phantom cases), built once for this module."""
    out = tmp_path_factory.mktemp("demo")
    result = CliRunner().invoke(main, ["-q", "demo", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "Dataset built and verified" in result.output
    return out


@pytest.fixture()
def demo_copy(demo_build: Path, tmp_path: Path) -> Path:
    """A private copy of the demo build that a test may tamper with."""
    shutil.copytree(demo_build, tmp_path / "demo")
    return tmp_path / "demo"


def verify_demo(root: Path):
    manifest = root / "sources" / "manifest.json"
    return CliRunner().invoke(main, ["verify", str(root / "dataset"), "--manifest", str(manifest)])


def flip_byte(dataset: Path) -> None:
    path = dataset / DEMO_IMAGE
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def set_label_30(dataset: Path) -> None:
    mask = nib.load(str(dataset / DEMO_MASK))
    data = np.asanyarray(mask.dataobj).copy()
    data[data == data.max()] = 30
    save_nifti(data, mask.affine, dataset / DEMO_MASK)


def shift_mask_affine(dataset: Path) -> None:
    mask = nib.load(str(dataset / DEMO_MASK))
    affine = mask.affine.copy()
    affine[0, 3] += 0.5
    save_nifti(np.asanyarray(mask.dataobj), affine, dataset / DEMO_MASK)


def plant_sidecar_date(dataset: Path) -> None:
    path = dataset / DEMO_SIDECAR
    sidecar = json.loads(path.read_text())
    sidecar["Manufacturer"] = "phantom 2022-12-08"
    path.write_text(json.dumps(sidecar, indent=2, sort_keys=True) + "\n")


def add_extension(dataset: Path) -> None:
    image = nib.load(str(dataset / DEMO_IMAGE))
    image.header.extensions.append(nib.nifti1.Nifti1Extension(4, b"<afni>comment</afni>"))
    nib.save(image, str(dataset / DEMO_IMAGE))


DEMO_TAMPERS = [
    ("flip-byte", flip_byte, {"sums", "hashes"}, f"{DEMO_IMAGE} does not match its SHA-256 in SHA256SUMS"),
    ("delete-file", lambda d: (d / DEMO_MASK).unlink(), {"files", "sums"}, f"{DEMO_MASK} is missing"),
    ("add-file", lambda d: (d / "data/trainset/images/extra.txt").write_text("x\n"), set(),
     "data/trainset/images/extra.txt is not listed in SHA256SUMS (extra file)"),
    ("label-30", set_label_30, {"sums", "hashes", "labels"}, "mask contains unexpected label values [30]"),
    ("shift-mask-affine", shift_mask_affine, {"sums", "hashes", "geometry"},
     "mask does not fit the image grid: voxel centres differ by up to 0.5 mm"),
    ("sidecar-date", plant_sidecar_date, {"sums", "phi"}, f"{DEMO_SIDECAR}: date pattern at line"),
    ("nifti-extension", add_extension, {"sums", "hashes", "phi"}, f"{DEMO_IMAGE}: extension at NIfTI header extension 0"),
    ("remove-licence", lambda d: (d / "LICENSES/phantom-masks.md").unlink(), {"licence"},
     "LICENSES/phantom-masks.md is missing"),
    ("gzip-9", lambda d: recompress(d / DEMO_IMAGE), {"sums"}, "its decompressed content is intact"),
]


def test_demo_build_verifies(demo_copy: Path) -> None:
    result = verify_demo(demo_copy)
    assert result.exit_code == 0, result.output
    assert "OK: 3 cases checked, 0 failed." in result.output


@pytest.mark.parametrize(("tamper", "failing", "message"), [t[1:] for t in DEMO_TAMPERS], ids=[t[0] for t in DEMO_TAMPERS])
def test_demo_tamper_fails(demo_copy: Path, tamper, failing: set[str], message: str) -> None:
    tamper(demo_copy / "dataset")
    result = verify_demo(demo_copy)
    assert result.exit_code == 1
    assert "FAIL:" in result.output
    assert message in result.output
    assert failed_checks(result.output, DEMO_CASE) == failing
