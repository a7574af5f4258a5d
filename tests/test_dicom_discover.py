"""Tests of series discovery and selection in the convert stage."""
from __future__ import annotations

import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

import dicomgen
from ctspine_builder.dicom.convert import convert_series
from ctspine_builder.dicom.discover import discover_series, select_series
from ctspine_builder.errors import ConversionError


def test_no_dicom_names_folder(tmp_path: Path) -> None:
    dicomgen.write_junk_files(tmp_path / "in")
    with pytest.raises(ConversionError) as caught:
        convert_series(tmp_path / "in", tmp_path / "out.nii.gz", case_id="case_7")
    message = str(caught.value)
    assert "no DICOM files found" in message
    assert str(tmp_path / "in") in message
    assert message.startswith("case case_7:")
    assert not (tmp_path / "out.nii.gz").exists()


def test_missing_folder_is_error(tmp_path: Path) -> None:
    with pytest.raises(ConversionError, match="DICOM folder not found"):
        convert_series(tmp_path / "absent", tmp_path / "out.nii.gz")


def test_several_series_listed(tmp_path: Path) -> None:
    first = dicomgen.write_series(tmp_path / "in", slices=4, series_number=2)
    second = dicomgen.write_series(tmp_path / "in", slices=3, series_number=5, seed=1)
    with pytest.raises(ConversionError) as caught:
        convert_series(tmp_path / "in", tmp_path / "out.nii.gz")
    message = str(caught.value)
    assert "2 image series" in message
    assert f"SeriesNumber 2: 4 slices, UID {first.series_uid}" in message
    assert f"SeriesNumber 5: 3 slices, UID {second.series_uid}" in message
    assert "--series" in message
    assert "PLANTED SERIES DESCRIPTION" not in message
    assert "PLANTED" not in message


def test_named_series_is_converted(tmp_path: Path) -> None:
    dicomgen.write_series(tmp_path / "in", slices=4, series_number=2)
    wanted = dicomgen.write_series(tmp_path / "in", slices=3, series_number=5, seed=1)
    result = convert_series(tmp_path / "in", tmp_path / "out.nii.gz", series_uid=wanted.series_uid)
    assert result.slice_count == 3
    data = np.asanyarray(nib.load(result.path).dataobj)
    assert np.array_equal(data.transpose(2, 1, 0), wanted.hu)


def test_unknown_series_uid_lists_choices(tmp_path: Path) -> None:
    info = dicomgen.write_series(tmp_path / "in", slices=3)
    with pytest.raises(ConversionError) as caught:
        convert_series(tmp_path / "in", tmp_path / "out.nii.gz", series_uid="1.2.3.4.5")
    message = str(caught.value)
    assert "series 1.2.3.4.5 not found" in message
    assert info.series_uid in message


def test_junk_and_localizer_skipped(tmp_path: Path) -> None:
    info = dicomgen.write_series(tmp_path / "in", slices=5, localizer=True)
    dicomgen.write_junk_files(tmp_path / "in")
    found = discover_series(tmp_path / "in")
    assert list(found) == [info.series_uid]
    assert len(found[info.series_uid].slices) == 5
    assert found[info.series_uid].skipped_images == 1
    result = convert_series(tmp_path / "in", tmp_path / "out.nii.gz")
    assert result.shape == (40, 36, 5)


def test_nbia_nested_layout(tmp_path: Path) -> None:
    series_folder = dicomgen.nbia_series_folder(tmp_path / "download")
    info = dicomgen.write_series(series_folder, slices=4)
    shutil.copy(series_folder / info.files[0].name, series_folder.parent / "stray_copy.dcm")
    dicomgen.write_junk_files(tmp_path / "download")
    result = convert_series(tmp_path / "download", tmp_path / "out.nii.gz")
    assert result.slice_count == 4


def test_only_localizer_is_error(tmp_path: Path) -> None:
    info = dicomgen.write_series(tmp_path / "in", slices=2, localizer=True)
    for path in info.files[:-1]:
        path.unlink()
    with pytest.raises(ConversionError) as caught:
        convert_series(tmp_path / "in", tmp_path / "out.nii.gz")
    message = str(caught.value)
    assert "no image series to convert" in message
    assert "1 localizer or non-image files skipped" in message


def test_truncated_header_is_error(tmp_path: Path) -> None:
    info = dicomgen.write_series(tmp_path / "in", slices=4)
    damaged = info.files[1]
    damaged.write_bytes(damaged.read_bytes()[:400])
    with pytest.raises(ConversionError) as caught:
        convert_series(tmp_path / "in", tmp_path / "out.nii.gz")
    message = str(caught.value)
    assert damaged.name in message
    assert "damaged or truncated" in message


def test_truncated_pixel_data_is_error(tmp_path: Path) -> None:
    info = dicomgen.write_series(tmp_path / "in", slices=4, compression="jpeg2000")
    damaged = info.files[2]
    damaged.write_bytes(damaged.read_bytes()[:-600])
    with pytest.raises(ConversionError) as caught:
        convert_series(tmp_path / "in", tmp_path / "out.nii.gz", case_id="c1")
    message = str(caught.value)
    assert "pixel data could not be decoded" in message
    assert damaged.name in message
    assert "case c1" in message
    assert not (tmp_path / "out.nii.gz").exists()


def test_select_series_single(tmp_path: Path) -> None:
    info = dicomgen.write_series(tmp_path / "in", slices=2)
    found = discover_series(tmp_path / "in")
    assert select_series(found, None, tmp_path / "in").uid == info.series_uid
