"""Fetch stage: the interface every source kind implements, and its registry.

The build asks a source for each case's image and mask. Local kinds return
paths in place; network kinds download into the cache first. Either way the
caller receives a `FetchedImage` or a mask path and never needs to know how
the file arrived.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Protocol

from ctspine_builder.errors import ManifestError
from ctspine_builder.manifest.model import CaseRecord, Manifest, SourceRecord

GeometryMode = Literal["strict", "simpleitk"]


@dataclass
class BuildContext:
    """Settings every source may need during one build."""

    manifest: Manifest
    work_dir: Path
    cache_dir: Path | None = None
    options: dict = field(default_factory=dict)


@dataclass
class FetchedImage:
    """A case's image as delivered by its source, ready for conversion.

    ``kind`` is ``dicom`` (``path`` is a folder holding the series) or
    ``nifti`` (``path`` is a .nii or .nii.gz file). ``series_uid`` selects
    one series when the folder holds several. ``geometry`` is the conversion
    mode that matches the grid of the released masks. ``provenance`` holds
    licence and origin facts for the dataset card; it must not hold DICOM
    identifiers other than the case id.
    """

    case_id: str
    kind: Literal["dicom", "nifti"]
    path: Path
    series_uid: str | None = None
    geometry: GeometryMode = "strict"
    provenance: dict = field(default_factory=dict)


@dataclass(frozen=True)
class SourcePlan:
    """What fetching one case file would cost, for `ctspine build --dry-run`.

    ``download_bytes`` is what would cross the network (0 for local files or
    a warm cache); ``disk_bytes`` estimates the space the fetched and
    converted files need.
    """

    description: str
    download_bytes: int = 0
    disk_bytes: int = 0


class Source(Protocol):
    """What the build calls on a source."""

    record: SourceRecord

    def fetch_image(self, case: CaseRecord, context: BuildContext) -> FetchedImage:
        """Return the case's image, fetching it first if needed."""
        ...

    def fetch_mask(self, case: CaseRecord, context: BuildContext) -> Path:
        """Return the path of the case's mask NIfTI, fetching it first if needed."""
        ...

    # Optional methods, looked up with getattr by the build:
    #   plan(case, context) -> SourcePlan, for --dry-run; contacts metadata
    #     endpoints at most, never downloads image data.
    #   input_fingerprint(case, context, role) -> str, role "image" or "mask":
    #     a digest of the case's input content, so that a re-run rebuilds a
    #     case whose local input files changed. Sources without it are
    #     fingerprinted by their manifest records alone.


SourceFactory = Callable[[SourceRecord, BuildContext], Source]

# Source kinds by name. Modules in this package add themselves with
# `register_source_kind`; `ctspine_builder.sources.registry` imports them all.
_SOURCE_KINDS: dict[str, SourceFactory] = {}


def register_source_kind(kind: str) -> Callable[[SourceFactory], SourceFactory]:
    """Register a factory for a source kind, as a class decorator."""

    def decorator(factory: SourceFactory) -> SourceFactory:
        _SOURCE_KINDS[kind] = factory
        return factory

    return decorator


def source_kinds() -> list[str]:
    """Return the registered source kind names."""
    from ctspine_builder.sources import registry  # noqa: F401  (imports every kind)

    return sorted(_SOURCE_KINDS)


def open_source(record: SourceRecord, context: BuildContext) -> Source:
    """Create the source object for a manifest source record."""
    source_kinds()
    try:
        factory = _SOURCE_KINDS[record.kind]
    except KeyError:
        raise ManifestError(
            f"source {record.id!r} has unknown kind {record.kind!r}",
            hint=f"Use one of: {', '.join(sorted(_SOURCE_KINDS))}.",
        ) from None
    return factory(record, context)
