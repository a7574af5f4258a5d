"""Publish stage: the released dataset card, its licence check, gating fields and release notes.

The build writes README.md with YAML front matter. A release adds to it:
the Hub's gating fields when requested (``extra_gated_prompt`` and
``extra_gated_fields``, so users accept the terms before download) and a
"Release notes" section that lists the cases added, removed or changed since
the previous release.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field

import yaml

from ctspine_builder.errors import PublishError

logger = logging.getLogger(__name__)

FRONT_MATTER_MARK = "---"

GATED_BASE_FIELDS = {
    "Name": "text",
    "Affiliation": "text",
    "I agree to the licence terms of every source listed in LICENSES/": "checkbox",
    # TCIA's data usage policy forbids attempts to identify participants; the
    # same promise suits every source of patient scans.
    "I will not try to identify any participant": "checkbox",
    "I will cite every source listed in LICENSES/": "checkbox",
}
NON_COMMERCIAL_FIELD = "I will use the data for non-commercial purposes only"


def gated_fields(licenses: dict[str, str]) -> tuple[str, dict[str, str]]:
    """Return the Hub's gating prompt and fields for sources with these SPDX licences.

    The prompt names each source and its licence, and a non-commercial
    promise is asked for when any licence has the NC term.
    """
    listed = "; ".join(f"{source}: {spdx}" for source, spdx in sorted(licenses.items())) or "see LICENSES/"
    prompt = (
        f"This dataset combines sources under their own licences ({listed}). "
        "Read LICENSES/ and accept every source's terms to get access."
    )
    fields = dict(GATED_BASE_FIELDS)
    if any("-NC" in spdx.upper() for spdx in licenses.values()):
        fields[NON_COMMERCIAL_FIELD] = "checkbox"
    return prompt, fields


@dataclass
class ReleaseNotes:
    """Cases added, removed or changed between two releases, by case id."""

    version: str
    previous_version: str | None
    added: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)
    checked: bool = True


def split_card(text: str, path: str = "README.md") -> tuple[dict, str]:
    """Split a card into its YAML front matter (as a dict) and its Markdown body."""
    lines = text.splitlines(keepends=True)
    if not lines or lines[0].strip() != FRONT_MATTER_MARK:
        raise PublishError("dataset card has no YAML front matter", path=path, hint="Rebuild the dataset with `ctspine build`.")
    for index, line in enumerate(lines[1:], start=1):
        if line.strip() == FRONT_MATTER_MARK:
            try:
                metadata = yaml.safe_load("".join(lines[1:index])) or {}
            except yaml.YAMLError as error:
                raise PublishError(f"dataset card YAML is invalid: {error}", path=path) from error
            return metadata, "".join(lines[index + 1:])
    raise PublishError("dataset card's YAML front matter is not closed by '---'", path=path)


def join_card(metadata: dict, body: str) -> str:
    """Return a card from its YAML metadata and Markdown body."""
    front = yaml.safe_dump(metadata, sort_keys=False, allow_unicode=True, width=1000)
    return f"{FRONT_MATTER_MARK}\n{front}{FRONT_MATTER_MARK}\n{body}"


def undeclared_licenses(metadata: dict, licenses: set[str]) -> list[str]:
    """Return the SPDX ids in ``licenses`` that the card's licence fields do not declare.

    A licence counts as declared when its lower-case id is in the card's
    ``license`` list, or when the list holds ``other`` together with a
    ``license_name`` and a ``license_link`` (the Hub's way to name a licence
    it has no id for).
    """
    declared = metadata.get("license") or []
    declared = [declared] if isinstance(declared, str) else list(declared)
    declared = {str(item).lower() for item in declared}
    has_other = "other" in declared and metadata.get("license_name") and metadata.get("license_link")
    missing = sorted(spdx for spdx in licenses if spdx.lower() not in declared)
    return [] if has_other else missing


def compare_builds(previous: dict | None, current: dict, version: str, previous_version: str | None) -> ReleaseNotes:
    """Return the cases added, removed or changed between two build.json documents.

    A case changed when its split, subset or the content hash of its image or
    mask differs. With no previous build every case counts as added.
    """
    notes = ReleaseNotes(version=version, previous_version=previous_version)
    now = {case["case_id"]: case for case in current.get("cases", [])}
    before = {case["case_id"]: case for case in (previous or {}).get("cases", [])}
    keys = ("split", "subset", "image_content_sha256", "mask_content_sha256")
    notes.added = sorted(set(now) - set(before))
    notes.removed = sorted(set(before) - set(now))
    notes.changed = sorted(
        case_id for case_id in set(now) & set(before)
        if any(now[case_id].get(key) != before[case_id].get(key) for key in keys)
    )
    return notes


def _case_list(case_ids: list[str], limit: int = 50) -> str:
    shown = ", ".join(f"`{case_id}`" for case_id in case_ids[:limit])
    more = len(case_ids) - limit
    return f"{shown} and {more} more (see build.json)" if more > 0 else shown


def render_release_notes(notes: ReleaseNotes) -> str:
    """Return the card's "Release notes" Markdown section."""
    lines = ["## Release notes", "", f"### v{notes.version}", ""]
    if not notes.checked:
        lines.append("Not compared with an earlier release (dry run, no server contacted).")
    elif notes.previous_version is None:
        lines.append(f"First release: {len(notes.added)} cases.")
    else:
        lines.append(f"Changes since v{notes.previous_version}:")
        lines.append("")
        for label, ids in (("Added", notes.added), ("Removed", notes.removed), ("Changed", notes.changed)):
            lines.append(f"- {label} ({len(ids)}): {_case_list(ids) if ids else 'none'}")
    return "\n".join(lines) + "\n"


def release_card(card_text: str, notes: ReleaseNotes, gated: bool, licenses: dict[str, str] | None = None) -> str:
    """Return the card to publish: the built card plus gating fields and release notes.

    ``licenses`` maps each source id to its SPDX licence, for the gating prompt.
    """
    metadata, body = split_card(card_text)
    if gated:
        metadata["extra_gated_prompt"], metadata["extra_gated_fields"] = gated_fields(licenses or {})
    marker = "\n## Release notes\n"
    if marker in body:
        # A card published before already carries notes: replace them.
        body = body[: body.index(marker)]
    return join_card(metadata, body.rstrip("\n") + "\n\n" + render_release_notes(notes))
