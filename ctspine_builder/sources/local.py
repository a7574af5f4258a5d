"""Fetch stage: local folders of DICOM series and NIfTI files as sources.

``local-dicom``: the source locator is a folder, and a case's image locator
is a sub-folder of it. That sub-folder may be a series folder, a PatientID
folder in the NBIA Data Retriever's PatientID/study/series layout, or any
other nesting. With an empty locator the case id names the sub-folder. The converter groups the
files it finds by SeriesInstanceUID.

``local-nifti``: the source locator is a folder and a case's locator is a
file path relative to it; the source serves images, masks or both.
"""
from __future__ import annotations

import hashlib
import logging
from pathlib import Path

from ctspine_builder.errors import FetchError
from ctspine_builder.fileio import sha256_file
from ctspine_builder.manifest.model import CaseRecord, SourceRecord
from ctspine_builder.sources.base import (
    BuildContext,
    FetchedImage,
    SourcePlan,
    register_source_kind,
)

logger = logging.getLogger(__name__)

GEOMETRY_MODES = ("strict", "simpleitk")


def _source_root(record: SourceRecord, context: BuildContext) -> Path:
    """Return the source's folder, resolved against the manifest's folder."""
    if not record.locator:
        raise FetchError(
            f"source {record.id!r} of kind {record.kind!r} has no locator",
            hint="Set the source's locator to the folder that holds its files.",
        )
    return context.manifest.resolve_path(record.locator)


def _tree_digest(path: Path) -> str:
    """Return a SHA-256 over the relative names and contents of a file or folder."""
    digest = hashlib.sha256()
    if path.is_file():
        digest.update(sha256_file(path).encode("ascii"))
        return digest.hexdigest()
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        digest.update(file.relative_to(path).as_posix().encode("utf-8"))
        digest.update(b"\0")
        digest.update(sha256_file(file).encode("ascii"))
        digest.update(b"\n")
    return digest.hexdigest()


def _tree_bytes(path: Path) -> int:
    """Return the total size of a file or of every file under a folder."""
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


class _LocalSource:
    """Shared behaviour of the local kinds: locate files, plan and fingerprint."""

    record: SourceRecord

    def __init__(self, record: SourceRecord, context: BuildContext) -> None:
        self.record = record
        self.root = _source_root(record, context)

    def _locate(self, case: CaseRecord, role: str) -> Path:
        raise NotImplementedError

    def _missing(self, case: CaseRecord, path: Path, description: str) -> FetchError:
        return FetchError(
            f"{description} not found in local source {self.record.id!r}",
            case_id=case.case_id,
            path=path,
            hint=f"Place the {description} there, or fix the case's locator or the source's folder "
            f"({self.root}) in the manifest.",
        )

    def plan(self, case: CaseRecord, context: BuildContext) -> SourcePlan:
        """Describe the case's files in this source; nothing is downloaded.

        The disk estimate is the input size, as the converted NIfTI is
        written beside nothing else (no cache copy for local files).
        """
        roles = [
            role
            for role, ref in (("image", case.image), ("mask", case.mask))
            if ref is not None and ref.source == self.record.id
        ]
        paths = [self._locate(case, role) for role in roles]
        size = sum(_tree_bytes(path) for path in paths)
        description = ", ".join(f"{role} {path}" for role, path in zip(roles, paths))
        return SourcePlan(description=f"local {description}", download_bytes=0, disk_bytes=size)

    def input_fingerprint(self, case: CaseRecord, context: BuildContext, role: str) -> str:
        """Return a digest of the case's input files (names and contents)."""
        return _tree_digest(self._locate(case, role))


@register_source_kind("local-dicom")
class LocalDicomSource(_LocalSource):
    """DICOM series in a local folder, in any folder layout."""

    def __init__(self, record: SourceRecord, context: BuildContext) -> None:
        super().__init__(record, context)
        self.geometry = record.options.get("geometry", "strict")
        if self.geometry not in GEOMETRY_MODES:
            raise FetchError(
                f"source {record.id!r} has invalid geometry option {self.geometry!r}",
                hint=f"Use one of: {', '.join(GEOMETRY_MODES)}.",
            )

    def _locate(self, case: CaseRecord, role: str) -> Path:
        if role != "image":
            raise FetchError(
                f"local-dicom source {self.record.id!r} provides images only, not masks",
                case_id=case.case_id,
                hint="Point the case's mask at a local-nifti source.",
            )
        locator = case.image.locator or case.case_id
        path = self.root / locator
        if path.is_dir():
            return path
        # The NBIA Data Retriever folder of the authors' series, when the
        # locator itself is absent.
        if case.series_hint and (self.root / case.series_hint).is_dir():
            return self.root / case.series_hint
        raise self._missing(case, path, "DICOM folder")

    def fetch_image(self, case: CaseRecord, context: BuildContext) -> FetchedImage:
        """Return the case's DICOM folder; the converter finds the series in it."""
        path = self._locate(case, "image")
        if not any(p.is_file() for p in path.rglob("*")):
            raise FetchError(
                "DICOM folder is empty",
                case_id=case.case_id,
                path=path,
                hint="Copy the series' DICOM files into it.",
            )
        logger.debug("case %s: local DICOM folder %s", case.case_id, path)
        return FetchedImage(
            case_id=case.case_id,
            kind="dicom",
            path=path,
            series_uid=self.record.options.get("series_uid"),
            geometry=self.geometry,
            provenance={"source": self.record.id, "kind": self.record.kind},
        )

    def fetch_mask(self, case: CaseRecord, context: BuildContext) -> Path:
        """Raise FetchError: DICOM folders hold no masks."""
        return self._locate(case, "mask")


@register_source_kind("local-nifti")
class LocalNiftiSource(_LocalSource):
    """NIfTI images or masks as files in a local folder."""

    def _locate(self, case: CaseRecord, role: str) -> Path:
        ref = case.image if role == "image" else case.mask
        if ref is None or not ref.locator:
            raise FetchError(
                f"case has no {role} locator for local-nifti source {self.record.id!r}",
                case_id=case.case_id,
                hint=f"Set the case's {role} locator to a file path relative to {self.root}.",
            )
        path = self.root / ref.locator
        if not path.is_file():
            raise self._missing(case, path, f"{role} NIfTI file")
        return path

    def fetch_image(self, case: CaseRecord, context: BuildContext) -> FetchedImage:
        """Return the case's NIfTI image file in place."""
        path = self._locate(case, "image")
        return FetchedImage(
            case_id=case.case_id,
            kind="nifti",
            path=path,
            provenance={"source": self.record.id, "kind": self.record.kind},
        )

    def fetch_mask(self, case: CaseRecord, context: BuildContext) -> Path:
        """Return the case's mask NIfTI file in place."""
        return self._locate(case, "mask")
