"""Package stage: the licence and attribution file of each source, and the card's licence field."""
from __future__ import annotations

from dataclasses import dataclass

from ctspine_builder.licenses import LICENSES, normalize_spdx, required_citations
from ctspine_builder.manifest.model import SourceRecord

# Licence ids that the Hugging Face Hub accepts in a card's `license` field
# for the SPDX ids this dataset's sources use (the Hub's ids are the SPDX ids
# in lower case for these). Any other id is declared as `other` with
# `license_name` and `license_link`.
HUB_LICENSE_IDS = {
    "apache-2.0",
    "cc0-1.0",
    "cc-by-2.0",
    "cc-by-3.0",
    "cc-by-4.0",
    "cc-by-sa-3.0",
    "cc-by-sa-4.0",
    "cc-by-nc-2.0",
    "cc-by-nc-3.0",
    "cc-by-nc-4.0",
    "cc-by-nc-sa-3.0",
    "cc-by-nc-sa-4.0",
    "cc-by-nc-nd-4.0",
    "mit",
    "odc-by",
    "pddl",
}

@dataclass(frozen=True)
class CardLicense:
    """The licence fields of a dataset card's YAML."""

    license: list[str]
    license_name: str | None = None
    license_link: str | None = None


def license_name(spdx_id: str) -> str:
    """Return a licence's full name, or the id itself when the tool does not know it."""
    info = LICENSES.get(normalize_spdx(spdx_id))
    return info.name if info else spdx_id


def license_url(spdx_id: str) -> str:
    """Return a licence's canonical URL, or its SPDX page when the tool does not know it."""
    info = LICENSES.get(normalize_spdx(spdx_id))
    return info.url if info else f"https://spdx.org/licenses/{spdx_id}.html"


def card_license(sources: list[SourceRecord]) -> CardLicense:
    """Return the card's licence fields declaring every source's licence.

    Every licence is listed, so no subset is shown under another's terms.
    Licences the Hub does not know become one `other` entry whose name and
    link point at the LICENSES folder, where each one is spelled out.
    """
    hub_ids: list[str] = []
    others: list[SourceRecord] = []
    for record in sources:
        lowered = normalize_spdx(record.license).lower()
        if lowered in HUB_LICENSE_IDS:
            if lowered not in hub_ids:
                hub_ids.append(lowered)
        else:
            others.append(record)
    if not others:
        return CardLicense(license=sorted(hub_ids))
    names = sorted({record.license.lower() for record in others})
    return CardLicense(
        license=sorted(hub_ids) + ["other"],
        license_name="-and-".join(names),
        license_link=f"LICENSES/{sorted(record.id for record in others)[0]}.md",
    )


def render_license_file(record: SourceRecord, roles: list[str], subsets: list[str], conflicts: list[str]) -> str:
    """Return LICENSES/<source_id>.md: the licence, the required citations and notes."""
    lines = [
        f"# {record.id}",
        "",
        f"- Licence: {license_name(record.license)} (SPDX: `{record.license}`)",
        f"- Licence text: {license_url(record.license)}",
        f"- Used for: {', '.join(roles)} of subset(s) {', '.join(subsets)}",
    ]
    if record.doi:
        lines.append(f"- DOI: https://doi.org/{record.doi}")
    citations = required_citations(record) or ["The manifest gives no citation for this source."]
    lines += ["", "## Required citations", ""] + [f"- {citation}" for citation in citations] + [""]
    notes = ([record.license_note] if record.license_note else []) + conflicts
    if notes:
        lines += ["## Notes", ""] + [f"- {note}" for note in notes] + [""]
    return "\n".join(lines)
