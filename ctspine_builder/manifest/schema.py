"""Manifest stage: the vocabulary of manifest format v1 (keys, source kinds, licence ids, patterns)."""
from __future__ import annotations

import re

# Source kinds that format v1 documents (docs/manifest.md). A kind listed here
# validates even before its module is installed, so a manifest written for a
# newer build still checks cleanly. `ctspine_builder.sources.base.source_kinds()`
# lists the kinds that this installation can fetch.
KNOWN_SOURCE_KINDS = (
    "local-dicom",
    "local-nifti",
    "tcia",
    "msd",
    "covid19",
    "masks-folder",
    "masks-hf",
)

# SPDX licence identifiers (https://spdx.org/licenses/) of common data and
# software licences. Any other
# licence is written as `LicenseRef-<name>`, the SPDX form for a licence that
# has no SPDX id.
SPDX_LICENSE_IDS = frozenset(
    {
        "CC0-1.0",
        "CC-BY-2.0",
        "CC-BY-2.5",
        "CC-BY-3.0",
        "CC-BY-4.0",
        "CC-BY-SA-3.0",
        "CC-BY-SA-4.0",
        "CC-BY-NC-3.0",
        "CC-BY-NC-4.0",
        "CC-BY-NC-SA-3.0",
        "CC-BY-NC-SA-4.0",
        "CC-BY-NC-ND-3.0",
        "CC-BY-NC-ND-4.0",
        "CC-BY-ND-4.0",
        "ODbL-1.0",
        "ODC-By-1.0",
        "PDDL-1.0",
        "Apache-2.0",
        "MIT",
        "BSD-2-Clause",
        "BSD-3-Clause",
        "GPL-3.0-only",
        "GPL-3.0-or-later",
        "LGPL-3.0-or-later",
        "MPL-2.0",
        "Unlicense",
    }
)
LICENSE_REF_PATTERN = re.compile(r"^LicenseRef-[A-Za-z0-9.-]+$")

# Semantic Versioning 2.0.0 (semver.org): MAJOR.MINOR.PATCH with no leading
# zeros, then an optional -prerelease and an optional +build part.
SEMVER_PATTERN = re.compile(
    r"^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)"
    r"(?:-((?:0|[1-9]\d*|\d*[A-Za-z-][0-9A-Za-z-]*)(?:\.(?:0|[1-9]\d*|\d*[A-Za-z-][0-9A-Za-z-]*))*))?"
    r"(?:\+([0-9A-Za-z-]+(?:\.[0-9A-Za-z-]+)*))?$"
)

# Pinned hashes are SHA-256 of the decompressed NIfTI, written as lowercase hex.
SHA256_PATTERN = re.compile(r"^[0-9a-f]{64}$")

# A DOI as doi.org resolves it: the 10.<registrant>/<suffix> form, no URL prefix.
DOI_PATTERN = re.compile(r"^10\.\d{4,9}/\S+$")

# Case ids, subset names and source ids become file and folder names in the
# built dataset (images/<case_id>.nii.gz, LICENSES/<source_id>.md), so they
# may not contain path separators or start with a dot.
SAFE_NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")

# Keys allowed in each record, split into required and optional. Any other key
# is reported, so that a misspelt optional key is not silently ignored.
TOP_LEVEL_KEYS = {"format": True, "dataset": True, "sources": True, "cases": False}
DATASET_KEYS = {"name": True, "version": True, "citation": True, "pretty_name": False, "description": False}
SOURCE_KEYS = {
    "id": True,
    "kind": True,
    "license": True,
    "locator": True,
    "citation": False,
    "doi": False,
    "license_note": False,
    "options": False,
}
CASE_KEYS = {
    "case_id": True,
    "subset": True,
    "split": True,
    "image": True,
    "mask": True,
    "image_sha256": False,
    "mask_sha256": False,
    "series_hint": False,
}
FILE_REF_KEYS = {"source": True, "locator": True}

# Documented kinds that deliver images, and those that deliver masks. A kind
# that is registered but not documented here is not checked for its role.
IMAGE_SOURCE_KINDS = frozenset({"local-dicom", "local-nifti", "tcia", "msd", "covid19"})
MASK_SOURCE_KINDS = frozenset({"local-nifti", "masks-folder", "masks-hf"})

# Option keys that each documented kind reads from `sources[].options`. An
# unknown key is reported, so a misspelt option is not silently ignored. A
# kind registered by a plugin and missing from this table accepts any keys.
SOURCE_OPTIONS = {
    "local-dicom": frozenset({"geometry", "series_uid"}),
    "local-nifti": frozenset(),
    "tcia": frozenset({"collection"}),
    "msd": frozenset({"md5", "archive", "folder"}),
    "covid19": frozenset({"base_url", "folder"}),
    "masks-folder": frozenset({"folder"}),
    "masks-hf": frozenset({"revision", "locator_base", "path_pattern", "endpoint"}),
}

# File names of the folder form: manifest.json plus any number of cases*.jsonl.
FOLDER_MANIFEST_NAME = "manifest.json"
CASES_FILE_GLOB = "cases*.jsonl"
