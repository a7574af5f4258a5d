"""Publish stage: what a release uploads, read from the dataset folder and checked before any upload.

The plan lists every file of the release with its size and SHA-256. Files
come from the folder's SHA256SUMS, which `ctspine verify` has checked. Two
files differ from the folder: README.md carries the release's gating fields
and release notes, and SHA256SUMS is rewritten with that card's hash, so a
downloaded copy of the release passes `ctspine verify`.
"""
from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

from ctspine_builder.errors import PublishError
from ctspine_builder.package.card_release import ReleaseNotes, release_card, split_card, undeclared_licenses

logger = logging.getLogger(__name__)

CARD_FILE = "README.md"
SUMS_FILE = "SHA256SUMS"
BUILD_FILE = "build.json"
LICENSE_DIR = "LICENSES"


@dataclass
class PlannedFile:
    """One file of a release: its path in the repo, size, SHA-256 and where its bytes are."""

    path: str
    size: int
    sha256: str
    local_path: Path | None = None
    content: bytes | None = None

    def read(self) -> bytes:
        """Return the file's bytes."""
        return self.content if self.content is not None else self.local_path.read_bytes()

    def git_blob_sha1(self) -> str:
        """Return git's object id of the file, which the Hub reports for files not stored in LFS."""
        digest = hashlib.sha1(b"blob %d\0" % self.size)
        digest.update(self.read())
        return digest.hexdigest()


@dataclass
class ReleasePlan:
    """Every file of a release, the card to publish and the build's provenance."""

    root: Path
    version: str
    files: dict[str, PlannedFile] = field(default_factory=dict)
    card: str = ""
    build: dict = field(default_factory=dict)

    @property
    def total_bytes(self) -> int:
        """Total size of the release in bytes."""
        return sum(item.size for item in self.files.values())


def read_sums(root: Path) -> dict[str, str]:
    """Return SHA256SUMS as {relative path: sha256}, rejecting malformed lines."""
    path = root / SUMS_FILE
    if not path.is_file():
        raise PublishError("SHA256SUMS is missing", path=path, hint="Run `ctspine build` again to write it.")
    sums: dict[str, str] = {}
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        digest, sep, rel = line.partition("  ")
        if not sep or len(digest) != 64 or rel.startswith("/") or ".." in rel.split("/"):
            raise PublishError(f"SHA256SUMS line {number} is malformed: expected '<sha256>  <relative path>'", path=path)
        sums[rel] = digest
    return sums


def read_build(root: Path) -> dict:
    """Return build.json of the dataset folder."""
    path = root / BUILD_FILE
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as error:
        raise PublishError("build.json is missing", path=path, hint="Run `ctspine build` again.") from error
    except ValueError as error:
        raise PublishError(f"build.json is not valid JSON: {error}", path=path) from error


def source_licenses(build: dict) -> dict[str, str]:
    """Return {source id: SPDX licence} for every image and mask source the build used."""
    licenses: dict[str, str] = {}
    for case in build.get("cases", []):
        for role in ("image", "mask"):
            source, spdx = case.get(f"{role}_source"), case.get(f"{role}_license")
            if source:
                licenses[source] = spdx or ""
    return licenses


def check_licenses(root: Path, build: dict, card_text: str) -> None:
    """Raise PublishError unless every source has a licence file and the card declares its licence."""
    problems = []
    licenses = source_licenses(build)
    for source, spdx in sorted(licenses.items()):
        if not spdx:
            problems.append(f"source {source} has no licence in build.json")
        if not (root / LICENSE_DIR / f"{source}.md").is_file():
            problems.append(f"{LICENSE_DIR}/{source}.md is missing")
    metadata, _ = split_card(card_text, str(root / CARD_FILE))
    missing = undeclared_licenses(metadata, {spdx for spdx in licenses.values() if spdx})
    if missing:
        problems.append(f"the card's `license` field does not declare {', '.join(missing)}")
    if problems:
        raise PublishError(
            "licence check failed: " + "; ".join(problems),
            path=root,
            hint="Rebuild with a manifest that gives every source its licence, then publish again.",
        )


def build_plan(root: Path, version: str, notes: ReleaseNotes, gated: bool) -> ReleasePlan:
    """Return the release plan for the dataset folder ``root``.

    Every file below ``root`` must be listed in SHA256SUMS (and the reverse),
    with the listed size on disk, so nothing unverified is uploaded.
    """
    sums = read_sums(root)
    on_disk = {
        path.relative_to(root).as_posix()
        for path in root.rglob("*")
        if path.is_file() and not any(part.startswith(".") for part in path.relative_to(root).parts)
    }
    unlisted = sorted(on_disk - set(sums) - {SUMS_FILE})
    missing = sorted(set(sums) - on_disk)
    if unlisted or missing:
        raise PublishError(
            f"dataset folder and SHA256SUMS disagree: not listed {unlisted[:5]}, missing {missing[:5]}",
            path=root,
            hint="Run `ctspine verify` on the folder and rebuild it.",
        )
    plan = ReleasePlan(root=root, version=version, build=read_build(root))
    for rel, digest in sums.items():
        plan.files[rel] = PlannedFile(rel, (root / rel).stat().st_size, digest, local_path=root / rel)

    card_text = (root / CARD_FILE).read_text(encoding="utf-8")
    card_bytes = release_card(card_text, notes, gated, source_licenses(plan.build)).encode("utf-8")
    plan.card = card_bytes.decode("utf-8")
    plan.files[CARD_FILE] = PlannedFile(CARD_FILE, len(card_bytes), hashlib.sha256(card_bytes).hexdigest(), content=card_bytes)
    published_sums = {rel: item.sha256 for rel, item in plan.files.items()}
    sums_bytes = "".join(f"{published_sums[rel]}  {rel}\n" for rel in sorted(published_sums)).encode("utf-8")
    plan.files[SUMS_FILE] = PlannedFile(SUMS_FILE, len(sums_bytes), hashlib.sha256(sums_bytes).hexdigest(), content=sums_bytes)
    return plan
