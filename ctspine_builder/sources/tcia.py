"""Fetch stage: the ``tcia`` source kind, DICOM series from TCIA's NBIA v4 API.

A case's series comes from the lock file when one is present, else from its
NBIA Data Retriever folder hint, resolved against getSeries. Each series is
downloaded once as a getImage zip, checked file by file against its MD5s,
its ImageCount and its series MD5, and kept in the cache under that series
MD5, so a rebuild does not download it again.
"""
from __future__ import annotations

import logging
import shutil
import threading
from pathlib import Path

from ctspine_builder.dicom.position import POSITION_CHOICES, classify_series_folder
from ctspine_builder.errors import FetchError
from ctspine_builder.fetch.cache import Cache
from ctspine_builder.fetch.http import HttpClient
from ctspine_builder.licenses import check_tcia_license
from ctspine_builder.manifest.lock import Lock, LockedSeries, find_lock
from ctspine_builder.manifest.model import CaseRecord, SourceRecord
from ctspine_builder.sources.base import BuildContext, FetchedImage, SourcePlan, register_source_kind
from ctspine_builder.sources.nbia_client import NbiaClient, SeriesArchive, verify_series_zip
from ctspine_builder.sources.tcia_naming import parse_folder_hint, resolve_hint

logger = logging.getLogger(__name__)

CACHE_ALGORITHM = "nbia-series-md5"
DEFAULT_CONCURRENCY = 2

# A zip that fails its checks is downloaded again this many times in all,
# because NBIA can end a failed stream with a well-formed short zip.
ZIP_ATTEMPTS = 2

# The build opens a new source object for every case, so the download limit
# is kept per process, keyed by NBIA base URL and limit.
# NOTE: with `--jobs N` each worker process has its own limit, so up to
# N x concurrency getImage requests can run at once.
_DOWNLOAD_SLOTS: dict[tuple[str, int], threading.BoundedSemaphore] = {}
_DOWNLOAD_SLOTS_GUARD = threading.Lock()


def download_slots(base_url: str, concurrency: int) -> threading.BoundedSemaphore:
    """Return the process-wide semaphore that limits parallel getImage downloads from one server."""
    with _DOWNLOAD_SLOTS_GUARD:
        key = (base_url, concurrency)
        if key not in _DOWNLOAD_SLOTS:
            _DOWNLOAD_SLOTS[key] = threading.BoundedSemaphore(concurrency)
        return _DOWNLOAD_SLOTS[key]


def patient_id_for(case: CaseRecord) -> str:
    """Return the case's TCIA PatientID: the first part of its folder hint, else its image locator."""
    if case.series_hint:
        return parse_folder_hint(case.series_hint).patient_id
    return case.image.locator.split("/", 1)[0]


def make_http_client(context: BuildContext) -> HttpClient:
    """Return an HttpClient configured from the build options (timeout, retries, backoff)."""
    options = context.options
    return HttpClient(
        timeout=options.get("http_timeout", (10.0, 60.0)),
        retries=options.get("http_retries", 5),
        backoff_s=options.get("http_backoff_s", 1.0),
    )


@register_source_kind("tcia")
class TciaSource:
    """DICOM series of one TCIA collection; ``locator`` (or options["collection"]) names the collection."""

    def __init__(self, record: SourceRecord, context: BuildContext) -> None:
        self.record = record
        self.collection = record.options.get("collection") or record.locator
        self.client = NbiaClient(context.options.get("nbia_url"), make_http_client(context))
        self.cache = Cache(context.cache_dir)
        self.progress = bool(context.options.get("progress", True))
        self.position = context.options.get("position", "authors")
        if self.position not in POSITION_CHOICES:
            raise FetchError(f"unknown position {self.position!r}", hint=f"Use one of: {', '.join(POSITION_CHOICES)}.")
        concurrency = int(context.options.get("concurrency") or DEFAULT_CONCURRENCY)
        self._downloads = download_slots(self.client.base_url, concurrency)
        self._lock_option = context.options.get("lock")
        self._lock: Lock | None | bool = False  # False: not looked up yet
        self._license_error: FetchError | None = None
        self._guard = threading.Lock()

    def lock(self, context: BuildContext) -> Lock | None:
        """Return the lock in use: the ``lock`` option (a Lock or a path), else lock.json beside the manifest."""
        with self._guard:
            if self._lock is False:
                option = self._lock_option
                self._lock = option if isinstance(option, Lock) else find_lock(context.manifest.root, option)
            return self._lock

    def fetch_image(self, case: CaseRecord, context: BuildContext) -> FetchedImage:
        """Download (or take from the cache) the case's series and return its DICOM folder."""
        series_list, chosen, expected_md5 = self._select(case, context)
        archive = self._fetch_series(case, chosen, expected_md5)
        position = classify_series_folder(archive.dicom_dir)
        mask_applies = True
        if self.position != "authors" and position.position != self.position:
            chosen, archive, position = self._fetch_variant(case, series_list, chosen)
            mask_applies = False
        provenance = {
            "source_id": self.record.id,
            "collection": self.collection,
            "license": self.record.license,
            "license_name": chosen.get("LicenseName", ""),
            "license_uri": chosen.get("LicenseURI", ""),
            "license_text": archive.license_text,
            "series_md5": archive.series_md5,
            "image_count": archive.file_count,
            "position": position.position,
            "position_basis": position.basis,
            "position_choice": self.position,
            "mask_applies": mask_applies,
        }
        return FetchedImage(case.case_id, "dicom", archive.dicom_dir, series_uid=str(chosen["SeriesInstanceUID"]),
                            geometry="simpleitk", provenance=provenance)

    def fetch_mask(self, case: CaseRecord, context: BuildContext) -> Path:
        """Raise FetchError: TCIA collections carry images only."""
        raise FetchError(f"source {self.record.id!r} (TCIA) has no masks", case_id=case.case_id,
                         hint="Point the case's mask at a masks source in the manifest.")

    def input_fingerprint(self, case: CaseRecord, context: BuildContext, role: str) -> str:
        """Return the locked series MD5 of the case, so that a changed lock rebuilds it.

        Without a lock entry the series is resolved only when fetched, so
        the fingerprint is "unlocked" and contacts no server.
        """
        locked = (self.lock(context) or Lock("", "")).get(case.case_id)
        return f"series-md5:{locked.series_md5}" if locked is not None else "unlocked"

    def plan(self, case: CaseRecord, context: BuildContext) -> SourcePlan:
        """Describe the download without fetching image data (getSeries and getMD5Hierarchy only)."""
        _, chosen, expected_md5 = self._select(case, context)
        size = int(chosen.get("FileSize") or 0)
        cached = self.cache.get(CACHE_ALGORITHM, expected_md5) is not None
        # Estimate: the DICOM files in the cache plus a compressed NIfTI of
        # at most half their size.
        return SourcePlan(
            description=f"TCIA {self.collection}: {chosen.get('ImageCount', '?')} DICOM files"
            + (" (cached)" if cached else ""),
            download_bytes=0 if cached else size,
            disk_bytes=(0 if cached else size) + size // 2,
        )

    def _select(self, case: CaseRecord, context: BuildContext) -> tuple[list[dict], dict, str]:
        """Return the patient's series, the chosen series record and its expected series MD5."""
        if self._license_error is not None:
            raise FetchError(self._license_error.message, case_id=case.case_id, hint=self._license_error.hint)
        series_list = self.client.get_series(self.collection, patient_id_for(case))
        locked = (self.lock(context) or Lock("", "")).get(case.case_id)
        if locked is not None:
            chosen = _locked_record(case, locked, series_list)
        else:
            if not case.series_hint:
                raise FetchError("case has no series_hint and the lock file has no entry for it",
                                 case_id=case.case_id, hint="Add the folder hint to the manifest or run `ctspine lock`.")
            chosen = resolve_hint(case.series_hint, series_list, case_id=case.case_id,
                                  study_ids=self.client.get_series_metadata)
        self._check_license(case, chosen)
        uid = str(chosen["SeriesInstanceUID"])
        expected_md5 = locked.series_md5 if locked is not None else self.client.get_md5_hierarchy(uid)
        return series_list, chosen, expected_md5

    def _check_license(self, case: CaseRecord, series: dict) -> None:
        try:
            check_tcia_license(self.record.id, self.record.license, series.get("LicenseName"), series.get("LicenseURI"))
        except FetchError as error:
            self._license_error = error  # a licence mismatch stops every case of this source
            raise FetchError(error.message, case_id=case.case_id, hint=error.hint) from None

    def _fetch_series(self, case: CaseRecord, series: dict, expected_md5: str) -> SeriesArchive:
        """Return the verified series from the cache, downloading it first if needed."""
        cached = self.cache.get(CACHE_ALGORITHM, expected_md5)
        if cached is None:
            with self._downloads:
                cached = self.cache.get(CACHE_ALGORITHM, expected_md5) or self._download(case, series, expected_md5)
        else:
            logger.info("case %s: series found in the cache", case.case_id)
        return _archive_from_cache(cached, expected_md5)

    def _download(self, case: CaseRecord, series: dict, expected_md5: str) -> Path:
        uid = str(series["SeriesInstanceUID"])
        image_count = int(series["ImageCount"]) if series.get("ImageCount") is not None else None
        for attempt in range(1, ZIP_ATTEMPTS + 1):
            staging = self.cache.staging_dir()
            try:
                zip_path = self.client.download_series_zip(uid, staging / "series.zip", progress=self.progress,
                                                           description=case.case_id)
                archive = verify_series_zip(zip_path, staging / "entry", image_count, case_id=case.case_id)
                # NOTE: the series MD5 definition (MD5 of the sorted per-file MD5 hex
                # strings) comes from NBIA's server source and was only checked
                # against the stand-in, never against the live API.
                if archive.series_md5 != expected_md5:
                    raise FetchError(f"series MD5 is {archive.series_md5}, expected {expected_md5}",
                                     case_id=case.case_id,
                                     hint="The series changed on the server since the lock was made; "
                                     "run `ctspine lock` again and review the change.")
                shutil.rmtree(staging / "entry" / "zip", ignore_errors=True)
                return self.cache.add(staging / "entry", CACHE_ALGORITHM, expected_md5)
            except FetchError as error:
                if attempt == ZIP_ATTEMPTS or "series MD5" in error.message:
                    raise
                logger.warning("case %s: %s; downloading the series again", case.case_id, error.message)
            finally:
                shutil.rmtree(staging, ignore_errors=True)
        raise AssertionError("unreachable")

    def _fetch_variant(self, case: CaseRecord, series_list: list[dict], authors: dict):
        """Fetch the patient's other series until one has the requested position."""
        found = []
        for series in series_list:
            if series.get("SeriesInstanceUID") == authors.get("SeriesInstanceUID"):
                continue
            if series.get("Modality", "CT") != "CT":
                continue
            self._check_license(case, series)
            md5 = self.client.get_md5_hierarchy(str(series["SeriesInstanceUID"]))
            archive = self._fetch_series(case, series, md5)
            position = classify_series_folder(archive.dicom_dir)
            found.append(position.position or "unknown")
            if position.position == self.position:
                logger.info("case %s: using the %s series instead of the authors' choice; built without mask",
                            case.case_id, self.position)
                return series, archive, position
        raise FetchError(
            f"no {self.position} series found for the patient (other series: {', '.join(found) or 'none'})",
            case_id=case.case_id,
            hint="Build this case with --position authors, or leave it out with --cases.",
        )


def _locked_record(case: CaseRecord, locked: LockedSeries, series_list: list[dict]) -> dict:
    """Return the live getSeries record of the locked series, which must still be listed."""
    for series in series_list:
        if series.get("SeriesInstanceUID") == locked.series_instance_uid:
            return series
    raise FetchError(
        f"the locked series {locked.series_instance_uid} is no longer listed for patient {locked.patient_id}",
        case_id=case.case_id,
        hint="The collection changed on TCIA; run `ctspine lock` again and review the change.",
    )


def _archive_from_cache(entry: Path, series_md5: str) -> SeriesArchive:
    license_path = entry / "LICENSE"
    files = [path for path in (entry / "dicom").iterdir() if path.is_file()]
    return SeriesArchive(
        dicom_dir=entry / "dicom",
        file_count=len(files),
        license_text=license_path.read_text(encoding="utf-8", errors="replace") if license_path.is_file() else "",
        series_md5=series_md5,
    )
