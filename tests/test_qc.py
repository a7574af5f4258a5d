"""Tests for `ctspine qc`: pictures per case, orientation, aspect, gallery and bad cases."""
from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from click.testing import CliRunner

from ctspine_builder.cli import main
from ctspine_builder.errors import PackagingError
from ctspine_builder.nifti import save_nifti
from ctspine_builder.qc import label_colours, load_ras, make_panels, run_qc
from hubdata import write_dataset

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def marker_volume() -> tuple[np.ndarray, np.ndarray]:
    """Return a RAS volume and mask with label 1 at the superior-anterior-right corner."""
    image = np.full((10, 12, 14), -1000, dtype=np.int16)
    mask = np.zeros(image.shape, dtype=np.uint8)
    mask[4:6, 9:12, 11:14] = 1   # anterior (high y), superior (high z), near the middle in x
    mask[4:6, 2:4, 0:3] = 2      # posterior (low y), inferior (low z)
    mask[7:10, 5:7, 11:14] = 3   # right (high x in RAS), superior
    return image, mask


def test_qc_pictures_and_gallery(tmp_path):
    root = write_dataset(tmp_path / "ds")
    result = CliRunner().invoke(main, ["qc", str(root), "--out", str(tmp_path / "qc")])
    assert result.exit_code == 0, result.output
    pictures = sorted((tmp_path / "qc").rglob("*.png"))
    assert [p.relative_to(tmp_path / "qc").as_posix() for p in pictures] == [
        "test_private/volume-covid19-A-0003_ct.png",
        "test_public/HN_P001.png",
        "trainset/liver_0.png",
        "trainset/liver_1.png",
    ]
    assert all(p.read_bytes().startswith(PNG_MAGIC) for p in pictures)
    index = (tmp_path / "qc" / "index.html").read_text()
    assert 'src="trainset/liver_0.png"' in index
    assert "liver_0 (trainset): T11, T12, L1" in index
    assert "W 1500 L 300" in index


def test_sagittal_head_up_anterior_left():
    image, mask = marker_volume()
    # Slice through labels 1 and 2, which lie at x 4..5.
    sagittal = make_panels(image, np.where(mask < 3, mask, 0), np.array([1.0, 1.0, 1.0]))[0]
    assert sagittal.name == "sagittal"
    rows, columns = np.nonzero(sagittal.mask == 1)
    assert rows.max() < sagittal.mask.shape[0] / 2      # superior at the top
    assert columns.max() < sagittal.mask.shape[1] / 2   # anterior on the left
    rows, columns = np.nonzero(sagittal.mask == 2)
    assert rows.min() > sagittal.mask.shape[0] / 2
    assert columns.min() > sagittal.mask.shape[1] / 2


def test_coronal_radiological_convention():
    image, mask = marker_volume()
    # Slice through label 3, which lies at x 7..9 (right side) and y 5..6.
    coronal = make_panels(image, np.where(mask == 3, mask, 0), np.array([1.0, 1.0, 1.0]))[1]
    rows, columns = np.nonzero(coronal.mask == 3)
    assert rows.max() < coronal.mask.shape[0] / 2      # superior at the top
    assert columns.max() < coronal.mask.shape[1] / 2   # patient's right on the image's left


def test_aspect_from_voxel_spacing():
    image, mask = marker_volume()
    sagittal, coronal = make_panels(image, mask, np.array([0.5, 0.8, 3.0]))
    assert sagittal.aspect == pytest.approx(3.0 / 0.8)
    assert coronal.aspect == pytest.approx(3.0 / 0.5)


def test_orientation_independent_of_voxel_order(tmp_path):
    image, mask = marker_volume()
    ras = np.diag([1.0, 1.0, 2.0, 1.0])
    save_nifti(mask, ras, tmp_path / "ras.nii.gz")
    # The same world content stored in LPS voxel order (x and y flipped).
    flipped = mask[::-1, ::-1, :]
    lps = ras.copy()
    lps[0, 0], lps[1, 1] = -1.0, -1.0
    lps[0, 3], lps[1, 3] = mask.shape[0] - 1, mask.shape[1] - 1
    save_nifti(flipped, lps, tmp_path / "lps.nii.gz")
    first, spacing_first, affine_first = load_ras(tmp_path / "ras.nii.gz")
    second, spacing_second, affine_second = load_ras(tmp_path / "lps.nii.gz")
    assert np.array_equal(first, second)
    assert np.allclose(affine_first, affine_second)
    assert np.allclose(spacing_first, [1.0, 1.0, 2.0])


def test_neighbouring_labels_have_distinct_colours():
    colours = label_colours()
    assert colours[0, 3] == 0.0
    for label in range(1, 25):
        assert np.abs(colours[label, :3] - colours[label + 1, :3]).sum() > 0.3, label


def test_bad_case_reported_others_drawn(tmp_path):
    root = write_dataset(tmp_path / "ds")
    broken = root / "data" / "trainset" / "images" / "liver_1.nii.gz"
    broken.write_bytes(broken.read_bytes()[:200])
    result = CliRunner().invoke(main, ["qc", str(root), "--out", str(tmp_path / "qc")])
    assert result.exit_code == 1
    assert "case liver_1:" in result.output
    assert (tmp_path / "qc" / "trainset" / "liver_0.png").is_file()
    assert not (tmp_path / "qc" / "trainset" / "liver_1.png").exists()
    assert "liver_1:" in (tmp_path / "qc" / "index.html").read_text()


def test_shifted_mask_affine_reported(tmp_path):
    root = write_dataset(tmp_path / "ds")
    mask_path = root / "data" / "trainset" / "masks" / "liver_0.nii.gz"
    mask = nib.load(mask_path)
    shifted = mask.affine.copy()
    shifted[2, 3] += 4.0
    save_nifti(np.asarray(mask.dataobj), shifted, mask_path)
    result = run_qc(root, tmp_path / "qc", case_ids=["liver_0"])
    assert "mask affine differs from the image affine" in result.failures["liver_0"]


def test_unknown_case_rejected(tmp_path):
    root = write_dataset(tmp_path / "ds")
    with pytest.raises(PackagingError, match="case ids not in the dataset: nope"):
        run_qc(root, tmp_path / "qc", case_ids=["nope"])


def test_soft_window_named_in_picture_index(tmp_path):
    root = write_dataset(tmp_path / "ds")
    result = CliRunner().invoke(main, ["qc", str(root), "--out", str(tmp_path / "qc"), "--window", "soft", "--case", "HN_P001"])
    assert result.exit_code == 0, result.output
    assert "W 400 L 40" in (tmp_path / "qc" / "index.html").read_text()
    assert len(list((tmp_path / "qc").rglob("*.png"))) == 1


def test_real_series_mask_on_vertebrae(tmp_path, siemens_dicom, siemens_mask):
    from ctspine_builder.dicom.convert import convert_series
    from ctspine_builder.pairing import pair_mask

    folder = tmp_path / "real" / "data" / "trainset"
    convert_series(siemens_dicom, folder / "images" / "siemens.nii.gz", case_id="siemens")
    pair_mask(folder / "images" / "siemens.nii.gz", siemens_mask, folder / "masks" / "siemens.nii.gz", case_id="siemens")
    row = {"image_file_name": "images/siemens.nii.gz", "mask_file_name": "masks/siemens.nii.gz",
           "case_id": "siemens", "subset": "SIEMENS", "split": "trainset"}
    (folder / "metadata.jsonl").write_text(json.dumps(row) + "\n")
    result = run_qc(tmp_path / "real", tmp_path / "qc")
    assert result.failures == {}
    assert result.labels["siemens"] == [18, 19]

    image, spacing, _ = load_ras(folder / "images" / "siemens.nii.gz")
    mask, _, _ = load_ras(folder / "masks" / "siemens.nii.gz")
    sagittal = make_panels(image, mask, spacing)[0]
    t11_rows = np.nonzero(sagittal.mask == 18)[0]
    t12_rows = np.nonzero(sagittal.mask == 19)[0]
    assert t11_rows.mean() < t12_rows.mean()          # T11 above T12
    bone = sagittal.image[sagittal.mask > 0]
    assert np.median(bone) > 100                       # the labels sit on bone (HU)
