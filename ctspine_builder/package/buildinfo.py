"""Package stage: build.json, the provenance of a dataset folder and the state of its build.

build.json records, per case, what was produced (content hashes of the
decompressed NIfTI files), from which sources under which licences, and a
fingerprint of the inputs. The next build reads it back to skip cases whose
inputs are unchanged. It contains no timestamps and no paths beyond those
the manifest gives, so two builds of the same inputs write the same bytes.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path

from ctspine_builder import TOOL_NAME, __version__
from ctspine_builder.errors import PackagingError
from ctspine_builder.manifest.model import Manifest
from ctspine_builder.package.layout import BUILD_FILE, canonical_json

logger = logging.getLogger(__name__)

BUILD_FORMAT_VERSION = 1


@dataclass
class CaseEntry:
    """One built case as recorded in build.json."""

    case_id: str
    subset: str
    split: str
    has_mask: bool
    image_content_sha256: str
    mask_content_sha256: str | None
    image_source: str
    image_license: str
    mask_source: str | None
    mask_license: str | None
    inputs_sha256: str
    position: str | None = None
    image_file: str = ""
    mask_file: str | None = None
    sidecar_file: str = ""

    @classmethod
    def from_dict(cls, data: dict) -> CaseEntry:
        """Build an entry from its JSON form, ignoring fields this version does not know."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{key: value for key, value in data.items() if key in names})


def manifest_sha256(manifest: Manifest) -> str:
    """Return a SHA-256 of the manifest's records in canonical JSON.

    Hashing the parsed records rather than the files makes the hash the same
    for a manifest given as one file or as a folder, and for any key order.
    """
    payload = {
        "format_version": manifest.format_version,
        "dataset": dataclasses.asdict(manifest.dataset),
        "sources": {key: dataclasses.asdict(value) for key, value in sorted(manifest.sources.items())},
        "cases": [dataclasses.asdict(case) for case in manifest.cases],
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode("utf-8")).hexdigest()


def build_document(manifest: Manifest, entries: list[CaseEntry], lock_sha256: str | None) -> dict:
    """Return the build.json content for these case entries."""
    return {
        "format_version": BUILD_FORMAT_VERSION,
        "tool": {"name": TOOL_NAME, "version": __version__},
        "manifest": {
            "name": manifest.dataset.name,
            "version": manifest.dataset.version,
            "sha256": manifest_sha256(manifest),
        },
        "lock_sha256": lock_sha256,
        "cases": [dataclasses.asdict(entry) for entry in sorted(entries, key=lambda e: e.case_id)],
    }


def encode_build_document(document: dict) -> bytes:
    """Serialise a build.json document reproducibly."""
    return canonical_json(document)


def read_entries(out_dir: Path) -> dict[str, CaseEntry]:
    """Return the case entries of an earlier build in ``out_dir``, by case id.

    A missing build.json means no earlier build. One that cannot be read is
    an error rather than a silent full rebuild, so a damaged folder is noticed.
    """
    path = out_dir / BUILD_FILE
    if not path.is_file():
        return {}
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
        entries = [CaseEntry.from_dict(item) for item in document.get("cases", [])]
    except (ValueError, TypeError) as error:
        raise PackagingError(
            f"build.json of the earlier build cannot be read: {error}",
            path=path,
            hint="Delete build.json to rebuild every case, or build into an empty folder.",
        ) from error
    return {entry.case_id: entry for entry in entries}
