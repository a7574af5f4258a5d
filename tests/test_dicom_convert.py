"""Tests of DICOM decoding, HU values, sidecar, identifiers and the convert CLI."""
from __future__ import annotations

import gzip
import json
import logging
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from click.testing import CliRunner
from pydicom.encaps import encapsulate
from pydicom.pixels.encoders import JPEGLSLosslessEncoder

import dicomgen
from ctspine_builder.cli import main
from ctspine_builder.dicom.convert import convert_nifti, convert_series
from ctspine_builder.errors import ConversionError


def load_volume(path: Path) -> np.ndarray:
    """Return the NIfTI voxels as a (slice, row, column) array, like SeriesInfo.hu."""
    return np.asanyarray(nib.load(path).dataobj).transpose(2, 1, 0)


@pytest.mark.parametrize("compression", sorted(dicomgen.TRANSFER_SYNTAXES))
def test_syntax_round_trip(tmp_path: Path, compression: str) -> None:
    if compression == "jpeg-ls" and not JPEGLSLosslessEncoder.is_available:
        pytest.skip("no JPEG-LS encoder: install pyjpegls (part of the test extra)")
    info = dicomgen.write_series(tmp_path / "in", slices=4, compression=compression)
    written = pydicom.dcmread(info.files[0])
    assert written.file_meta.TransferSyntaxUID == dicomgen.TRANSFER_SYNTAXES[compression]
    result = convert_series(tmp_path / "in", tmp_path / "out.nii.gz")
    assert result.dtype == "int16"
    assert np.array_equal(load_volume(result.path), info.hu)


def test_unsigned_overflow_becomes_float32(tmp_path: Path) -> None:
    stored = np.full((3, 36, 40), 40000, dtype=np.int32)
    stored[:, 0, 0] = 0
    info = dicomgen.write_series(tmp_path / "in", stored=stored, unsigned=True, intercept=-1024)
    result = convert_series(tmp_path / "in", tmp_path / "out.nii.gz")
    volume = load_volume(result.path)
    assert result.dtype == "float32"
    assert volume.max() == 40000 - 1024
    assert volume.min() == -1024
    assert np.array_equal(volume, info.hu)


def test_fractional_slope_becomes_float32(tmp_path: Path) -> None:
    info = dicomgen.write_series(tmp_path / "in", slices=3, slope=0.5, intercept=-1000.25)
    result = convert_series(tmp_path / "in", tmp_path / "out.nii.gz")
    assert result.dtype == "float32"
    assert np.array_equal(load_volume(result.path), info.hu.astype(np.float32))


def test_integer_slope_stays_int16(tmp_path: Path) -> None:
    info = dicomgen.write_series(tmp_path / "in", slices=3, slope=2, intercept=-3000)
    result = convert_series(tmp_path / "in", tmp_path / "out.nii.gz")
    assert result.dtype == "int16"
    assert np.array_equal(load_volume(result.path), info.hu)


def test_int16_wrap_is_avoided(tmp_path: Path) -> None:
    # 3000 x 20 - 1024 = 58976 would wrap to a negative value in int16 arithmetic.
    stored = np.full((3, 36, 40), 3000, dtype=np.int32)
    info = dicomgen.write_series(tmp_path / "in", stored=stored, slope=20, intercept=-1024)
    result = convert_series(tmp_path / "in", tmp_path / "out.nii.gz")
    volume = load_volume(result.path)
    assert result.dtype == "float32"
    assert volume.min() == 58976
    assert np.array_equal(volume, info.hu)


def test_per_slice_rescale(tmp_path: Path) -> None:
    info = dicomgen.write_series(tmp_path / "in", slices=3, slope=[1, 2, 1], intercept=[-1024, -2048, 0])
    result = convert_series(tmp_path / "in", tmp_path / "out.nii.gz", sidecar_path=tmp_path / "out.json")
    assert np.array_equal(load_volume(result.path), info.hu)
    sidecar = json.loads((tmp_path / "out.json").read_text())
    assert sidecar["RescaleSlope"] == [1.0, 2.0, 1.0]
    assert sidecar["RescaleIntercept"] == [-1024.0, -2048.0, 0.0]


def test_undecodable_syntax_names_it(tmp_path: Path) -> None:
    info = dicomgen.write_series(tmp_path / "in", slices=3)
    for path in info.files:
        dataset = pydicom.dcmread(path)
        dataset.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.4.100"  # MPEG2 Main Profile / Main Level
        dataset.PixelData = encapsulate([b"\x00\x00\x01\xb3" + bytes(60)])
        dataset["PixelData"].VR = "OB"
        dataset.save_as(path, enforce_file_format=True)
    with pytest.raises(ConversionError) as caught:
        convert_series(tmp_path / "in", tmp_path / "out.nii.gz", case_id="c9")
    message = str(caught.value)
    assert "MPEG2 Main Profile / Main Level" in message
    assert "1.2.840.10008.1.2.4.100" in message
    assert "cannot be decoded" in message
    assert "case c9" in message


def test_output_is_reproducible(tmp_path: Path) -> None:
    dicomgen.write_series(tmp_path / "in", slices=4, compression="rle")
    convert_series(tmp_path / "in", tmp_path / "a.nii.gz", sidecar_path=tmp_path / "a.json")
    convert_series(tmp_path / "in", tmp_path / "b.nii.gz", sidecar_path=tmp_path / "b.json")
    assert (tmp_path / "a.nii.gz").read_bytes() == (tmp_path / "b.nii.gz").read_bytes()
    assert (tmp_path / "a.json").read_bytes() == (tmp_path / "b.json").read_bytes()


def test_header_is_clean(tmp_path: Path) -> None:
    dicomgen.write_series(tmp_path / "in", slices=3)
    result = convert_series(tmp_path / "in", tmp_path / "out.nii.gz")
    header = nib.load(result.path).header
    assert header["qform_code"] == 1
    assert header["sform_code"] == 1
    assert header.get_xyzt_units()[0] == "mm"
    assert bytes(header["aux_file"]).strip(b"\x00") == b""
    assert bytes(header["db_name"]).strip(b"\x00") == b""
    assert len(header.extensions) == 0


def test_planted_values_absent(tmp_path: Path) -> None:
    info = dicomgen.write_series(tmp_path / "in", slices=4, compression="jpeg2000", localizer=True)
    out = tmp_path / "out"
    result = convert_series(tmp_path / "in", out / "case.nii.gz", sidecar_path=out / "case.json", case_id="case_1")
    outputs = {
        "image (decompressed)": gzip.decompress((out / "case.nii.gz").read_bytes()),
        "sidecar": (out / "case.json").read_bytes(),
    }
    planted = info.planted_values()
    assert len(planted) > 25
    for value in sorted(planted):
        for name, payload in outputs.items():
            assert value.encode() not in payload, f"planted value {value!r} found in the {name}"
            assert value.lower().encode() not in payload.lower(), f"planted value {value!r} found in the {name}"
    assert sorted(path.name for path in out.iterdir()) == ["case.json", "case.nii.gz"]
    assert result.sidecar["CaseId"] == "case_1"


def test_deny_values_cover_planted(tmp_path: Path) -> None:
    info = dicomgen.write_series(tmp_path / "in", slices=3)
    result = convert_series(tmp_path / "in", tmp_path / "out.nii.gz")
    expected = set(info.planted.values()) | {info.series_uid, info.study_uid, *info.sop_uids}
    missing = expected - result.deny_values
    assert not missing
    assert "SYNTHETIC" not in result.deny_values  # Manufacturer is allow-listed for the sidecar


def test_sidecar_allow_list(tmp_path: Path) -> None:
    dicomgen.write_series(tmp_path / "in", slices=3, pixel_spacing=(0.7, 0.9), slice_spacing=1.25)
    convert_series(tmp_path / "in", tmp_path / "out.nii.gz", sidecar_path=tmp_path / "out.json",
                   geometry="simpleitk", case_id="c2")
    text = (tmp_path / "out.json").read_text()
    sidecar = json.loads(text)
    assert list(sidecar) == sorted(sidecar)
    assert sidecar["Manufacturer"] == "SYNTHETIC"
    assert sidecar["KVP"] == 120
    assert sidecar["ConvolutionKernel"] == "B30f"
    assert sidecar["PixelSpacing"] == [0.7, 0.9]
    assert sidecar["SpacingBetweenSlices"] == 1.25
    assert sidecar["Geometry"] == "simpleitk"
    assert sidecar["ConversionSoftware"] == "ctspine_builder"
    assert "PatientName" not in sidecar
    assert "StudyDate" not in sidecar


def test_sidecar_drops_unsafe_value(tmp_path: Path) -> None:
    info = dicomgen.write_series(tmp_path / "in", slices=2)
    for path in info.files:
        dataset = pydicom.dcmread(path)
        dataset.ManufacturerModelName = "Scanner 1.2.840.99.7 of 20190312"
        dataset.save_as(path, enforce_file_format=True)
    result = convert_series(tmp_path / "in", tmp_path / "out.nii.gz")
    assert "ManufacturerModelName" not in result.sidecar
    assert result.sidecar["Manufacturer"] == "SYNTHETIC"


def test_convert_nifti_keeps_values(tmp_path: Path) -> None:
    data = np.arange(2 * 3 * 4, dtype=np.int16).reshape(2, 3, 4) - 1000
    affine = np.array([[-0.75, 0, 0, 10], [0, 0.75, 0, -20], [0, 0, 2.5, 30], [0, 0, 0, 1]])
    source = nib.Nifti1Image(data, affine)
    source.header["descrip"] = b"PLANTED NIFTI DESCRIPTION"
    source.header["aux_file"] = b"PLANTAUX"
    nib.save(source, tmp_path / "src.nii.gz")
    result = convert_nifti(tmp_path / "src.nii.gz", tmp_path / "out.nii.gz", case_id="liver_3",
                           sidecar_path=tmp_path / "out.json")
    written = nib.load(result.path)
    assert np.array_equal(np.asanyarray(written.dataobj), data)
    assert np.allclose(written.affine, affine)
    assert result.deny_values == {"PLANTED NIFTI DESCRIPTION", "PLANTAUX"}
    raw = gzip.decompress(result.path.read_bytes())
    assert b"PLANTED" not in raw
    assert b"PLANTAUX" not in raw


def test_convert_nifti_unreadable(tmp_path: Path) -> None:
    (tmp_path / "bad.nii.gz").write_bytes(b"\x1f\x8b not really gzip")
    with pytest.raises(ConversionError) as caught:
        convert_nifti(tmp_path / "bad.nii.gz", tmp_path / "out.nii.gz", case_id="liver_4")
    message = str(caught.value)
    assert "unreadable NIfTI file" in message
    assert "liver_4" in message


def test_cli_convert_writes_sidecar(tmp_path: Path) -> None:
    dicomgen.write_series(tmp_path / "in", slices=3)
    result = CliRunner().invoke(main, ["convert", str(tmp_path / "in"), str(tmp_path / "ct.nii.gz")])
    assert result.exit_code == 0, result.output
    assert "40 x 36 x 3 voxels" in result.output
    assert (tmp_path / "ct.nii.gz").is_file()
    assert json.loads((tmp_path / "ct.json").read_text())["Geometry"] == "strict"


def test_cli_no_sidecar(tmp_path: Path) -> None:
    dicomgen.write_series(tmp_path / "in", slices=3)
    result = CliRunner().invoke(main, ["convert", "--no-sidecar", str(tmp_path / "in"), str(tmp_path / "ct.nii.gz")])
    assert result.exit_code == 0, result.output
    assert not (tmp_path / "ct.json").exists()


def test_cli_output_without_nifti_suffix_rejected(tmp_path: Path) -> None:
    dicomgen.write_series(tmp_path / "in", slices=3)
    result = CliRunner().invoke(main, ["convert", str(tmp_path / "in"), str(tmp_path / "ct.nrrd")])
    assert result.exit_code == 2
    assert "does not end in .nii.gz or .nii" in result.output
    assert not (tmp_path / "ct.nrrd").exists()


def test_cli_error_has_no_traceback(tmp_path: Path) -> None:
    dicomgen.write_series(tmp_path / "in", slices=3, offsets=[0, 2.5, 7.5])
    result = CliRunner().invoke(main, ["convert", str(tmp_path / "in"), str(tmp_path / "ct.nii.gz")])
    assert result.exit_code == 1
    assert "Error: slice positions along the normal are not evenly spaced" in result.output
    assert "Traceback" not in result.output
    assert not (tmp_path / "ct.nii.gz").exists()


def test_cli_help_names_defaults() -> None:
    result = CliRunner().invoke(main, ["convert", "--help"])
    assert result.exit_code == 0
    assert "--geometry [strict|simpleitk]" in result.output
    assert "default: strict" in result.output
    assert "--series UID" in result.output


def test_convert_nifti_float64_to_int16(tmp_path: Path) -> None:
    data = (np.arange(4 * 5 * 6, dtype=np.float64).reshape(4, 5, 6) - 1024.0)
    source = nib.Nifti1Image(data, np.diag([0.8, 0.8, 3.0, 1.0]))
    source.set_data_dtype(np.float64)
    nib.save(source, tmp_path / "src.nii.gz")
    result = convert_nifti(tmp_path / "src.nii.gz", tmp_path / "out.nii.gz")
    assert result.dtype == "int16"
    assert np.array_equal(np.asanyarray(nib.load(result.path).dataobj), data)


def test_convert_nifti_scaled_source(tmp_path: Path) -> None:
    data = np.linspace(-1024.3, 90000.7, 4 * 5 * 6).reshape(4, 5, 6)  # beyond int16, so nibabel scales
    source = nib.Nifti1Image(data, np.diag([0.8, 0.8, 3.0, 1.0]))
    source.set_data_dtype(np.int16)  # nibabel stores int16 with scl_slope / scl_inter
    nib.save(source, tmp_path / "src.nii.gz")
    expected = nib.load(tmp_path / "src.nii.gz").get_fdata()
    result = convert_nifti(tmp_path / "src.nii.gz", tmp_path / "out.nii.gz")
    written = nib.load(result.path)
    assert result.dtype in ("float32", "float64")
    assert np.isnan(written.header["scl_slope"]) or written.header["scl_slope"] in (0, 1)
    assert np.allclose(np.asanyarray(written.dataobj), expected, rtol=1e-7, atol=0)


def test_parallel_decode_matches_serial(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    # 64 slices give each of 2 processes the minimum share of 32 slices.
    info = dicomgen.write_series(tmp_path / "in", slices=64, compression="jpeg2000")
    serial = convert_series(tmp_path / "in", tmp_path / "serial.nii.gz")
    decode_logger = logging.getLogger("ctspine_builder.dicom.decode")
    decode_logger.addHandler(caplog.handler)
    try:
        with caplog.at_level(logging.DEBUG, logger="ctspine_builder.dicom.decode"):
            parallel = convert_series(tmp_path / "in", tmp_path / "parallel.nii.gz", workers=2)
    finally:
        decode_logger.removeHandler(caplog.handler)
    assert "decoding 64 slices in 2 processes" in caplog.text
    assert serial.path.read_bytes() == parallel.path.read_bytes()
    assert np.array_equal(load_volume(parallel.path), info.hu)


def test_identifier_scan_finds_nothing(tmp_path: Path) -> None:
    from ctspine_builder.deid import scan_tree

    dicomgen.write_series(tmp_path / "in", slices=4, compression="rle")
    out = tmp_path / "out"
    result = convert_series(tmp_path / "in", out / "image.nii.gz", sidecar_path=out / "image.json", case_id="c5")
    assert scan_tree(out, result.deny_values, {"c5"}) == []
    # The same deny values do find a planted value once it leaks into a file.
    (out / "leak.txt").write_text("operator was Plantedtech\n")
    findings = scan_tree(out, result.deny_values, {"c5"})
    assert [Path(finding.path).name for finding in findings] == ["leak.txt"]


def test_sidecar_keeps_text_values_as_text() -> None:
    from pydicom.multival import MultiValue

    from ctspine_builder.dicom.sidecar import safe_value

    assert safe_value(MultiValue(str, ["Br38f", "3"])) == ["Br38f", "3"]
    assert safe_value(pydicom.valuerep.DSfloat("120")) == 120
    assert safe_value(pydicom.valuerep.DSfloat("0.5")) == 0.5
