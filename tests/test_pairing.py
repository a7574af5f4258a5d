"""Tests for the pair stage: world-coordinate checks, reorientation and label checks."""
from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from click.testing import CliRunner

from ctspine_builder.cli import main
from ctspine_builder.errors import PairingError
from ctspine_builder.nifti import DESCRIP, save_nifti
from ctspine_builder.pairing import check_labels, geometry_summary, pair_mask

# A small LPS image grid (SimpleITK's axis order) with 0.8 x 0.8 x 2.5 mm voxels.
SHAPE = (12, 10, 6)
SPACING = (0.8, 0.8, 2.5)
ORIGIN_LPS = np.array([-40.0, -30.0, -100.0])


def lps_affine(spacing=SPACING, origin_lps=ORIGIN_LPS) -> np.ndarray:
    """Return the RAS+ affine of a grid whose voxel axes run along L, P and S (SimpleITK's identity direction)."""
    affine = np.diag([-spacing[0], -spacing[1], spacing[2], 1.0])
    affine[:3, 3] = [-origin_lps[0], -origin_lps[1], origin_lps[2]]
    return affine


def las_equivalent(affine: np.ndarray, shape: tuple) -> np.ndarray:
    """Return the affine of the same grid with the second voxel axis flipped (dcm2niix's LAS order)."""
    flip = np.eye(4)
    flip[1, 1] = -1
    flip[1, 3] = shape[1] - 1
    return affine @ flip


def labelled_volume(shape=SHAPE) -> np.ndarray:
    """Return a uint8 mask with labels 18 and 19 in distinct, asymmetric blocks."""
    data = np.zeros(shape, dtype=np.uint8)
    data[2:5, 1:4, 1:3] = 18
    data[6:11, 5:9, 3:6] = 19
    return data


@pytest.fixture()
def image_path(tmp_path: Path) -> Path:
    path = tmp_path / "image.nii.gz"
    save_nifti(np.full(SHAPE, -1000, dtype=np.int16), lps_affine(), path)
    return path


def write_mask(tmp_path: Path, data: np.ndarray, affine: np.ndarray, name: str = "mask.nii.gz") -> Path:
    """Write a mask with plain nibabel, as another tool would."""
    path = tmp_path / name
    nib.save(nib.Nifti1Image(data, affine), str(path))
    return path


def world_points(data: np.ndarray, affine: np.ndarray, label: int) -> np.ndarray:
    """Return the sorted world coordinates (mm, rounded to 1e-3) of every voxel with ``label``."""
    indices = np.argwhere(data == label)
    points = nib.affines.apply_affine(affine, indices)
    points = np.round(points, 3)
    return points[np.lexsort(points.T[::-1])]


def assert_same_world_voxels(in_data, in_affine, out_data, out_affine) -> None:
    labels = sorted(set(np.unique(in_data).tolist()) - {0})
    assert labels, "the input mask has no foreground labels"
    for label in labels:
        expected = world_points(in_data, in_affine, label)
        actual = world_points(out_data, out_affine, label)
        assert actual.shape == expected.shape, f"label {label}: voxel count changed"
        np.testing.assert_allclose(actual, expected, atol=2e-3, err_msg=f"label {label} moved in world coordinates")


# --- the real series -------------------------------------------------------


@pytest.fixture(scope="session")
def siemens_sitk_image(siemens_dicom: Path, tmp_path_factory) -> Path:
    """The shared series converted as the CTSpine1K authors did: SimpleITK's ImageSeriesReader and WriteImage."""
    import SimpleITK as sitk

    reader = sitk.ImageSeriesReader()
    series_ids = reader.GetGDCMSeriesIDs(str(siemens_dicom))
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(siemens_dicom), series_ids[0]))
    path = tmp_path_factory.mktemp("sitk") / "siemens.nii.gz"
    sitk.WriteImage(reader.Execute(), str(path))
    return path


def test_real_mask_pairs_onto_simpleitk_grid(siemens_sitk_image: Path, siemens_mask: Path, tmp_path: Path) -> None:
    out = tmp_path / "paired.nii.gz"
    result = pair_mask(siemens_sitk_image, siemens_mask, out, case_id="siemens")

    image = nib.load(str(siemens_sitk_image))
    mask = nib.load(str(siemens_mask))
    paired = nib.load(str(out))
    assert result.reoriented
    assert nib.aff2axcodes(mask.affine) == ("L", "A", "S")
    assert nib.aff2axcodes(paired.affine) == ("L", "P", "S")
    assert paired.get_data_dtype() == np.uint8
    np.testing.assert_array_equal(paired.affine, image.affine)
    assert paired.shape == image.shape
    assert set(result.label_counts_out) == {0, 18, 19}
    assert result.label_counts_out == result.label_counts_in
    assert_same_world_voxels(np.asanyarray(mask.dataobj), mask.affine, np.asanyarray(paired.dataobj), paired.affine)


def test_real_mask_pairs_with_converter(siemens_dicom: Path, siemens_mask: Path, tmp_path: Path) -> None:
    convert = pytest.importorskip("ctspine_builder.dicom.convert", reason="the DICOM converter module is not present")
    for geometry in ("strict", "simpleitk"):
        image_path = tmp_path / f"{geometry}.nii.gz"
        convert.convert_series(siemens_dicom, image_path, geometry=geometry)
        out = tmp_path / f"{geometry}-mask.nii.gz"
        result = pair_mask(image_path, siemens_mask, out)
        mask = nib.load(str(siemens_mask))
        paired = nib.load(str(out))
        assert result.label_counts_out == result.label_counts_in, geometry
        assert_same_world_voxels(np.asanyarray(mask.dataobj), mask.affine, np.asanyarray(paired.dataobj), paired.affine)


# --- accepted grids --------------------------------------------------------


def test_same_grid_is_kept(image_path: Path, tmp_path: Path) -> None:
    data = labelled_volume()
    mask = write_mask(tmp_path, data.astype(np.int16), lps_affine())
    result = pair_mask(image_path, mask, tmp_path / "out.nii.gz")
    out = nib.load(str(result.path))
    assert not result.reoriented
    np.testing.assert_array_equal(np.asanyarray(out.dataobj), data)
    assert out.get_data_dtype() == np.uint8


def test_flipped_axis_is_reoriented(image_path: Path, tmp_path: Path) -> None:
    affine = las_equivalent(lps_affine(), SHAPE)
    data = labelled_volume()
    mask = write_mask(tmp_path, data, affine)
    result = pair_mask(image_path, mask, tmp_path / "out.nii.gz")
    out = nib.load(str(result.path))
    assert result.reoriented
    np.testing.assert_array_equal(out.affine, nib.load(str(image_path)).affine)
    assert_same_world_voxels(data, affine, np.asanyarray(out.dataobj), out.affine)


def test_permuted_and_flipped_axes_are_reoriented(image_path: Path, tmp_path: Path) -> None:
    # Store the mask as (z, x, y) with z running downwards: a permutation plus a flip.
    image_affine = lps_affine()
    to_image_voxel = np.zeros((4, 4))
    to_image_voxel[0, 1] = 1  # mask axis 1 -> image x
    to_image_voxel[1, 2] = 1  # mask axis 2 -> image y
    to_image_voxel[2, 0] = -1  # mask axis 0 -> image z, flipped
    to_image_voxel[2, 3] = SHAPE[2] - 1
    to_image_voxel[3, 3] = 1
    mask_affine = image_affine @ to_image_voxel
    image_data = labelled_volume()
    mask_data = np.flip(image_data, axis=2).transpose(2, 0, 1)
    mask = write_mask(tmp_path, np.ascontiguousarray(mask_data), mask_affine)

    result = pair_mask(image_path, mask, tmp_path / "out.nii.gz")
    out = np.asanyarray(nib.load(str(result.path)).dataobj)
    assert result.reoriented
    np.testing.assert_array_equal(out, image_data)


def test_float32_affine_rounding_is_tolerated(image_path: Path, tmp_path: Path) -> None:
    affine = lps_affine() + np.array([[0, 0, 0, 2e-5], [0, 0, 0, -3e-5], [0, 0, 0, 1e-5], [0, 0, 0, 0]])
    mask = write_mask(tmp_path, labelled_volume(), affine)
    result = pair_mask(image_path, mask, tmp_path / "out.nii.gz")
    assert result.label_counts_out == result.label_counts_in


def test_singleton_fourth_axis_is_dropped(image_path: Path, tmp_path: Path) -> None:
    mask = write_mask(tmp_path, labelled_volume()[..., np.newaxis], lps_affine())
    result = pair_mask(image_path, mask, tmp_path / "out.nii.gz")
    assert nib.load(str(result.path)).shape == SHAPE


def test_output_header_is_clean(image_path: Path, tmp_path: Path) -> None:
    source = nib.Nifti1Image(labelled_volume(), lps_affine())
    source.header["descrip"] = b"drawn by someone"
    source.header.extensions.append(nib.nifti1.Nifti1Extension(6, b"a comment"))
    mask = tmp_path / "mask.nii.gz"
    nib.save(source, str(mask))
    out = nib.load(str(pair_mask(image_path, mask, tmp_path / "out.nii.gz").path))
    assert out.header["descrip"].tobytes().rstrip(b"\0").decode() == DESCRIP
    assert len(out.header.extensions) == 0


# --- rejected grids --------------------------------------------------------


def assert_grid_error(image_path: Path, mask: Path, tmp_path: Path, reason: str) -> str:
    out = tmp_path / "out.nii.gz"
    with pytest.raises(PairingError) as caught:
        pair_mask(image_path, mask, out, case_id="case7")
    message = str(caught.value)
    assert "case case7" in message
    assert str(mask) in message
    assert reason in message
    assert "Image: shape 12x10x6" in message
    assert "Mask: shape" in message
    assert not out.exists()
    return message


def test_shifted_origin_is_rejected(image_path: Path, tmp_path: Path) -> None:
    mask = write_mask(tmp_path, labelled_volume(), lps_affine(origin_lps=ORIGIN_LPS + [0.0, 0.0, 1.0]))
    message = assert_grid_error(image_path, mask, tmp_path, "voxel centres differ by up to 1 mm")
    assert "origin (40.0000, 30.0000, -99.0000) mm" in message


def test_origin_shifted_by_whole_voxels_is_rejected(image_path: Path, tmp_path: Path) -> None:
    mask = write_mask(tmp_path, labelled_volume(), lps_affine(origin_lps=ORIGIN_LPS + [0.0, 0.0, 2 * SPACING[2]]))
    assert_grid_error(image_path, mask, tmp_path, "voxel centres differ by up to 5 mm")


def test_other_spacing_is_rejected(image_path: Path, tmp_path: Path) -> None:
    mask = write_mask(tmp_path, labelled_volume(), lps_affine(spacing=(0.8, 0.8, 3.0)))
    message = assert_grid_error(image_path, mask, tmp_path, "voxel centres differ")
    assert "spacing 0.8x0.8x3 mm" in message


def test_other_shape_is_rejected(image_path: Path, tmp_path: Path) -> None:
    mask = write_mask(tmp_path, labelled_volume((12, 10, 7)), lps_affine())
    message = assert_grid_error(image_path, mask, tmp_path, "the grids have different shapes")
    assert "Mask: shape 12x10x7" in message


def test_rotated_direction_is_rejected(image_path: Path, tmp_path: Path) -> None:
    angle = np.deg2rad(5.0)
    rotation = np.eye(4)
    rotation[:2, :2] = [[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]]
    mask = write_mask(tmp_path, labelled_volume(), rotation @ lps_affine())
    message = assert_grid_error(image_path, mask, tmp_path, "voxel centres differ")
    assert "(oblique)" in message


def test_rotation_by_45_degrees_is_not_a_permutation(image_path: Path, tmp_path: Path) -> None:
    angle = np.deg2rad(45.0)
    rotation = np.eye(4)
    rotation[:2, :2] = [[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]]
    mask = write_mask(tmp_path, labelled_volume(), rotation @ lps_affine())
    assert_grid_error(image_path, mask, tmp_path, "not a permutation or flip of the image's axes")


def test_singular_image_affine_is_rejected(tmp_path: Path) -> None:
    image = tmp_path / "flat.nii.gz"
    flat = nib.Nifti1Image(np.zeros(SHAPE, dtype=np.int16), None)
    flat.header.set_sform(np.diag([0.8, 0.8, 0.0, 1.0]), code=1)
    nib.save(flat, str(image))
    mask = write_mask(tmp_path, labelled_volume(), lps_affine())
    with pytest.raises(PairingError, match="image affine is singular"):
        pair_mask(image, mask, tmp_path / "out.nii.gz")


# --- rejected labels and files -----------------------------------------------


@pytest.mark.parametrize(
    ("value", "dtype", "listed"),
    [
        (26, np.uint8, "unexpected label values [26]"),
        (-1, np.int16, "unexpected label values [-1]"),
        (1.5, np.float32, "non-integer label values [1.5]"),
    ],
    ids=["label-26", "label-minus-1", "float-1.5"],
)
def test_bad_label_is_rejected(image_path: Path, tmp_path: Path, value, dtype, listed: str) -> None:
    data = labelled_volume().astype(dtype)
    data[0, 0, 0] = value
    mask = write_mask(tmp_path, data, lps_affine())
    with pytest.raises(PairingError) as caught:
        pair_mask(image_path, mask, tmp_path / "out.nii.gz", case_id="case7")
    message = str(caught.value)
    assert listed in message
    assert "case case7" in message
    assert str(mask) in message
    assert not (tmp_path / "out.nii.gz").exists()


def test_whole_float_labels_are_accepted(image_path: Path, tmp_path: Path) -> None:
    mask = write_mask(tmp_path, labelled_volume().astype(np.float32), lps_affine())
    result = pair_mask(image_path, mask, tmp_path / "out.nii.gz")
    assert result.label_counts_out == {0: int((labelled_volume() == 0).sum()), 18: 18, 19: 60}


def test_nan_label_is_rejected() -> None:
    data = np.zeros((2, 2, 2), dtype=np.float32)
    data[1, 1, 1] = np.nan
    with pytest.raises(PairingError, match=r"non-integer label values \[nan\]"):
        check_labels(data)


def test_many_bad_labels_are_counted() -> None:
    data = np.arange(26, 60, dtype=np.int16).reshape(2, 17, 1)
    with pytest.raises(PairingError, match=r"\[26, 27, 28, 29, 30, 31, 32, 33, 34, 35\] and 24 more"):
        check_labels(data)


def test_image_given_as_mask_names_argument_order() -> None:
    ct = np.linspace(-1024, 1500, 2 * 10 * 10).astype(np.int16).reshape(2, 10, 10)
    with pytest.raises(PairingError, match="looks like a CT image, not a label mask: check the order of the arguments"):
        check_labels(ct)


def test_few_bad_labels_suggest_relabelling() -> None:
    data = np.array([0, 18, 30], dtype=np.int16).reshape(3, 1, 1)
    with pytest.raises(PairingError, match="Relabel the mask to the CTSpine1K scheme"):
        check_labels(data)


def test_four_dimensional_mask_is_rejected(image_path: Path, tmp_path: Path) -> None:
    data = np.stack([labelled_volume(), labelled_volume()], axis=-1)
    mask = write_mask(tmp_path, data, lps_affine())
    with pytest.raises(PairingError, match=r"mask has 4 dimensions \(shape 12x10x6x2\); a label mask must be 3-D"):
        pair_mask(image_path, mask, tmp_path / "out.nii.gz")


def test_missing_mask_is_reported(image_path: Path, tmp_path: Path) -> None:
    with pytest.raises(PairingError, match="mask file not found"):
        pair_mask(image_path, tmp_path / "absent.nii.gz", tmp_path / "out.nii.gz", case_id="case7")


def test_truncated_mask_is_reported(image_path: Path, tmp_path: Path) -> None:
    mask = write_mask(tmp_path, labelled_volume(), lps_affine())
    mask.write_bytes(mask.read_bytes()[:40])
    with pytest.raises(PairingError, match="mask file is not a readable NIfTI image"):
        pair_mask(image_path, mask, tmp_path / "out.nii.gz")


def test_geometry_summary_names_each_part(image_path: Path) -> None:
    summary = geometry_summary(nib.load(str(image_path)))
    assert summary == "shape 12x10x6, spacing 0.8x0.8x2.5 mm, origin (40.0000, 30.0000, -100.0000) mm RAS+, orientation LPS"


# --- command line ------------------------------------------------------------


def test_pair_command_writes_output(image_path: Path, tmp_path: Path) -> None:
    mask = write_mask(tmp_path, labelled_volume(), las_equivalent(lps_affine(), SHAPE))
    out = tmp_path / "out.nii.gz"
    result = CliRunner().invoke(main, ["pair", str(image_path), str(mask), str(out)])
    assert result.exit_code == 0, result.output
    assert "reoriented onto the image grid" in result.output
    assert "18: 18, 19: 60" in result.output
    assert out.exists()


def test_pair_command_reports_mismatch(image_path: Path, tmp_path: Path) -> None:
    mask = write_mask(tmp_path, labelled_volume((12, 10, 7)), lps_affine())
    result = CliRunner().invoke(main, ["pair", str(image_path), str(mask), str(tmp_path / "out.nii.gz"), "--case-id", "c1"])
    assert result.exit_code == 1
    assert "Error: case c1: mask does not fit the image grid: the grids have different shapes" in result.output
    assert "Traceback" not in result.output
