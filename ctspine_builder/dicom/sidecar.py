"""Convert stage, de-identification side: the allow-listed sidecar and the deny values.

The sidecar JSON keeps only acquisition fields that identify neither the
patient nor the site, each value checked to be a number or a short token
with no date, time or UID in it. `collect_deny_values` gathers the
identifying values actually read from the inputs, so the build's scan for
identifiers can search every output for them.
"""
from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue

from ctspine_builder import TOOL_NAME, __version__
from ctspine_builder.deid import SIDECAR_ALLOWED_KEYS
from ctspine_builder.fileio import write_bytes_atomic

logger = logging.getLogger(__name__)

# DICOM keywords copied into the sidecar when present and safe.
SIDECAR_DICOM_KEYWORDS = (
    "Modality",
    "Manufacturer",
    "ManufacturerModelName",
    "KVP",
    "XRayTubeCurrent",
    "ExposureTime",
    "Exposure",
    "ConvolutionKernel",
    "SliceThickness",
    "PatientPosition",
    "BodyPartExamined",
    "GantryDetectorTilt",
    "ReconstructionDiameter",
    "ImageType",
)

# A sidecar string must be a short token: letters, digits and a few separators.
_SAFE_TOKEN = re.compile(r"^[A-Za-z0-9 ._+\-/()]{1,64}$")
# Six or more digits in a row look like a date or time (YYYYMMDD, HHMMSS), and
# four or more dotted numbers like a UID.
_DATE_LIKE = re.compile(r"\d{6,}")
_UID_LIKE = re.compile(r"\d+(\.\d+){3,}")

# Value representations whose values identify a person, a date or an object.
IDENTIFYING_VRS = frozenset({"PN", "DA", "DT", "TM", "UI"})
# Free-text and identifier representations: their values are denied unless the
# element is allow-listed for the sidecar.
TEXT_VRS = frozenset({"LO", "SH", "LT", "ST", "UT", "UC", "AE"})
# Values shorter than this are not collected; the verify scan skips them too,
# because 1..3 character values match by chance.
MIN_DENY_LENGTH = 4
_SCANNED_VRS = IDENTIFYING_VRS | TEXT_VRS | {"CS", "SQ"}
_PRINTABLE_RUN = re.compile(rb"[\x20-\x7e]{4,}")
_NUMBER = re.compile(r"^[-+]?\d*\.?\d+([eE][-+]?\d+)?$")

# Identifier elements whose values are often all digits (a device serial
# number, a hospital's patient or accession number). They stay in the deny
# list even when they look like numbers. The scan matches all-digit values
# only as whole numbers, so they do not fire inside hex digests.
NUMERIC_IDENTIFIER_KEYWORDS = frozenset({
    "DeviceSerialNumber", "PatientID", "OtherPatientIDs", "AccessionNumber",
    "StudyID", "IssuerOfPatientID", "RequestedProcedureID", "PerformedProcedureStepID",
    "ScheduledProcedureStepID", "AdmissionID", "InstitutionalDepartmentName",
})


def safe_value(value: Any) -> Any | None:
    """Return ``value`` as JSON (number, token or list of them), or None when unsafe."""
    if isinstance(value, (list, tuple, MultiValue)):
        items = [safe_value(item) for item in value]
        return None if any(item is None for item in items) or not items else items
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value) if not float(value).is_integer() else int(value)
    text = str(value).strip()
    # pydicom returns numbers for numeric VRs (DS, IS, US, FD, ...), so a
    # string here comes from a text VR and stays text: ConvolutionKernel
    # ["Br38f", "3"] must not turn into ["Br38f", 3]. Only the number
    # types pydicom may hand over as strings are converted.
    if not isinstance(value, str):
        number = _as_number(text)
        if number is not None:
            return number
    if not _SAFE_TOKEN.match(text) or _DATE_LIKE.search(text) or _UID_LIKE.search(text):
        return None
    return text


def _as_number(text: str) -> int | float | None:
    try:
        number = float(text)
    except ValueError:
        return None
    if number != number or abs(number) == float("inf"):
        return None
    return int(number) if number.is_integer() and "." not in text else number


def build_sidecar(dataset: Dataset, *, geometry: str, pixel_spacing: tuple[float, float], slice_spacing: float,
                  slopes: list[float], intercepts: list[float], case_id: str | None = None) -> dict[str, Any]:
    """Return the sidecar fields: allow-listed acquisition values and the converter.

    Acquisition values come from ``dataset`` (the first output slice). The
    rescale entries are one number when all slices agree, else one per
    output slice.
    """
    sidecar: dict[str, Any] = {
        "ConversionSoftware": TOOL_NAME,
        "ConversionSoftwareVersion": __version__,
        "Geometry": geometry,
        "PixelSpacing": [round(pixel_spacing[0], 6), round(pixel_spacing[1], 6)],
        "SpacingBetweenSlices": round(slice_spacing, 6),
        "RescaleSlope": slopes[0] if len(set(slopes)) == 1 else slopes,
        "RescaleIntercept": intercepts[0] if len(set(intercepts)) == 1 else intercepts,
    }
    if case_id:
        sidecar["CaseId"] = case_id
    for keyword in SIDECAR_DICOM_KEYWORDS:
        raw = dataset.get(keyword)
        if raw in (None, ""):
            continue
        value = safe_value(raw)
        if value is None:
            logger.warning("sidecar: %s left out because its value is not a plain number or short token", keyword)
            continue
        sidecar[keyword] = value
    unknown = set(sidecar) - SIDECAR_ALLOWED_KEYS
    if unknown:
        raise RuntimeError(f"bug: sidecar keys outside the allow-list: {sorted(unknown)}")
    return sidecar


def write_sidecar(path: str | Path, sidecar: dict[str, Any]) -> None:
    """Write the sidecar atomically as JSON with sorted keys, so equal input gives equal bytes."""
    text = json.dumps(sidecar, indent=2, sort_keys=True, ensure_ascii=True) + "\n"
    write_bytes_atomic(path, text.encode("ascii"))


def collect_deny_values(datasets: Iterable[Dataset]) -> set[str]:
    """Return the identifying values read from ``datasets``, for the scan of outputs.

    Collected: every PN, DA, DT, TM and UI value, and every string inside
    private elements. Also collected: the values of free-text and identifier
    elements (LO, SH, LT, ST, UT, UC, AE), such as PatientID, InstitutionName,
    StationName, DeviceSerialNumber, AccessionNumber, descriptions, comments
    and ProtocolName, except the allow-listed sidecar fields. Sequences are searched
    too. Values shorter than MIN_DENY_LENGTH characters are left out.
    """
    identifying: set[str] = set()
    text: set[str] = set()
    allowed_values: set[str] = set()
    for dataset in datasets:
        for element in _text_elements(dataset):
            if element.tag.is_private:
                text.update(_private_strings(element.value))
            elif element.VR in IDENTIFYING_VRS:
                identifying.update(_strings(element.value))
            elif element.keyword in SIDECAR_DICOM_KEYWORDS:
                allowed_values.update(value.lower() for value in _strings(element.value))
            elif element.keyword in NUMERIC_IDENTIFIER_KEYWORDS:
                identifying.update(_strings(element.value))
            elif element.VR in TEXT_VRS:
                text.update(_strings(element.value))

    # A bare number in free text or private data ("1024", "0.5") identifies
    # no one but matches sidecar numbers, and a value that is part of an
    # allow-listed field (the Manufacturer "SIEMENS" repeated in a private
    # element) is published on purpose.
    text = {value for value in text
            if not _NUMBER.match(value) and not any(value.lower() in allowed for allowed in allowed_values)}
    return {value for value in identifying | text if len(value) >= MIN_DENY_LENGTH}


def _text_elements(dataset: Dataset) -> Iterator[DataElement]:
    """Yield the elements whose values may identify, descending into sequences.

    Elements of other VRs (numbers, codes, binary data) stay unconverted,
    which keeps this fast on headers with thousands of elements.
    """
    for tag in list(dataset.keys()):
        raw_vr = dataset.get_item(tag).VR
        if not (tag.is_private or raw_vr is None or raw_vr in _SCANNED_VRS):
            continue
        element = dataset[tag]
        if element.VR == "SQ":
            for item in element.value or []:
                yield from _text_elements(item)
        elif tag.is_private or element.VR in _SCANNED_VRS:
            yield element


def _strings(value: Any) -> Iterable[str]:
    items = value if isinstance(value, (list, tuple, MultiValue)) else [value]
    for item in items:
        if item is None:
            continue
        text = str(item).strip()
        if text:
            yield text


def _private_strings(value: Any) -> Iterable[str]:
    if isinstance(value, (bytes, bytearray)):
        # Unknown private data: keep the printable ASCII runs, which contain any names or IDs.
        for run in _PRINTABLE_RUN.findall(bytes(value)):
            yield from (part.strip() for part in run.decode("ascii").split("\\") if part.strip())
        return
    if isinstance(value, (str, list, tuple, MultiValue)):
        items = value if isinstance(value, (list, tuple, MultiValue)) else [value]
        for text in _strings([item for item in items if isinstance(item, str)]):
            yield from (part.strip() for part in text.split("\\") if part.strip())
