"""Manifest stage: replace a source's locator (and kind) for one build.

The shipped manifest names public hosts, but a user often has a source
already: the TCIA COVID-19 NIfTI files in a folder, the released masks
unpacked from Google Drive. `ctspine build --source ID=[KIND:]LOCATOR`
points one source there without copying and editing the manifest.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from pathlib import Path

from ctspine_builder.errors import ManifestError
from ctspine_builder.manifest.model import Manifest, SourceRecord
from ctspine_builder.manifest.schema import KNOWN_SOURCE_KINDS


def parse_override(text: str) -> tuple[str, str | None, str]:
    """Split ``ID=[KIND:]LOCATOR`` into source id, kind (or None) and locator."""
    source_id, separator, rest = text.partition("=")
    if not separator or not source_id.strip() or not rest.strip():
        raise ManifestError(
            f"invalid source override {text!r}",
            hint="Write it as ID=LOCATOR or ID=KIND:LOCATOR, e.g. tcia-covid19=/data/covid19.",
        )
    kind, colon, locator = rest.partition(":")
    if colon and kind in KNOWN_SOURCE_KINDS:
        return source_id.strip(), kind, locator.strip()
    return source_id.strip(), None, rest.strip()


def _absolute_if_local(locator: str) -> str:
    """Return a local path as an absolute path, since the manifest's folder is not the user's."""
    if "://" in locator:
        return locator
    path = Path(locator).expanduser()
    return str(path.resolve()) if path.exists() else locator


def apply_overrides(manifest: Manifest, overrides: Iterable[str]) -> Manifest:
    """Return ``manifest`` with each ``ID=[KIND:]LOCATOR`` override applied.

    A new kind drops the source's options, which belong to the old kind. The
    licence and citation stay, because the files are the same data.
    """
    sources = dict(manifest.sources)
    for text in overrides:
        source_id, kind, locator = parse_override(text)
        if source_id not in sources:
            raise ManifestError(
                f"source override names unknown source {source_id!r}",
                hint=f"Use one of the manifest's source ids: {', '.join(sorted(sources))}.",
            )
        record: SourceRecord = sources[source_id]
        changes: dict = {"locator": _absolute_if_local(locator)}
        if kind is not None and kind != record.kind:
            changes.update(kind=kind, options={})
        sources[source_id] = dataclasses.replace(record, **changes)
    return dataclasses.replace(manifest, sources=sources)
