"""Synthetic CT series for tests of the convert stage, written with pydicom.

`write_series` writes one CT series to a folder. Its options set the grid
(shape, spacing, slice positions, orientation, gantry tilt), the stored
values and rescale, and the transfer syntax. It can also add duplicates, a
localizer image in the same series and identifying values in the headers. `write_junk_files`
and `nbia_series_folder` build the awkward folders that real downloads give.

Encoders: RLE, JPEG-LS and JPEG 2000 come from pydicom's encoders (RLE is
built in, JPEG-LS needs pyjpegls, JPEG 2000 needs pylibjpeg-openjpeg). JPEG
Lossless (process 14, selection value 1) has no pydicom encoder, so
SimpleITK's GDCM writer encodes each frame and its encapsulated pixel data is
moved into the pydicom dataset. Files go wherever the caller points, which in
tests is always a pytest tmp_path.
"""
from __future__ import annotations

import math
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    CTImageStorage,
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    RLELossless,
    UID,
)

# Root for the UIDs this module makes: pydicom's example root plus a branch
# that no real scanner uses, so every UID in a test output is recognisable.
UID_ROOT = "1.2.826.0.1.3680043.8.498.7712."

TRANSFER_SYNTAXES: dict[str, UID] = {
    "none": ExplicitVRLittleEndian,
    "rle": RLELossless,
    "jpeg-lossless": JPEGLosslessSV1,
    "jpeg-ls": JPEGLSLossless,
    "jpeg2000": JPEG2000Lossless,
}

PRIVATE_GROUP = 0x0029
PRIVATE_CREATOR = "CTSPINE PLANTED"

# Identifying values planted in every series unless the caller overrides them.
# Each is distinctive, so a search of the outputs finds no false match.
DEFAULT_PLANTED: dict[str, str] = {
    "PatientName": "Plantedname^Zelda^Quintessa",
    "PatientID": "PLANTPID4417",
    "PatientBirthDate": "19230417",
    "StudyDate": "20190312",
    "SeriesDate": "20190313",
    "AcquisitionDate": "20190314",
    "ContentDate": "20190315",
    "StudyTime": "142233.517",
    "AccessionNumber": "ACCPLANT8812",
    "InstitutionName": "Plantville General Hospital",
    "InstitutionAddress": "17 Quarkstreet Plantville",
    "StationName": "PLANTSTATION7",
    "DeviceSerialNumber": "SERPLANT90210",
    "ReferringPhysicianName": "Referrer^Plantedoctor",
    "OperatorsName": "Operator^Plantedtech",
    "StudyDescription": "PLANTED STUDY DESCRIPTION",
    "SeriesDescription": "PLANTED SERIES DESCRIPTION",
    "ProtocolName": "PLANTED PROTOCOL NAME",
    "ImageComments": "PLANTED IMAGE COMMENT",
    "PatientComments": "PLANTED PATIENT COMMENT",
    "StudyID": "STUDYPLANT55",
    "Private": "PRIVATEPLANT9931",
}


@dataclass
class SeriesInfo:
    """What `write_series` wrote, so tests can compute expected results.

    ``stored`` and ``hu`` are (slice, row, column) arrays with slices in the
    order of ``positions`` (the order written, before any shuffling of file
    names or instance numbers).
    """

    folder: Path
    files: list[Path]
    series_uid: str
    study_uid: str
    sop_uids: list[str]
    positions: np.ndarray
    row_cosine: np.ndarray
    column_cosine: np.ndarray
    pixel_spacing: tuple[float, float]
    stored: np.ndarray
    hu: np.ndarray
    planted: dict[str, str] = field(default_factory=dict)

    def planted_values(self) -> set[str]:
        """Return every identifying value written, UIDs included."""
        return planted_values(self.planted) | {self.series_uid, self.study_uid, *self.sop_uids}


def planted_values(planted: dict[str, str] | None = None) -> set[str]:
    """Return the planted identifying strings, with dates also as YYYY-MM-DD."""
    planted = DEFAULT_PLANTED if planted is None else planted
    values = {value for value in planted.values() if value}
    for key, value in planted.items():
        if key.endswith("Date") and len(value) == 8:
            values.add(f"{value[:4]}-{value[4:6]}-{value[6:]}")
        if key.endswith("Name") and "^" in value:
            values.update(part for part in value.split("^") if len(part) > 3)
    return values


# UIDs come from an unseeded generator, so two series written with the same
# seed still get different UIDs, as two real series would.
_UID_RNG = np.random.default_rng()


def make_uid(rng: np.random.Generator | None = None) -> str:
    """Return a random UID under this module's test root (``rng`` defaults to an unseeded one)."""
    rng = _UID_RNG if rng is None else rng
    return UID_ROOT + ".".join(str(int(part)) for part in rng.integers(1, 10**9, size=3))


def tilted_orientation(tilt_deg: float) -> tuple[np.ndarray, np.ndarray]:
    """Return axial row and column cosines with the gantry tilted about x."""
    angle = math.radians(tilt_deg)
    row = np.array([1.0, 0.0, 0.0])
    column = np.array([0.0, math.cos(angle), -math.sin(angle)])
    return row, column


def default_stored(rows: int, cols: int, slices: int, rng: np.random.Generator) -> np.ndarray:
    """Return a phantom of stored values in 0..2998, different on every slice."""
    i, j = np.meshgrid(np.arange(rows), np.arange(cols), indexing="ij")
    volume = np.empty((slices, rows, cols), dtype=np.int32)
    for k in range(slices):
        volume[k] = (i * 37 + j * 11 + k * 101) % 2800 + rng.integers(0, 200, size=(rows, cols))
    return volume


def write_series(
    folder: str | Path,
    *,
    rows: int = 36,
    cols: int = 40,
    slices: int = 6,
    pixel_spacing: tuple[float, float] = (0.75, 0.8),
    slice_spacing: float = 2.5,
    offsets: Sequence[float] | None = None,
    origin: Sequence[float] = (-90.0, -110.0, 40.0),
    row_cosine: Sequence[float] | None = None,
    column_cosine: Sequence[float] | None = None,
    tilt_deg: float = 0.0,
    stored: np.ndarray | None = None,
    slope: float | Sequence[float] = 1.0,
    intercept: float | Sequence[float] = -1024.0,
    unsigned: bool = False,
    bits_stored: int = 16,
    compression: str = "none",
    duplicates: Sequence[int] = (),
    series_uid: str | None = None,
    series_number: int = 3,
    planted: dict[str, str] | None = None,
    localizer: bool = False,
    instance_numbers: str = "shuffled",
    seed: int = 0,
) -> SeriesInfo:
    """Write one synthetic CT series to ``folder`` and describe it.

    Slice k sits at ``origin + offsets[k] * stacking direction`` (mm). The
    stacking direction is the slice normal, except with ``tilt_deg`` set,
    where slices stack along the table axis (0, 0, 1) while the image plane
    tilts, as on a CT with a tilted gantry. ``offsets`` defaults to
    ``k * slice_spacing``; give it to make missing slices or uneven spacing.
    ``stored`` (slice, row, column) overrides the phantom and the shape.
    ``slope`` and ``intercept`` may be one value or one per slice. Indices in
    ``duplicates`` get a second file with the same position and pixels but a
    new SOPInstanceUID. File names are random and InstanceNumber is shuffled
    (``instance_numbers="shuffled"``), reversed or ascending, so a converter
    that sorts by either gets the order wrong.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    planted = dict(DEFAULT_PLANTED if planted is None else planted)

    if row_cosine is None or column_cosine is None:
        row, column = tilted_orientation(tilt_deg)
    else:
        row, column = np.asarray(row_cosine, float), np.asarray(column_cosine, float)
    normal = np.cross(row, column)
    stacking = np.array([0.0, 0.0, 1.0]) if tilt_deg else normal
    if stored is not None:
        slices = stored.shape[0]
    offsets = [k * slice_spacing for k in range(slices)] if offsets is None else list(offsets)
    slices = len(offsets)
    positions = np.array([np.asarray(origin, float) + offset * stacking for offset in offsets])

    if stored is None:
        stored = default_stored(rows, cols, slices, rng)
    rows, cols = stored.shape[1], stored.shape[2]
    slopes = _per_slice(slope, slices)
    intercepts = _per_slice(intercept, slices)
    hu = np.stack([stored[k].astype(np.float64) * slopes[k] + intercepts[k] for k in range(slices)])

    series_uid = series_uid or make_uid()
    study_uid = make_uid()
    frame_uid = make_uid()
    numbers = _instance_numbers(slices, instance_numbers, rng)

    shared = SliceHeader(
        study_uid=study_uid, series_uid=series_uid, frame_uid=frame_uid, series_number=series_number,
        row=row, column=column, pixel_spacing=pixel_spacing, unsigned=unsigned, bits_stored=bits_stored,
        slice_thickness=abs(slice_spacing), planted=planted,
    )
    files: list[Path] = []
    sop_uids: list[str] = []
    copies = [(k, make_uid()) for k in range(slices)] + [(k, make_uid()) for k in duplicates]
    for k, sop_uid in copies:
        ds = shared.dataset(sop_uid, positions[k], int(numbers[k]), slopes[k], intercepts[k])
        set_pixels(ds, stored[k], compression, unsigned)
        path = folder / f"{rng.integers(0, 16**8):08x}.dcm"
        ds.save_as(path, enforce_file_format=True)
        files.append(path)
        sop_uids.append(sop_uid)

    if localizer:
        files.append(write_localizer(folder, shared, make_uid(), rng))

    return SeriesInfo(
        folder=folder, files=files, series_uid=series_uid, study_uid=study_uid, sop_uids=sop_uids,
        positions=positions, row_cosine=row, column_cosine=column, pixel_spacing=tuple(pixel_spacing),
        stored=stored, hu=hu, planted=planted,
    )


def _per_slice(value: float | Sequence[float], slices: int) -> list[float]:
    if isinstance(value, (int, float)):
        return [float(value)] * slices
    values = [float(v) for v in value]
    if len(values) != slices:
        raise ValueError(f"expected {slices} per-slice values, got {len(values)}")
    return values


def _instance_numbers(slices: int, mode: str, rng: np.random.Generator) -> np.ndarray:
    if mode == "ascending":
        return np.arange(1, slices + 1)
    if mode == "reversed":
        return np.arange(slices, 0, -1)
    if mode == "shuffled":
        return rng.permutation(slices) + 1
    raise ValueError(f"unknown instance_numbers mode {mode!r}; use ascending, reversed or shuffled")


def _ds_number(value: float) -> str:
    """Format a float for a DS element (at most 16 characters)."""
    text = f"{value:.10g}"
    return text if len(text) <= 16 else f"{value:.6e}"


@dataclass
class SliceHeader:
    """Header fields shared by every slice of one synthetic series."""

    study_uid: str
    series_uid: str
    frame_uid: str
    series_number: int
    row: np.ndarray
    column: np.ndarray
    pixel_spacing: tuple[float, float]
    unsigned: bool
    bits_stored: int
    slice_thickness: float
    planted: dict[str, str]

    def dataset(self, sop_uid: str, position: np.ndarray, number: int, slope: float, intercept: float) -> Dataset:
        """Return one slice's header without pixel data."""
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
        ds.file_meta.MediaStorageSOPInstanceUID = sop_uid
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.SOPClassUID = CTImageStorage
        ds.SOPInstanceUID = sop_uid
        ds.StudyInstanceUID = self.study_uid
        ds.SeriesInstanceUID = self.series_uid
        ds.FrameOfReferenceUID = self.frame_uid
        ds.Modality = "CT"
        ds.Manufacturer = "SYNTHETIC"
        ds.ManufacturerModelName = "dicomgen phantom"
        ds.KVP = "120"
        ds.ConvolutionKernel = "B30f"
        ds.PatientPosition = "HFS"
        ds.BodyPartExamined = "ABDOMEN"
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.SeriesNumber = self.series_number
        ds.InstanceNumber = number
        ds.SliceThickness = _ds_number(self.slice_thickness)
        ds.PixelSpacing = [_ds_number(v) for v in self.pixel_spacing]
        ds.ImageOrientationPatient = [_ds_number(v) for v in (*self.row, *self.column)]
        ds.ImagePositionPatient = [_ds_number(v) for v in position]
        ds.RescaleSlope = _ds_number(slope)
        ds.RescaleIntercept = _ds_number(intercept)
        ds.RescaleType = "HU"
        plant(ds, self.planted)
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsAllocated = 16
        ds.BitsStored = self.bits_stored
        ds.HighBit = self.bits_stored - 1
        ds.PixelRepresentation = 0 if self.unsigned else 1
        return ds


def plant(ds: Dataset, planted: dict[str, str]) -> None:
    """Write the planted identifying values into ``ds``, the private one too."""
    for keyword, value in planted.items():
        if keyword == "Private":
            block = ds.private_block(PRIVATE_GROUP, PRIVATE_CREATOR, create=True)
            block.add_new(0x10, "LO", value)
        else:
            setattr(ds, keyword, value)


def set_pixels(ds: Dataset, pixels: np.ndarray, compression: str, unsigned: bool) -> None:
    """Store one slice's stored values in ``ds`` with the named transfer syntax."""
    if compression not in TRANSFER_SYNTAXES:
        raise ValueError(f"unknown compression {compression!r}; use one of {sorted(TRANSFER_SYNTAXES)}")
    array = pixels.astype(np.uint16 if unsigned else np.int16)
    ds.Rows, ds.Columns = array.shape
    ds.PixelData = array.tobytes()
    if compression == "none":
        return
    if compression == "jpeg-lossless":
        _encode_jpeg_lossless(ds, array)
        return
    if compression == "jpeg2000" and min(array.shape) < 32:
        # pylibjpeg-openjpeg always encodes 6 wavelet resolutions, which need 32 pixels per side.
        raise ValueError(f"JPEG 2000 needs at least 32 rows and columns, got {array.shape}")
    ds.compress(TRANSFER_SYNTAXES[compression], array)


def _encode_jpeg_lossless(ds: Dataset, array: np.ndarray) -> None:
    """Encode with SimpleITK's GDCM writer, the only JPEG Lossless encoder at hand."""
    import SimpleITK as sitk

    with tempfile.TemporaryDirectory() as scratch:
        path = Path(scratch) / "frame.dcm"
        writer = sitk.ImageFileWriter()
        writer.SetFileName(str(path))
        writer.SetUseCompression(True)
        writer.SetCompressor("JPEG")
        writer.Execute(sitk.GetImageFromArray(array))
        encoded = pydicom.dcmread(path)
    if encoded.file_meta.TransferSyntaxUID != JPEGLosslessSV1:
        raise RuntimeError(f"SimpleITK wrote {encoded.file_meta.TransferSyntaxUID}, not JPEG Lossless SV1")
    ds.PixelData = encoded.PixelData
    ds["PixelData"].VR = "OB"
    ds.file_meta.TransferSyntaxUID = JPEGLosslessSV1


def write_localizer(folder: Path, shared: SliceHeader, sop_uid: str, rng: np.random.Generator) -> Path:
    """Write a sagittal LOCALIZER image into the same series as ``shared``."""
    sagittal = SliceHeader(**{**shared.__dict__, "row": np.array([0.0, 1.0, 0.0]), "column": np.array([0.0, 0.0, -1.0])})
    ds = sagittal.dataset(sop_uid, np.array([0.0, -200.0, 300.0]), 999, 1.0, -1024.0)
    ds.ImageType = ["ORIGINAL", "PRIMARY", "LOCALIZER"]
    set_pixels(ds, rng.integers(0, 2000, size=(16, 30)), "none", shared.unsigned)
    path = folder / f"{rng.integers(0, 16**8):08x}.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path


def write_junk_files(folder: str | Path) -> list[Path]:
    """Write files that a DICOM folder download often carries but are not DICOM."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    junk = {
        "LICENSE": b"Creative Commons licence text\n",
        "md5hashes.csv": b"Filename,MD5Hash\n1-01.dcm,0123456789abcdef0123456789abcdef\n",
        ".DS_Store": b"\x00\x00\x00\x01Bud1" + bytes(64),
        "notes.txt": b"DICM is in this text but it is no DICOM file\n",
        "empty.dcm": b"",
        "truncated_preamble.dcm": bytes(100),
    }
    paths = []
    for name, payload in junk.items():
        path = folder / name
        path.write_bytes(payload)
        paths.append(path)
    return paths


def nbia_series_folder(root: str | Path, patient_id: str = "PLANTPID4417", series_number: int = 3) -> Path:
    """Return a series folder shaped like the NBIA Data Retriever's layout.

    The layout is PatientID / study folder / series folder, where the study
    folder is ``MM-dd-yyyy-StudyID-StudyDesc-<5 chars>`` and the series
    folder ``SeriesNumber-SeriesDesc-<5 chars>``.
    """
    study = "03-12-2019-STUDYPLANT55-PLANTED STUDY DESCRIPTION-71234"
    series = f"{series_number}.000000-PLANTED SERIES DESCRIPTION-.4417"
    folder = Path(root) / patient_id / study / series
    folder.mkdir(parents=True, exist_ok=True)
    return folder
