"""Manifest stage: the lock file that pins each DICOM case to one NBIA series.

`ctspine lock` resolves every case's folder hint against the NBIA API once
and writes the result here, so that later builds fetch exactly the same
series and can check the series MD5 without resolving names again. The file
is JSON with sorted keys and no timestamps, so the same inputs give the same
bytes.
"""
from __future__ import annotations

import json
import logging
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ctspine_builder.errors import ManifestError
from ctspine_builder.fileio import write_bytes_atomic

logger = logging.getLogger(__name__)

LOCK_FORMAT_VERSION = 1
LOCK_FILE_NAME = "lock.json"

_MD5_HEX = re.compile(r"^[0-9a-f]{32}$")
_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")


@dataclass(frozen=True)
class LockedSeries:
    """One case's pinned NBIA series, as getSeries and getMD5Hierarchy described it at lock time.

    ``series_md5`` is the MD5 of the series' per-image MD5 hex strings,
    sorted and concatenated, as NBIA's getMD5Hierarchy defines it.
    ``file_size`` is in bytes.
    """

    case_id: str
    collection: str
    patient_id: str
    series_instance_uid: str
    study_instance_uid: str
    image_count: int
    file_size: int
    series_md5: str
    license_name: str = ""
    license_uri: str = ""


@dataclass
class Lock:
    """A lock file: which manifest it was made for, and the pinned series by case id."""

    manifest_name: str
    manifest_version: str
    series: dict[str, LockedSeries] = field(default_factory=dict)
    format_version: int = LOCK_FORMAT_VERSION

    def get(self, case_id: str) -> LockedSeries | None:
        """Return the case's pinned series, or None when the lock has no entry for it."""
        return self.series.get(case_id)

    def to_json(self) -> str:
        """Return the lock as deterministic JSON text (sorted keys, trailing newline)."""
        document = {
            "format_version": self.format_version,
            "manifest": {"name": self.manifest_name, "version": self.manifest_version},
            "cases": {case_id: _entry_dict(self.series[case_id]) for case_id in sorted(self.series)},
        }
        return json.dumps(document, indent=2, sort_keys=True, ensure_ascii=True) + "\n"


def _entry_dict(entry: LockedSeries) -> dict:
    values = asdict(entry)
    del values["case_id"]  # the key of the entry already is the case id
    return values


def save_lock(lock: Lock, path: str | Path) -> Path:
    """Write the lock file atomically and return its path."""
    path = Path(path)
    write_bytes_atomic(path, lock.to_json().encode("ascii"))
    logger.info("wrote lock file with %d series to %s", len(lock.series), path)
    return path


def load_lock(path: str | Path) -> Lock:
    """Read and validate a lock file; raise ManifestError naming the file and the bad entry."""
    path = Path(path)
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ManifestError("lock file not found", path=path, hint="Run `ctspine lock` to create it.") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ManifestError(f"lock file is not valid JSON: {error}", path=path,
                            hint="Run `ctspine lock` again to rewrite it.") from None
    if not isinstance(document, dict) or document.get("format_version") != LOCK_FORMAT_VERSION:
        raise ManifestError(
            f"lock file has format_version {document.get('format_version') if isinstance(document, dict) else None!r}, "
            f"expected {LOCK_FORMAT_VERSION}",
            path=path,
            hint="Run `ctspine lock` with this version of ctspine_builder to rewrite it.",
        )
    manifest = document.get("manifest") or {}
    cases = document.get("cases")
    if not isinstance(cases, dict):
        raise ManifestError("lock file has no 'cases' object", path=path)
    series = {case_id: _parse_entry(path, case_id, values) for case_id, values in cases.items()}
    return Lock(str(manifest.get("name", "")), str(manifest.get("version", "")), series)


def _parse_entry(path: Path, case_id: str, values: object) -> LockedSeries:
    if not isinstance(values, dict):
        raise ManifestError("lock entry is not an object", case_id=case_id, path=path)
    try:
        entry = LockedSeries(case_id=case_id, **values)
    except TypeError as error:
        raise ManifestError(f"lock entry has missing or unknown fields: {error}", case_id=case_id, path=path,
                            hint="Run `ctspine lock` again to rewrite it.") from None
    problems = []
    for name in ("series_instance_uid", "study_instance_uid"):
        if not _UID.match(str(getattr(entry, name))):
            problems.append(f"{name} is not a DICOM UID")
    if not _MD5_HEX.match(str(entry.series_md5)):
        problems.append("series_md5 is not 32 lowercase hex digits")
    for name in ("image_count", "file_size"):
        value = getattr(entry, name)
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            problems.append(f"{name} is not a non-negative integer")
    if entry.image_count == 0:
        problems.append("image_count is 0")
    if problems:
        raise ManifestError(f"invalid lock entry: {'; '.join(problems)}", case_id=case_id, path=path)
    return entry


def default_lock_path(manifest_root: Path) -> Path:
    """Return where builds look for the lock file: ``lock.json`` beside the manifest."""
    return Path(manifest_root) / LOCK_FILE_NAME


def find_lock(manifest_root: Path, option: str | Path | None = None) -> Lock | None:
    """Load the lock given as an option, else the manifest folder's lock.json, else return None."""
    if option:
        return load_lock(option)
    candidate = default_lock_path(manifest_root)
    return load_lock(candidate) if candidate.is_file() else None
