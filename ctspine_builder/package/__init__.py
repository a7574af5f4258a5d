"""Package stage: turn built cases into a Hugging Face dataset folder.

`package_dataset` writes metadata.jsonl per split, LICENSES/, build.json and
the README.md card, removes files of cases no longer in the build, and
writes SHA256SUMS last. Files whose content is unchanged are left alone.
"""
from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

from ctspine_builder.licenses import license_conflicts
from ctspine_builder.fileio import PARTIAL_SUFFIX, sha256_file
from ctspine_builder.manifest.model import SPLITS, Manifest, SourceRecord
from ctspine_builder.package.buildinfo import CaseEntry, build_document, encode_build_document, manifest_sha256
from ctspine_builder.package.card import render_card
from ctspine_builder.package.layout import (
    BUILD_FILE,
    CARD_FILE,
    DATA_DIR,
    LICENSE_DIR,
    SIDECAR_DIR,
    SUMS_FILE,
    metadata_relpath,
    write_if_changed,
)
from ctspine_builder.package.licenses import render_license_file

logger = logging.getLogger(__name__)

__all__ = ["package_dataset", "write_checksums", "CaseEntry"]


def _metadata_rows(entries: list[CaseEntry], split: str) -> bytes:
    rows = []
    for entry in sorted(entries, key=lambda e: e.case_id):
        if entry.split != split:
            continue
        row = {
            "case_id": entry.case_id,
            "image_file_name": f"images/{entry.case_id}.nii.gz",
            # A case without a mask keeps the column as null, which the
            # niftifolder loader turns into mask=None for that row.
            "mask_file_name": f"masks/{entry.case_id}.nii.gz" if entry.has_mask else None,
            "split": entry.split,
            "subset": entry.subset,
        }
        rows.append(canonical_line(row))
    return b"".join(rows)


def _warn_split_without_masks(entries: list[CaseEntry]) -> None:
    """Warn when one split has no masks at all while another split has some.

    NOTE: datasets 5.2's folder loader infers the type of mask_file_name per
    metadata file. A split whose rows are all null gets type null, and the
    loader then rejects the dataset ("different features"). Splits that mix cases
    with and without masks load fine, with mask None for the latter.
    """
    with_mask = {entry.split for entry in entries if entry.has_mask}
    all_splits = {entry.split for entry in entries}
    if with_mask and with_mask != all_splits:
        logger.warning(
            "split(s) %s have no case with a mask while %s do; datasets.load_dataset rejects such a folder "
            "(its metadata files differ in type). Build those splits into a separate folder.",
            ", ".join(sorted(all_splits - with_mask)),
            ", ".join(sorted(with_mask)),
        )


def canonical_line(row: dict) -> bytes:
    """Serialise one JSON Lines row with sorted keys."""
    return (json.dumps(row, sort_keys=True, ensure_ascii=False) + "\n").encode("utf-8")


def _remove_stale(out_dir: Path, entries: list[CaseEntry]) -> None:
    """Delete case files and split folders that the current entries do not list."""
    keep = {entry.image_file for entry in entries} | {entry.sidecar_file for entry in entries}
    keep |= {entry.mask_file for entry in entries if entry.mask_file}
    candidates = list((out_dir / DATA_DIR).glob("*/images/*")) + list((out_dir / DATA_DIR).glob("*/masks/*"))
    candidates += list((out_dir / SIDECAR_DIR).glob("*"))
    for path in candidates:
        if path.is_file() and path.relative_to(out_dir).as_posix() not in keep:
            logger.info("removing %s: its case is no longer in the build", path.relative_to(out_dir))
            path.unlink()
    present = {entry.split for entry in entries}
    for split_dir in (out_dir / DATA_DIR).glob("*"):
        if split_dir.is_dir() and split_dir.name not in present:
            shutil.rmtree(split_dir)


def licence_conflicts(manifest: Manifest, entries: list[CaseEntry]) -> list[str]:
    """Return a sentence per licence conflict among the sources each subset uses."""
    by_subset: dict[str, dict[str, SourceRecord]] = {}
    for entry in entries:
        roles = by_subset.setdefault(entry.subset, {})
        roles["images"] = manifest.sources[entry.image_source]
        if entry.mask_source:
            roles["masks"] = manifest.sources[entry.mask_source]
    return license_conflicts(by_subset)


def _write_licenses(out_dir: Path, entries: list[CaseEntry], sources: list[SourceRecord], conflicts: list[str]) -> None:
    wanted = set()
    for record in sources:
        roles = sorted(
            {"images" for e in entries if e.image_source == record.id}
            | {"masks" for e in entries if e.mask_source == record.id}
        )
        subsets = sorted({e.subset for e in entries if record.id in (e.image_source, e.mask_source)})
        own_conflicts = [sentence for sentence in conflicts if repr(record.id) in sentence]
        name = f"{record.id}.md"
        wanted.add(name)
        text = render_license_file(record, roles, subsets, own_conflicts)
        write_if_changed(out_dir / LICENSE_DIR / name, text.encode("utf-8"))
    for path in (out_dir / LICENSE_DIR).glob("*"):
        if path.name not in wanted:
            path.unlink()


def used_sources(manifest: Manifest, entries: list[CaseEntry]) -> list[SourceRecord]:
    """Return the manifest's sources that the entries' images or masks come from, by id."""
    ids = {e.image_source for e in entries} | {e.mask_source for e in entries if e.mask_source}
    return [manifest.sources[source_id] for source_id in sorted(ids)]


def package_dataset(out_dir: Path, manifest: Manifest, entries: list[CaseEntry], lock_sha256: str | None = None) -> None:
    """Write the dataset-level files for ``entries`` and finish with SHA256SUMS."""
    out_dir = Path(out_dir)
    _remove_stale(out_dir, entries)
    for split in SPLITS:
        rows = _metadata_rows(entries, split)
        if rows:
            write_if_changed(out_dir / metadata_relpath(split), rows)

    _warn_split_without_masks(entries)

    sources = used_sources(manifest, entries)
    conflicts = licence_conflicts(manifest, entries)
    _write_licenses(out_dir, entries, sources, conflicts)
    document = build_document(manifest, entries, lock_sha256)
    write_if_changed(out_dir / BUILD_FILE, encode_build_document(document))
    card = render_card(manifest, entries, sources, conflicts, manifest_sha256(manifest), lock_sha256)
    write_if_changed(out_dir / CARD_FILE, card.encode("utf-8"))
    write_checksums(out_dir)


def write_checksums(out_dir: Path) -> None:
    """Write SHA256SUMS: "<sha256>  <path>" for every file but itself, sorted by path.

    Hidden entries (the staging folder) and partial files are left out.
    NOTE: every file is hashed again on each run; for the full 150 GB
    dataset a cache of (size, mtime) -> hash would save the re-reading.
    """
    lines = []
    for path in sorted(p for p in out_dir.rglob("*") if p.is_file()):
        relative = path.relative_to(out_dir).as_posix()
        if relative == SUMS_FILE or relative.endswith(PARTIAL_SUFFIX):
            continue
        if any(part.startswith(".") for part in relative.split("/")):
            continue
        lines.append(f"{sha256_file(path)}  {relative}\n")
    lines.sort(key=lambda line: line.split("  ", 1)[1])
    write_if_changed(out_dir / SUMS_FILE, "".join(lines).encode("utf-8"))
