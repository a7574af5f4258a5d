"""Convert stage, first step: find the DICOM files of a folder and pick one series.

Only headers are read here (pixel data is skipped), so scanning a folder of a
few thousand files stays cheap. Files are grouped by SeriesInstanceUID
(0020,000E). Non-DICOM files are skipped, and so are localizer images and
other files without the image-plane attributes a volume needs.
"""
from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from ctspine_builder.errors import ConversionError

logger = logging.getLogger(__name__)

# Values larger than this are read only when accessed, which keeps big private
# blobs (Siemens CSA headers, for example) out of memory during the scan.
DEFER_SIZE = "64 KB"

# A DICOM Part 10 file has a 128-byte preamble followed by "DICM".
_PREAMBLE_LENGTH = 128
_MAGIC = b"DICM"
MEDIA_STORAGE_DIRECTORY = "1.2.840.10008.1.3.10"  # DICOMDIR: an index of files, not an image
# CT, MR and PET Image Storage: every such file carries these plane attributes (DICOM PS3.3 C.7.6.2, C.7.6.3).
PLANE_IMAGE_STORAGE = frozenset({"1.2.840.10008.5.1.4.1.1.2", "1.2.840.10008.5.1.4.1.1.4", "1.2.840.10008.5.1.4.1.1.128"})
_PLANE_KEYWORDS = ("Rows", "Columns", "ImagePositionPatient")


@dataclass
class SliceHeader:
    """One image file of a series: its header (no pixel data) and plane geometry in LPS mm."""

    path: Path
    dataset: Dataset
    position: np.ndarray
    orientation: np.ndarray
    pixel_spacing: tuple[float, float]

    @property
    def sop_uid(self) -> str:
        """SOPInstanceUID of the file, or an empty string."""
        return str(self.dataset.get("SOPInstanceUID", ""))

    @property
    def normal(self) -> np.ndarray:
        """Slice normal: cross product of the row and column direction cosines."""
        return np.cross(self.orientation[:3], self.orientation[3:])


@dataclass
class Series:
    """The image files of one SeriesInstanceUID found in a folder."""

    uid: str
    number: str
    slices: list[SliceHeader] = field(default_factory=list)
    skipped_images: int = 0


def discover_series(folder: str | Path, *, case_id: str | None = None) -> dict[str, Series]:
    """Scan ``folder`` recursively and return its image series by SeriesInstanceUID.

    Raises ConversionError when the folder is missing, contains no DICOM file
    or contains a file that starts like DICOM but cannot be parsed.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise ConversionError("DICOM folder not found", case_id=case_id, path=folder,
                              hint="Check the path; it must be a folder of DICOM files")

    series: dict[str, Series] = {}
    dicom_files = non_dicom = 0
    for path in _walk_files(folder):
        dataset = read_header(path, case_id=case_id)
        if dataset is None:
            non_dicom += 1
            continue
        dicom_files += 1
        _add_to_series(series, path, dataset)

    logger.debug("scanned %s: %d DICOM files, %d other files, %d series", folder, dicom_files, non_dicom, len(series))
    if dicom_files == 0:
        raise ConversionError(f"no DICOM files found in the folder or its subfolders ({non_dicom} other files)",
                              case_id=case_id, path=folder,
                              hint="Point to the folder that contains the series' .dcm files")
    return series


def select_series(series: dict[str, Series], series_uid: str | None, folder: str | Path,
                  *, case_id: str | None = None) -> Series:
    """Return the series named by ``series_uid``, or the only image series found.

    The error for several series lists each one's SeriesNumber, slice count
    and SeriesInstanceUID (the user needs the UID to choose), never its
    description, which may carry identifying text.
    """
    with_images = {uid: found for uid, found in series.items() if found.slices}
    if series_uid is not None:
        if series_uid in with_images:
            return with_images[series_uid]
        raise ConversionError(f"series {series_uid} not found among the image series in the folder:\n"
                              f"{_list_series(with_images)}", case_id=case_id, path=folder,
                              hint="Pass one of the listed UIDs with --series")
    if len(with_images) == 1:
        return next(iter(with_images.values()))
    if not with_images:
        skipped = sum(found.skipped_images for found in series.values())
        raise ConversionError(f"the folder contains DICOM files but no image series to convert "
                              f"({skipped} localizer or non-image files skipped)", case_id=case_id, path=folder,
                              hint="Point to a folder with the axial CT series")
    raise ConversionError(f"the folder contains {len(with_images)} image series:\n{_list_series(with_images)}",
                          case_id=case_id, path=folder, hint="Choose one with --series UID")


def _list_series(series: dict[str, Series]) -> str:
    ordered = sorted(series.values(), key=lambda found: (_number_key(found.number), found.uid))
    return "\n".join(f"  SeriesNumber {found.number or '(none)'}: {len(found.slices)} slices, UID {found.uid}"
                     for found in ordered)


def _number_key(number: str) -> float:
    try:
        return float(number)
    except ValueError:
        return float("inf")


def _walk_files(folder: Path) -> Iterator[Path]:
    """Yield every regular file under ``folder`` in a sorted, reproducible order."""
    for root, dirs, files in os.walk(folder):
        dirs.sort()
        for name in sorted(files):
            yield Path(root) / name


def read_header(path: Path, *, case_id: str | None = None) -> Dataset | None:
    """Return the file's DICOM header without pixel data, or None for a non-DICOM file.

    A file with the DICOM preamble and "DICM" marker that pydicom cannot
    parse raises ConversionError, since skipping it could drop a slice.
    """
    with open(path, "rb") as handle:
        head = handle.read(_PREAMBLE_LENGTH + len(_MAGIC))
    if head[_PREAMBLE_LENGTH:] != _MAGIC:
        return None
    try:
        dataset = pydicom.dcmread(path, stop_before_pixels=True, defer_size=DEFER_SIZE)
    except (InvalidDicomError, EOFError, ValueError, OSError, KeyError, TypeError) as error:
        # Only the exception type is shown: pydicom's message may quote a header value.
        raise ConversionError(f"unreadable DICOM file ({type(error).__name__} while parsing the header)",
                              case_id=case_id, path=path,
                              hint="The file is damaged or truncated; download the series again") from error
    if str(dataset.file_meta.get("MediaStorageSOPClassUID", "")) == MEDIA_STORAGE_DIRECTORY:
        return None
    storage_class = str(dataset.file_meta.get("MediaStorageSOPClassUID", ""))
    if storage_class in PLANE_IMAGE_STORAGE and any(keyword not in dataset for keyword in _PLANE_KEYWORDS):
        # pydicom stops quietly at the end of a truncated file, so a CT or MR
        # image without its plane attributes is the usual sign of one.
        raise ConversionError("DICOM image file without Rows, Columns or ImagePositionPatient",
                              case_id=case_id, path=path,
                              hint="The file is damaged or truncated; download the series again")
    return dataset


def is_localizer(dataset: Dataset) -> bool:
    """Return True for a localizer (scout) image: ImageType (0008,0008) contains LOCALIZER."""
    image_type = dataset.get("ImageType") or []
    if isinstance(image_type, str):
        image_type = [image_type]
    return any(str(value).upper() == "LOCALIZER" for value in image_type)


def _add_to_series(series: dict[str, Series], path: Path, dataset: Dataset) -> None:
    uid = str(dataset.get("SeriesInstanceUID", ""))
    found = series.setdefault(uid, Series(uid=uid, number=str(dataset.get("SeriesNumber", "") or "")))
    header = _slice_header(path, dataset)
    if header is None:
        found.skipped_images += 1
        logger.debug("skipped %s: localizer or no image plane", path.name)
        return
    found.slices.append(header)


def _slice_header(path: Path, dataset: Dataset) -> SliceHeader | None:
    """Return the slice geometry, or None for files that are no slice of a volume."""
    if is_localizer(dataset):
        return None
    needed = ("ImagePositionPatient", "ImageOrientationPatient", "Rows", "Columns")
    if any(dataset.get(keyword) in (None, "") for keyword in needed):
        return None
    try:
        position = np.array([float(value) for value in dataset.ImagePositionPatient], dtype=np.float64)
        orientation = np.array([float(value) for value in dataset.ImageOrientationPatient], dtype=np.float64)
        spacing = dataset.get("PixelSpacing") or [1.0, 1.0]
        pixel_spacing = (float(spacing[0]), float(spacing[1]))
    except (TypeError, ValueError, IndexError):
        return None
    if position.shape != (3,) or orientation.shape != (6,):
        return None
    return SliceHeader(path=path, dataset=dataset, position=position, orientation=orientation,
                       pixel_spacing=pixel_spacing)
