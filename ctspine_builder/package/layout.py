"""Package stage: where each file of the dataset folder lives, and writes that keep mtimes.

The layout is the contract that `verify`, `publish`, the exports and
`datasets.load_dataset` read: data/<split>/images|masks/<case_id>.nii.gz,
data/<split>/metadata.jsonl, sidecars/<case_id>.json, LICENSES/<source>.md,
build.json, README.md and SHA256SUMS at the top.
"""
from __future__ import annotations

import json
from pathlib import Path

from ctspine_builder.fileio import write_bytes_atomic

DATA_DIR = "data"
SIDECAR_DIR = "sidecars"
LICENSE_DIR = "LICENSES"
CARD_FILE = "README.md"
SUMS_FILE = "SHA256SUMS"
BUILD_FILE = "build.json"
METADATA_FILE = "metadata.jsonl"
NIFTI_SUFFIX = ".nii.gz"

# Per-case files are assembled here (inside the output folder, so the final
# rename stays on one file system) and moved into place when complete.
STAGING_DIR = ".staging"


def image_relpath(split: str, case_id: str) -> str:
    """Return the dataset-relative path of a case's image."""
    return f"{DATA_DIR}/{split}/images/{case_id}{NIFTI_SUFFIX}"


def mask_relpath(split: str, case_id: str) -> str:
    """Return the dataset-relative path of a case's mask."""
    return f"{DATA_DIR}/{split}/masks/{case_id}{NIFTI_SUFFIX}"


def sidecar_relpath(case_id: str) -> str:
    """Return the dataset-relative path of a case's JSON sidecar."""
    return f"{SIDECAR_DIR}/{case_id}.json"


def metadata_relpath(split: str) -> str:
    """Return the dataset-relative path of a split's metadata.jsonl."""
    return f"{DATA_DIR}/{split}/{METADATA_FILE}"


def canonical_json(value: object) -> bytes:
    """Serialise ``value`` as indented JSON with sorted keys and a final newline."""
    return (json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode("utf-8")


def write_if_changed(path: Path, data: bytes) -> bool:
    """Write ``data`` atomically unless the file already contains exactly it.

    Leaving an unchanged file alone keeps its mtime, so a re-run of a
    finished build changes nothing on disk. Returns True when it wrote.
    """
    if path.is_file() and path.stat().st_size == len(data) and path.read_bytes() == data:
        return False
    write_bytes_atomic(path, data)
    return True
