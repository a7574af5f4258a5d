"""Tests of slice order and affine in both geometry modes, against dcm2niix and SimpleITK."""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

import dicomgen
from ctspine_builder.dicom.convert import convert_series
from ctspine_builder.errors import ConversionError

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


def load_volume(path: Path) -> np.ndarray:
    """Return the NIfTI voxels as a (slice, row, column) array."""
    return np.asanyarray(nib.load(path).dataobj).transpose(2, 1, 0)


def read_with_simpleitk(folder: Path) -> sitk.Image:
    """Read the folder's series as the CTSpine1K authors did."""
    reader = sitk.ImageSeriesReader()
    uid = reader.GetGDCMSeriesIDs(str(folder))[0]
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder), uid))
    return reader.Execute()


def assert_matches_simpleitk(nifti_path: Path, image: sitk.Image) -> None:
    """Check grid and voxels of our output against a SimpleITK image (LPS)."""
    ours = nib.load(nifti_path)
    lps = LPS_TO_RAS @ ours.affine
    spacing = np.linalg.norm(lps[:3, :3], axis=0)
    direction = lps[:3, :3] / spacing
    assert np.allclose(lps[:3, 3], image.GetOrigin(), atol=1e-4)
    assert np.allclose(spacing, image.GetSpacing(), atol=1e-4)
    assert np.allclose(direction, np.array(image.GetDirection()).reshape(3, 3), atol=1e-4)
    expected = sitk.GetArrayFromImage(image).astype(np.float64)
    ours_array = np.asanyarray(ours.dataobj).transpose(2, 1, 0).astype(np.float64)
    assert ours_array.shape == expected.shape
    assert np.array_equal(ours_array, expected)


def assert_world_positions(nifti_path: Path, info: dicomgen.SeriesInfo, order: np.ndarray) -> None:
    """Check that voxel (i, j, k) lies where DICOM puts column i, row j of slice order[k]."""
    affine = nib.load(nifti_path).affine
    row_spacing, column_spacing = info.pixel_spacing
    for k, index in enumerate(order):
        for i, j in ((0, 0), (5, 0), (0, 7), (11, 13)):
            lps = info.positions[index] + i * column_spacing * info.row_cosine + j * row_spacing * info.column_cosine
            expected = (LPS_TO_RAS @ np.append(lps, 1.0))[:3]
            assert np.allclose((affine @ [i, j, k, 1.0])[:3], expected, atol=1e-4), (i, j, k)


def test_strict_sorts_by_position(tmp_path: Path) -> None:
    offsets = [5.0, 0.0, 10.0, 2.5, 7.5]
    info = dicomgen.write_series(tmp_path / "in", offsets=offsets, instance_numbers="ascending")
    result = convert_series(tmp_path / "in", tmp_path / "out.nii.gz")
    order = np.argsort(offsets)
    assert np.array_equal(load_volume(result.path), info.hu[order])
    assert_world_positions(result.path, info, order)


def test_strict_sagittal_affine(tmp_path: Path) -> None:
    info = dicomgen.write_series(tmp_path / "in", slices=4, row_cosine=(0, 1, 0), column_cosine=(0, 0, -1))
    result = convert_series(tmp_path / "in", tmp_path / "out.nii.gz")
    # The normal, row x column = (0, 1, 0) x (0, 0, -1) = (-1, 0, 0) in LPS, points to the right.
    assert nib.aff2axcodes(result.affine) == ("P", "I", "R")
    assert_world_positions(result.path, info, np.arange(4))


def test_strict_oblique_affine(tmp_path: Path) -> None:
    angle = np.radians(20)
    row = (np.cos(angle), np.sin(angle), 0.0)
    column = (-np.sin(angle), np.cos(angle), 0.0)
    info = dicomgen.write_series(tmp_path / "in", slices=4, row_cosine=row, column_cosine=column)
    result = convert_series(tmp_path / "in", tmp_path / "out.nii.gz")
    assert_world_positions(result.path, info, np.arange(4))


def test_strict_missing_slice_named(tmp_path: Path) -> None:
    dicomgen.write_series(tmp_path / "in", offsets=[0, 2.5, 5, 10, 12.5], origin=(0, 0, 40))
    with pytest.raises(ConversionError) as caught:
        convert_series(tmp_path / "in", tmp_path / "out.nii.gz", case_id="c3")
    message = str(caught.value)
    assert "1 missing slice(s): gap of 5.000 mm between 45.000 and 50.000 mm" in message
    assert "expected 2.500 mm" in message
    assert "case c3" in message
    assert not (tmp_path / "out.nii.gz").exists()


def test_strict_uneven_spacing_named(tmp_path: Path) -> None:
    dicomgen.write_series(tmp_path / "in", offsets=[0, 2.5, 5, 8, 10.5, 13], origin=(0, 0, 40))
    with pytest.raises(ConversionError) as caught:
        convert_series(tmp_path / "in", tmp_path / "out.nii.gz")
    message = str(caught.value)
    assert "uneven spacing: gap of 3.000 mm between 45.000 and 48.000 mm" in message
    assert "--geometry simpleitk" in message


def test_strict_accepts_spacing_within_tolerance(tmp_path: Path) -> None:
    # 0.02 mm off a 2.5 mm spacing is within 1 % of it.
    dicomgen.write_series(tmp_path / "in", offsets=[0, 2.5, 5.02, 7.5])
    result = convert_series(tmp_path / "in", tmp_path / "out.nii.gz")
    assert result.slice_count == 4
    assert np.isclose(result.sidecar["SpacingBetweenSlices"], 2.5)


def test_strict_rejects_tilt(tmp_path: Path) -> None:
    dicomgen.write_series(tmp_path / "in", slices=4, tilt_deg=15)
    with pytest.raises(ConversionError) as caught:
        convert_series(tmp_path / "in", tmp_path / "out.nii.gz")
    message = str(caught.value)
    assert "gantry tilt" in message
    assert "about 15.00 degrees" in message
    assert "mm along the normal" in message


def test_strict_rejects_mixed_orientation(tmp_path: Path) -> None:
    info = dicomgen.write_series(tmp_path / "in", slices=4)
    odd = info.files[2]
    dataset = pydicom.dcmread(odd)
    dataset.ImageOrientationPatient = [1, 0, 0, 0, 0.9962, -0.0872]
    dataset.save_as(odd, enforce_file_format=True)
    with pytest.raises(ConversionError) as caught:
        convert_series(tmp_path / "in", tmp_path / "out.nii.gz")
    message = str(caught.value)
    assert "inconsistent ImageOrientationPatient" in message
    assert odd.name in message


def test_strict_drops_exact_duplicates(tmp_path: Path) -> None:
    info = dicomgen.write_series(tmp_path / "in", slices=5, duplicates=[1, 3])
    assert len(info.files) == 7
    result = convert_series(tmp_path / "in", tmp_path / "out.nii.gz")
    assert result.slice_count == 5
    assert np.array_equal(load_volume(result.path), info.hu)


def test_strict_drops_repeated_sop_uid(tmp_path: Path) -> None:
    info = dicomgen.write_series(tmp_path / "in", slices=4)
    shutil.copy(info.files[0], tmp_path / "in" / "copy_of_first.dcm")
    result = convert_series(tmp_path / "in", tmp_path / "out.nii.gz")
    assert result.slice_count == 4


def test_strict_rejects_conflicting_duplicate(tmp_path: Path) -> None:
    info = dicomgen.write_series(tmp_path / "in", slices=4, origin=(0, 0, 40))
    first_slice = int(np.argmin([pydicom.dcmread(path).ImagePositionPatient[2] for path in info.files]))
    dataset = pydicom.dcmread(info.files[first_slice])
    dataset.SOPInstanceUID = dicomgen.make_uid()
    dataset.PixelData = (dataset.pixel_array + 1).astype(np.int16).tobytes()
    dataset.save_as(tmp_path / "in" / "conflict.dcm", enforce_file_format=True)
    with pytest.raises(ConversionError) as caught:
        convert_series(tmp_path / "in", tmp_path / "out.nii.gz")
    message = str(caught.value)
    assert "conflicting slices at 40.000 mm" in message
    assert "conflict.dcm" in message


SIMPLEITK_CASES = {
    "regular": {},
    "uneven": {"offsets": [0, 2.5, 5, 8, 10.5, 13]},
    "missing slice": {"offsets": [0, 2.5, 5, 10, 12.5]},
    "tilted": {"tilt_deg": 12},
    "tilted uneven": {"tilt_deg": -8, "offsets": [0, 3, 5, 7.5, 10]},
    "descending": {"offsets": [0, -2.5, -5, -7.5]},
    "sagittal": {"row_cosine": (0, 1, 0), "column_cosine": (0, 0, -1)},
    "fractional slope": {"slope": 0.5, "intercept": -1000},
    "duplicate position": {"duplicates": [1]},
}


@pytest.mark.parametrize("case", sorted(SIMPLEITK_CASES))
def test_simpleitk_mode_matches_simpleitk(tmp_path: Path, case: str) -> None:
    dicomgen.write_series(tmp_path / "in", **SIMPLEITK_CASES[case])
    result = convert_series(tmp_path / "in", tmp_path / "out.nii.gz", geometry="simpleitk")
    assert_matches_simpleitk(result.path, read_with_simpleitk(tmp_path / "in"))


def test_simpleitk_mode_on_real_series(tmp_path: Path, siemens_dicom: Path) -> None:
    result = convert_series(siemens_dicom, tmp_path / "out.nii.gz", geometry="simpleitk")
    assert result.shape == (512, 512, 20)
    assert_matches_simpleitk(result.path, read_with_simpleitk(siemens_dicom))


def test_strict_matches_dcm2niix(tmp_path: Path, siemens_dicom: Path) -> None:
    dcm2niix = shutil.which("dcm2niix")
    if dcm2niix is None:
        pytest.skip("dcm2niix is not installed (Debian package dcm2niix)")
    subprocess.run([dcm2niix, "-z", "y", "-b", "n", "-f", "reference", "-o", str(tmp_path), str(siemens_dicom)],
                   check=True, capture_output=True)
    reference = nib.as_closest_canonical(nib.load(tmp_path / "reference.nii.gz"))
    result = convert_series(siemens_dicom, tmp_path / "ours.nii.gz")
    ours = nib.as_closest_canonical(nib.load(result.path))

    assert np.abs(ours.affine - reference.affine).max() < 1e-3
    ours_values = np.asanyarray(ours.dataobj)
    reference_values = reference.get_fdata(dtype=np.float64)
    assert ours_values.shape == reference_values.shape
    assert np.array_equal(ours_values, reference_values)
    assert result.dtype == "int16"
    assert -1024 <= ours_values.min() < -900
    assert ours_values.max() > 1000


def test_strict_on_real_series_grid(tmp_path: Path, siemens_dicom: Path) -> None:
    result = convert_series(siemens_dicom, tmp_path / "out.nii.gz", sidecar_path=tmp_path / "out.json")
    assert result.shape == (512, 512, 20)
    assert np.isclose(result.sidecar["SpacingBetweenSlices"], 2.0)
    assert np.allclose(np.linalg.norm(result.affine[:3, :3], axis=0), [0.9765625, 0.9765625, 2.0])
    assert result.sidecar["Manufacturer"] == "SIEMENS"
