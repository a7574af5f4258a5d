"""Select stage: classify a CT colonography series as prone or supine.

CT COLONOGRAPHY patients were scanned twice, lying on the back (supine) and
on the front (prone). The headers separate the two more reliably than the
free-text description. PatientPosition (0018,5100) is HFP/FFP for prone and
HFS/FFS for supine. In ImageOrientationPatient (0020,0037), the column
cosine's y component points to the patient's posterior (+y in DICOM patient
coordinates) for a supine patient shown the usual way, and to the anterior
(-y) for a prone patient whose images were not flipped.
"""
from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

logger = logging.getLogger(__name__)

Position = Literal["prone", "supine"]
POSITION_CHOICES = ("authors", "prone", "supine")

_PATIENT_POSITIONS: dict[str, Position] = {"HFP": "prone", "FFP": "prone", "HFS": "supine", "FFS": "supine"}

# A column cosine y component smaller than this in magnitude belongs to an
# oblique or sagittal plane, which cannot separate prone from supine.
_MIN_Y_COSINE = 0.5

_PRONE_WORD = re.compile(r"\bprone\b", re.IGNORECASE)
_SUPINE_WORD = re.compile(r"\bsupine\b", re.IGNORECASE)


@dataclass(frozen=True)
class PositionResult:
    """A series' position and the attribute that decided it (None when undecided)."""

    position: Position | None
    basis: str | None


def position_from_orientation(orientation: list[float] | None) -> Position | None:
    """Return the position that ImageOrientationPatient implies for an axial series, or None."""
    if not orientation or len(orientation) != 6:
        return None
    column_y = float(orientation[4])
    if abs(column_y) < _MIN_Y_COSINE:
        return None
    return "supine" if column_y > 0 else "prone"


def position_from_description(description: str | None) -> Position | None:
    """Return the position named in a SeriesDescription, or None when it names neither or both."""
    if not description:
        return None
    prone = bool(_PRONE_WORD.search(description))
    supine = bool(_SUPINE_WORD.search(description))
    if prone == supine:
        return None
    return "prone" if prone else "supine"


def classify_position(
    patient_position: str | None,
    orientation: list[float] | None,
    description: str | None = None,
) -> PositionResult:
    """Classify a series from PatientPosition, then ImageOrientationPatient, then its description.

    PatientPosition decides when it is one of HFP, FFP, HFS, FFS. When the
    orientation disagrees, a warning is logged and PatientPosition still
    decides, because it records how the patient lay while the orientation
    also depends on how the scanner reconstructed the image. The
    description is used only when neither header attribute decides.
    """
    from_header = _PATIENT_POSITIONS.get((patient_position or "").strip().upper())
    from_orientation = position_from_orientation(orientation)
    if from_header:
        if from_orientation and from_orientation != from_header:
            # NOTE: chosen rule, not checked against every scanner in the
            # collection; such series are logged so that they can be reviewed.
            logger.warning(
                "PatientPosition is %s but ImageOrientationPatient suggests %s; using PatientPosition",
                from_header, from_orientation,
            )
        return PositionResult(from_header, "PatientPosition")
    if from_orientation:
        return PositionResult(from_orientation, "ImageOrientationPatient")
    from_description = position_from_description(description)
    if from_description:
        return PositionResult(from_description, "SeriesDescription")
    return PositionResult(None, None)


def classify_series_folder(folder: Path) -> PositionResult:
    """Classify the series in a folder of DICOM files from the first file whose header reads."""
    import pydicom

    for path in sorted(folder.iterdir()):
        if not path.is_file():
            continue
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
        except (pydicom.errors.InvalidDicomError, OSError):
            continue
        orientation = ds.get("ImageOrientationPatient")
        return classify_position(
            ds.get("PatientPosition"),
            [float(value) for value in orientation] if orientation else None,
            ds.get("SeriesDescription"),
        )
    return PositionResult(None, None)
