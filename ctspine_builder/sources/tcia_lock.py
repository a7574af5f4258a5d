"""Fetch stage: resolve every TCIA case's folder hint to one series and build the lock file."""
from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from ctspine_builder.errors import CtspineError, FetchError
from ctspine_builder.licenses import check_tcia_license
from ctspine_builder.manifest.lock import Lock, LockedSeries
from ctspine_builder.manifest.model import CaseRecord, Manifest
from ctspine_builder.sources.nbia_client import NbiaClient
from ctspine_builder.sources.tcia_naming import resolve_hint

logger = logging.getLogger(__name__)


@dataclass
class LockResult:
    """The lock built so far and the error of every case that could not be resolved."""

    lock: Lock
    errors: dict[str, CtspineError] = field(default_factory=dict)


def tcia_cases(manifest: Manifest, case_ids: list[str] | None = None) -> list[CaseRecord]:
    """Return the manifest's cases whose image comes from a ``tcia`` source, optionally only ``case_ids``."""
    wanted = set(case_ids) if case_ids else None
    if wanted:
        unknown = sorted(wanted - {case.case_id for case in manifest.cases})
        if unknown:
            raise FetchError(f"case ids not in the manifest: {', '.join(unknown)}")
    return [
        case
        for case in manifest.cases
        if manifest.sources[case.image.source].kind == "tcia" and (wanted is None or case.case_id in wanted)
    ]


def lock_case(manifest: Manifest, client: NbiaClient, case: CaseRecord) -> LockedSeries:
    """Resolve one case's folder hint and return its lock entry."""
    source = manifest.sources[case.image.source]
    collection = source.options.get("collection") or source.locator
    if not case.series_hint:
        raise FetchError("case has no series_hint to resolve", case_id=case.case_id,
                         hint="Add the NBIA Data Retriever folder (PatientID/study/series) to the manifest.")
    patient_id = case.series_hint.split("/", 1)[0]
    series = resolve_hint(case.series_hint, client.get_series(collection, patient_id), case_id=case.case_id,
                          study_ids=client.get_series_metadata)
    try:
        check_tcia_license(source.id, source.license, series.get("LicenseName"), series.get("LicenseURI"))
    except FetchError as error:
        raise FetchError(error.message, case_id=case.case_id, hint=error.hint) from None
    uid = str(series["SeriesInstanceUID"])
    return LockedSeries(
        case_id=case.case_id,
        collection=collection,
        patient_id=patient_id,
        series_instance_uid=uid,
        study_instance_uid=str(series.get("StudyInstanceUID", "")),
        image_count=int(series.get("ImageCount") or 0),
        file_size=int(series.get("FileSize") or 0),
        series_md5=client.get_md5_hierarchy(uid),
        license_name=str(series.get("LicenseName", "")),
        license_uri=str(series.get("LicenseURI", "")),
    )


def build_lock(
    manifest: Manifest,
    client: NbiaClient,
    *,
    case_ids: list[str] | None = None,
    concurrency: int = 2,
    previous: Lock | None = None,
) -> LockResult:
    """Resolve the TCIA cases with ``concurrency`` parallel requests and return the lock and per-case errors.

    Entries of ``previous`` for cases not resolved in this run are kept, so
    locking a few cases with ``case_ids`` updates an existing lock.
    """
    lock = Lock(manifest.dataset.name, manifest.dataset.version)
    if previous is not None:
        lock.series.update(previous.series)
    result = LockResult(lock)
    cases = tcia_cases(manifest, case_ids)

    def resolve(case: CaseRecord) -> tuple[CaseRecord, LockedSeries | None, CtspineError | None]:
        try:
            return case, lock_case(manifest, client, case), None
        except CtspineError as error:
            return case, None, error

    with ThreadPoolExecutor(max_workers=max(1, concurrency)) as pool:
        for case, entry, error in pool.map(resolve, cases):
            if error is not None:
                # Returned in result.errors for the caller to report; logged
                # at info level so that the CLI does not print it twice.
                logger.info("%s", error.format())
                result.errors[case.case_id] = error
                lock.series.pop(case.case_id, None)
            else:
                lock.series[case.case_id] = entry
    return result
