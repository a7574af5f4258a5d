"""Manifest records: what to build, from which sources, under which licences.

These dataclasses are the in-memory form of manifest format v1 (see
docs/manifest.md). Loading and validation live in `loader.py`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

FORMAT_VERSION = 1

# Split names as the CTSpine1K authors' data_split.txt spells them.
SPLITS = ("trainset", "test_public", "test_private")


@dataclass(frozen=True)
class DatasetInfo:
    """Dataset-level fields: name, semantic version and how to cite it."""

    name: str
    version: str
    citation: str
    pretty_name: str = ""
    description: str = ""


@dataclass(frozen=True)
class SourceRecord:
    """One source of images or masks and the terms it is used under.

    ``kind`` selects the implementation in `ctspine_builder.sources`
    (for example ``local-dicom`` or ``local-nifti``). ``locator`` is
    kind-specific: a folder or file path for local kinds (relative paths are
    resolved against the manifest's folder), a base URL or collection name
    for network kinds. ``options`` carries further kind-specific settings.
    """

    id: str
    kind: str
    license: str
    citation: str = ""
    doi: str = ""
    locator: str = ""
    license_note: str = ""
    options: dict = field(default_factory=dict)


@dataclass(frozen=True)
class FileRef:
    """Where one case file comes from: a source id and a locator within it."""

    source: str
    locator: str


@dataclass(frozen=True)
class CaseRecord:
    """One case: its id, subset, split, image and optional mask.

    ``image_sha256`` and ``mask_sha256`` pin the SHA-256 of the produced
    NIfTI content after gzip decompression, so a re-compressed copy still
    matches. ``series_hint`` is the NBIA Data Retriever folder
    (PatientID/study/series) that names the authors' series for DICOM cases.
    """

    case_id: str
    subset: str
    split: str
    image: FileRef
    mask: FileRef | None = None
    image_sha256: str | None = None
    mask_sha256: str | None = None
    series_hint: str | None = None


@dataclass
class Manifest:
    """A loaded manifest: dataset info, sources by id, and cases in order."""

    dataset: DatasetInfo
    sources: dict[str, SourceRecord]
    cases: list[CaseRecord]
    root: Path
    format_version: int = FORMAT_VERSION

    def case(self, case_id: str) -> CaseRecord:
        """Return the case with this id, or raise KeyError."""
        for record in self.cases:
            if record.case_id == case_id:
                return record
        raise KeyError(case_id)

    def resolve_path(self, locator: str) -> Path:
        """Resolve a local locator against the manifest's folder."""
        path = Path(locator).expanduser()
        return path if path.is_absolute() else (self.root / path)
