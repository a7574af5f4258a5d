"""Fetch stage: a client for TCIA's NBIA REST API v4 and checks of the series zips it sends.

The client allows for these habits of the NBIA v4 REST server. A query with
no match may return HTTP 200 with an empty body instead of ``[]``. JSON
leaves out fields whose value is null. getImage streams a zip with no
Content-Length, and a failure on the server mid-stream can still end in a
well-formed but short zip with HTTP 200, so every file's MD5 and the file
count are checked. md5hashes.csv rows come in no fixed order. Any parameter
that getImage does not know gets HTTP 400.
"""
from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlencode, urljoin

from ctspine_builder.errors import FetchError
from ctspine_builder.fetch.archive import extract_zip
from ctspine_builder.fetch.download import download_file
from ctspine_builder.fetch.http import HttpClient
from ctspine_builder.fileio import HASH_CHUNK_BYTES

logger = logging.getLogger(__name__)

DEFAULT_NBIA_URL = "https://nbia.cancerimagingarchive.net/nbia-api/services/v4/"
NBIA_URL_ENV = "CTSPINE_NBIA_URL"

LICENSE_ENTRY = "LICENSE"
MD5_ENTRY = "md5hashes.csv"

# Older API versions spelled some fields with spaces; map them to the v4 names.
_SPACED_FIELDS = {
    "Series Instance UID": "SeriesInstanceUID",
    "Series UID": "SeriesInstanceUID",
    "Study Instance UID": "StudyInstanceUID",
    "Study UID": "StudyInstanceUID",
    "Study ID": "StudyID",
    "Series Number": "SeriesNumber",
    "Series Description": "SeriesDescription",
    "Study Date": "StudyDate",
    "Study Description": "StudyDesc",
    "Number of Images": "ImageCount",
    "File Size": "FileSize",
    "License Name": "LicenseName",
    "License URL": "LicenseURI",
}
_MD5_HEX = re.compile(r"^[0-9a-f]{32}$")


def nbia_base_url(option: str | None = None) -> str:
    """Return the NBIA API base URL: the option, else $CTSPINE_NBIA_URL, else TCIA's public v4 API."""
    url = option or os.environ.get(NBIA_URL_ENV) or DEFAULT_NBIA_URL
    return url if url.endswith("/") else url + "/"


def normalize_record(record: dict) -> dict:
    """Return a getSeries or getSeriesMetadata record with v4 field names."""
    return {_SPACED_FIELDS.get(key, key): value for key, value in record.items()}


def series_md5_of(file_md5s: list[str]) -> str:
    """Return the series MD5 as getMD5Hierarchy defines it: MD5 of the sorted, concatenated per-file MD5s."""
    joined = "".join(sorted(value.lower() for value in file_md5s))
    return hashlib.md5(joined.encode("ascii"), usedforsecurity=False).hexdigest()


class NbiaClient:
    """Calls to the NBIA v4 endpoints that the build uses."""

    def __init__(self, base_url: str, http: HttpClient) -> None:
        self.base_url = nbia_base_url(base_url)
        self.http = http

    def _url(self, endpoint: str) -> str:
        return urljoin(self.base_url, endpoint)

    def _json_list(self, response, endpoint: str) -> list[dict]:
        if response.status_code != 200:
            raise FetchError(
                f"NBIA {endpoint} returned HTTP {response.status_code}",
                hint="Check --nbia-url and the collection and patient names in the manifest.",
            )
        text = response.text.strip()
        if not text:
            return []  # NBIA's way of saying "no match"
        try:
            data = json.loads(text)
        except json.JSONDecodeError:
            raise FetchError(f"NBIA {endpoint} returned a body that is not JSON",
                             hint="Check that --nbia-url points at the NBIA v4 API.") from None
        if not isinstance(data, list):
            raise FetchError(f"NBIA {endpoint} returned JSON that is not a list")
        return [normalize_record(item) for item in data if isinstance(item, dict)]

    def get_series(self, collection: str, patient_id: str) -> list[dict]:
        """List a patient's series in a collection (an empty list when there is none)."""
        params = {"Collection": collection, "PatientID": patient_id, "format": "json"}
        return self._json_list(self.http.get(self._url("getSeries"), params=params), "getSeries")

    def get_series_metadata(self, series_uids: list[str]) -> dict[str, dict]:
        """Return getSeriesMetadata records (which add StudyID) by SeriesInstanceUID."""
        response = self.http.post(self._url("getSeriesMetadata"), data={"list": ",".join(series_uids)})
        records = self._json_list(response, "getSeriesMetadata")
        return {str(record.get("SeriesInstanceUID")): record for record in records}

    def get_md5_hierarchy(self, series_uid: str) -> str:
        """Return the series MD5 that getMD5Hierarchy reports for one series."""
        response = self.http.post(self._url("getMD5Hierarchy"), data={"SeriesInstanceUID": series_uid})
        value = response.text.strip().lower()
        if response.status_code != 200 or not _MD5_HEX.match(value):
            raise FetchError(
                f"NBIA getMD5Hierarchy returned HTTP {response.status_code} without a series MD5 "
                f"for series {series_uid}",
                hint="Check that the series is still public; run the command again later.",
            )
        return value

    def image_url(self, series_uid: str) -> str:
        """Return the getImage URL for a series zip with md5hashes.csv."""
        return self._url("getImage") + "?" + urlencode({"SeriesInstanceUID": series_uid, "IncludeMD5": "Yes"})

    def download_series_zip(self, series_uid: str, dest: Path, *, progress: bool, description: str) -> Path:
        """Stream a series zip to ``dest``; getImage does not resume, so a failure starts over."""
        return download_file(self.http, self.image_url(series_uid), dest, resume=False, progress=progress,
                             description=description)


@dataclass(frozen=True)
class SeriesArchive:
    """A verified, extracted series: DICOM folder, LICENSE text and series MD5."""

    dicom_dir: Path
    file_count: int
    license_text: str
    series_md5: str


def verify_series_zip(zip_path: Path, target_dir: Path, image_count: int | None, *, case_id: str) -> SeriesArchive:
    """Extract a getImage zip into ``target_dir`` and check it against md5hashes.csv and ImageCount.

    DICOM files go to ``target_dir/dicom``, LICENSE and md5hashes.csv beside
    it. Raises FetchError, naming the case and every problem found, when an
    entry is unsafe, a file is missing from md5hashes.csv or has another MD5,
    a listed file is missing, or the DICOM file count differs from
    ``image_count``.
    """
    staging = target_dir / "zip"
    extract_zip(zip_path, staging)
    md5_path = staging / MD5_ENTRY
    if not md5_path.is_file():
        raise FetchError("series zip has no md5hashes.csv", case_id=case_id, path=zip_path,
                         hint="The server sent an incomplete zip; run the command again.")
    expected = _read_md5_csv(md5_path, case_id)
    dicom_dir = target_dir / "dicom"
    dicom_dir.mkdir(parents=True, exist_ok=True)

    problems: list[str] = []
    actual: dict[str, str] = {}
    for path in sorted(staging.rglob("*")):
        name = path.relative_to(staging).as_posix()
        if not path.is_file() or name in (MD5_ENTRY, LICENSE_ENTRY):
            continue
        actual[name] = _md5_file(path)
        if expected.get(name) is None:
            problems.append(f"{name} is not listed in md5hashes.csv")
        elif actual[name] != expected[name]:
            problems.append(f"{name} has MD5 {actual[name]}, md5hashes.csv lists {expected[name]}")
        os.replace(path, dicom_dir / name.replace("/", "_"))
    missing = sorted(set(expected) - set(actual))
    if missing:
        problems.append(f"{len(missing)} files listed in md5hashes.csv are missing from the zip")
    if image_count is not None and len(actual) != image_count:
        problems.append(f"the zip holds {len(actual)} DICOM files but getSeries reports ImageCount {image_count}")
    if problems:
        raise FetchError(
            "series zip failed its checks: " + "; ".join(problems[:5])
            + (f"; and {len(problems) - 5} more" if len(problems) > 5 else ""),
            case_id=case_id,
            hint="Nothing was kept. Run the command again; the server may have stopped while streaming.",
        )

    license_path = staging / LICENSE_ENTRY
    license_text = license_path.read_text(encoding="utf-8", errors="replace") if license_path.is_file() else ""
    for name in (LICENSE_ENTRY, MD5_ENTRY):
        if (staging / name).is_file():
            os.replace(staging / name, target_dir / name)
    return SeriesArchive(dicom_dir, len(actual), license_text, series_md5_of(list(actual.values())))


def _read_md5_csv(path: Path, case_id: str) -> dict[str, str]:
    """Read md5hashes.csv (columns Filename, MD5Hash; rows in any order) into name -> MD5."""
    text = path.read_text(encoding="utf-8-sig", errors="replace")
    rows = csv.DictReader(io.StringIO(text))
    columns = {name.strip().lower(): name for name in rows.fieldnames or []}
    if "filename" not in columns or "md5hash" not in columns:
        raise FetchError("md5hashes.csv lacks the Filename and MD5Hash columns", case_id=case_id, path=path)
    result = {}
    for row in rows:
        name = (row.get(columns["filename"]) or "").strip().replace("\\", "/")
        if name:
            result[name] = (row.get(columns["md5hash"]) or "").strip().lower()
    return result


def _md5_file(path: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(HASH_CHUNK_BYTES), b""):
            digest.update(chunk)
    return digest.hexdigest()
