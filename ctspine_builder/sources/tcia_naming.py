"""Fetch stage: map an NBIA Data Retriever folder name to the series it was written for.

The CTSpine1K authors recorded each chosen series as the folder the NBIA Data
Retriever wrote, ``PatientID/<study folder>/<series folder>``. The retriever
builds those names from getSeries fields:

- study folder: ``StudyDate-StudyID-StudyDesc-<last 5 characters of
  StudyInstanceUID>``, with StudyDate as ``MM-dd-yyyy``, StudyDesc cut to 53
  characters, and empty or "null" parts left out;
- series folder: ``SeriesNumber-SeriesDesc-<last 5 characters of
  SeriesInstanceUID>``, with SeriesNumber printed as a float (``4.000000``).

Descriptions keep only ``[A-Za-z0-9 .-]`` after ``/`` becomes ``-``. The
5-character suffixes are raw, dots included. StudyID and StudyDesc cannot be
separated in a folder name, so matching uses the suffixes and SeriesNumber
first and then confirms the series description.
"""
from __future__ import annotations

import logging
import re
from collections.abc import Callable
from dataclasses import dataclass

from ctspine_builder.errors import FetchError

logger = logging.getLogger(__name__)

SUFFIX_CHARS = 5
DESCRIPTION_MAX_CHARS = 53
_NOT_KEPT = re.compile(r"[^A-Za-z0-9 .\-]")
_ISO_DATE = re.compile(r"^(\d{4})-(\d{2})-(\d{2})")
_DICOM_DATE = re.compile(r"^(\d{4})(\d{2})(\d{2})$")


@dataclass(frozen=True)
class FolderHint:
    """The parts of a ``PatientID/<study folder>/<series folder>`` hint."""

    patient_id: str
    study_folder: str
    series_folder: str
    study_suffix: str
    series_suffix: str
    series_number: str
    series_description: str

    @property
    def text(self) -> str:
        """Return the hint as written in the manifest."""
        return f"{self.patient_id}/{self.study_folder}/{self.series_folder}"


def clean_description(text: str | None) -> str:
    """Return a description as the retriever writes it into a folder name."""
    if not text or text == "null":
        return ""
    return _NOT_KEPT.sub("", text.replace("/", "-"))[:DESCRIPTION_MAX_CHARS]


def format_series_number(value: object) -> str:
    """Return SeriesNumber printed as the retriever prints it (``4`` -> ``4.000000``)."""
    if value is None or value == "":
        return ""
    try:
        return f"{float(value):f}"
    except (TypeError, ValueError):
        return str(value)


def format_study_date(value: str | None) -> str:
    """Return StudyDate as ``MM-dd-yyyy`` from ``yyyy-MM-dd HH:mm:ss.S`` or DICOM ``yyyyMMdd``."""
    if not value or value == "null":
        return ""
    match = _ISO_DATE.match(value) or _DICOM_DATE.match(value)
    if not match:
        return value
    year, month, day = match.groups()
    return f"{month}-{day}-{year}"


def study_folder_name(series: dict) -> str:
    """Return the study folder name the retriever would write for a getSeries record."""
    parts = [
        format_study_date(series.get("StudyDate")),
        str(series.get("StudyID") or ""),
        clean_description(series.get("StudyDesc") or series.get("StudyDescription")),
        str(series.get("StudyInstanceUID", ""))[-SUFFIX_CHARS:],
    ]
    return "-".join(part for part in parts if part and part != "null")


def series_folder_name(series: dict) -> str:
    """Return the series folder name the retriever would write for a getSeries record."""
    parts = [
        format_series_number(series.get("SeriesNumber")),
        clean_description(series.get("SeriesDescription")),
        str(series.get("SeriesInstanceUID", ""))[-SUFFIX_CHARS:],
    ]
    return "-".join(part for part in parts if part and part != "null")


def parse_folder_hint(hint: str) -> FolderHint:
    """Split a Path.csv folder hint into the parts used for matching."""
    parts = [part for part in hint.strip().replace("\\", "/").split("/") if part]
    if len(parts) != 3:
        raise FetchError(
            f"series folder hint {hint!r} does not have the form PatientID/<study folder>/<series folder>",
            hint="Fix the case's series_hint in the manifest.",
        )
    patient_id, study_folder, series_folder = parts
    if len(study_folder) < SUFFIX_CHARS or len(series_folder) < SUFFIX_CHARS:
        raise FetchError(f"series folder hint {hint!r} has a folder name shorter than its UID suffix")
    number, _, rest = series_folder.partition("-")
    description = rest[: -(SUFFIX_CHARS + 1)] if len(rest) > SUFFIX_CHARS else ""
    return FolderHint(
        patient_id=patient_id,
        study_folder=study_folder,
        series_folder=series_folder,
        study_suffix=study_folder[-SUFFIX_CHARS:],
        series_suffix=series_folder[-SUFFIX_CHARS:],
        series_number=number,
        series_description=description,
    )


def match_series(hint: FolderHint, series_list: list[dict]) -> list[dict]:
    """Return the getSeries records that the folder hint names (normally exactly one).

    Keeps the records whose UIDs end with both suffixes and whose
    SeriesNumber matches, then those whose cleaned description matches. If
    several remain, the StudyDate prefix of the study folder decides.
    """
    candidates = [
        series
        for series in series_list
        if str(series.get("SeriesInstanceUID", "")).endswith(hint.series_suffix)
        and str(series.get("StudyInstanceUID", "")).endswith(hint.study_suffix)
        and format_series_number(series.get("SeriesNumber")) == hint.series_number
    ]
    candidates = [s for s in candidates if clean_description(s.get("SeriesDescription")) == hint.series_description]
    if len(candidates) > 1:
        dated = [s for s in candidates if hint.study_folder.startswith(format_study_date(s.get("StudyDate")) or "\0")]
        candidates = dated or candidates
    return candidates


def _study_id_of(metadata: dict | None) -> dict:
    study_id = (metadata or {}).get("StudyID")
    return {"StudyID": study_id} if study_id else {}


def describe_candidates(series_list: list[dict]) -> str:
    """Return one line per series for an error message: number, UID, suffixes and image count."""
    lines = []
    for series in sorted(series_list, key=lambda s: format_series_number(s.get("SeriesNumber"))):
        uid = str(series.get("SeriesInstanceUID", ""))
        study_uid = str(series.get("StudyInstanceUID", ""))
        lines.append(
            f"  SeriesNumber {format_series_number(series.get('SeriesNumber')) or '?'}, "
            f"SeriesInstanceUID {uid} (suffix {uid[-SUFFIX_CHARS:]!r}, study suffix {study_uid[-SUFFIX_CHARS:]!r}), "
            f"ImageCount {series.get('ImageCount', '?')}"
        )
    return "\n".join(lines) if lines else "  (the patient has no series)"


def resolve_hint(
    hint_text: str,
    series_list: list[dict],
    *,
    case_id: str | None = None,
    study_ids: Callable[[list[str]], dict[str, dict]] | None = None,
) -> dict:
    """Return the single getSeries record a folder hint names, or raise FetchError listing the candidates.

    When several series match, ``study_ids`` (getSeriesMetadata, which adds
    StudyID) is called with their UIDs, and the series whose full study
    folder name equals the hint's is kept.
    """
    hint = parse_folder_hint(hint_text)
    matches = match_series(hint, series_list)
    if len(matches) > 1 and study_ids is not None:
        metadata = study_ids([str(series["SeriesInstanceUID"]) for series in matches])
        with_ids = [{**series, **_study_id_of(metadata.get(str(series["SeriesInstanceUID"])))} for series in matches]
        exact = [series for series in with_ids if study_folder_name(series) == hint.study_folder]
        matches = exact or matches
    if len(matches) == 1:
        return matches[0]
    problem = "no series matches" if not matches else f"{len(matches)} series match"
    listed = matches or series_list
    raise FetchError(
        f"{problem} the folder hint {hint_text!r} (series suffix {hint.series_suffix!r}, "
        f"study suffix {hint.study_suffix!r}, SeriesNumber {hint.series_number!r}); "
        f"{'matching' if matches else 'available'} series:\n{describe_candidates(listed)}\n",
        case_id=case_id,
        hint="Pick the right SeriesInstanceUID and write it into the lock file, or fix the hint in the manifest.",
    )
