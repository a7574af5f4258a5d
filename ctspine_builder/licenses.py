"""Licences and attribution of the sources, for the package stage and licence checks.

Maps SPDX ids to licence names and URLs, maps the licence names and URIs
that TCIA's getSeries returns to SPDX ids, lists the citations each source
requires, and names combinations of licences whose terms conflict.
"""
from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from ctspine_builder.errors import FetchError, ManifestError
from ctspine_builder.manifest.model import SourceRecord


@dataclass(frozen=True)
class LicenseInfo:
    """A licence's SPDX id, full name, canonical URL and the terms that matter for mixing."""

    spdx_id: str
    name: str
    url: str
    share_alike: bool = False
    non_commercial: bool = False
    no_derivatives: bool = False

    @property
    def short_name(self) -> str:
        """The usual short form, for example ``CC BY-SA 4.0``."""
        if self.spdx_id.startswith("CC-BY"):
            code, version = self.spdx_id.rsplit("-", 1)
            return f"CC {code[3:]} {version}"
        if self.spdx_id == "CC0-1.0":
            return "CC0 1.0"
        return self.spdx_id


def _cc(code: str, version: str, title: str, port: str) -> LicenseInfo:
    return LicenseInfo(
        spdx_id=f"CC-{code.upper()}-{version}",
        name=f"Creative Commons {title} {version} {port}",
        url=f"https://creativecommons.org/licenses/{code}/{version}/",
        share_alike="sa" in code.split("-"),
        non_commercial="nc" in code.split("-"),
        no_derivatives="nd" in code.split("-"),
    )


_CC_TITLES = {
    "by": "Attribution",
    "by-sa": "Attribution-ShareAlike",
    "by-nc": "Attribution-NonCommercial",
    "by-nc-sa": "Attribution-NonCommercial-ShareAlike",
    "by-nd": "Attribution-NoDerivatives",
    "by-nc-nd": "Attribution-NonCommercial-NoDerivatives",
}
_CC_PORTS = {"3.0": "Unported", "4.0": "International"}

LICENSES: dict[str, LicenseInfo] = {
    info.spdx_id: info
    for info in (
        *(_cc(code, version, title, port) for code, title in _CC_TITLES.items() for version, port in _CC_PORTS.items()),
        LicenseInfo("CC0-1.0", "Creative Commons Zero v1.0 Universal", "https://creativecommons.org/publicdomain/zero/1.0/"),
        LicenseInfo("Apache-2.0", "Apache License 2.0", "https://www.apache.org/licenses/LICENSE-2.0"),
        LicenseInfo("MIT", "MIT License", "https://opensource.org/license/mit"),
    )
}

# Citations that the sources' terms of use ask for.
TCIA_CITATION = (
    "Clark K, Vendt B, Smith K, et al. The Cancer Imaging Archive (TCIA): Maintaining and Operating "
    "a Public Information Repository. Journal of Digital Imaging 26, 1045-1057 (2013). "
    "doi:10.1007/s10278-013-9622-7"
)
MSD_CITATIONS = (
    "Antonelli M, Reinke A, Bakas S, et al. The Medical Segmentation Decathlon. "
    "Nature Communications 13, 4128 (2022). doi:10.1038/s41467-022-30695-9",
    "Simpson AL, Antonelli M, Bakas S, et al. A large annotated medical image dataset for the "
    "development and evaluation of segmentation algorithms. arXiv:1902.09063 (2019)",
)
CTSPINE1K_CITATION = (
    "Deng Y, Wang C, Hui Y, et al. CTSpine1K: A Large-Scale Dataset for Spinal Vertebrae "
    "Segmentation in Computed Tomography. arXiv:2105.14711"
)

# The CTSpine1K authors state "CC-BY-NC-SA" for their masks with no version.
MASKS_LICENSE_ASSUMPTION = (
    "The CTSpine1K authors state the masks' licence as CC-BY-NC-SA without a version; "
    "this dataset reads it as CC BY-NC-SA 4.0, which is an assumption."
)

# Every DOI that TCIA mints for a collection starts with this prefix.
TCIA_DOI_PREFIX = "10.7937/"


def normalize_spdx(license_id: str) -> str:
    """Return the SPDX id for common spellings such as ``CC BY-SA 4.0`` or ``cc-by-4.0``."""
    text = license_id.strip()
    if text in LICENSES:
        return text
    squashed = re.sub(r"[\s_]+", "-", text).upper()
    for spdx_id in LICENSES:
        if spdx_id.upper() == squashed:
            return spdx_id
    return text


def license_info(spdx_id: str) -> LicenseInfo:
    """Return the licence with this SPDX id (common spellings accepted).

    Raises ManifestError listing the known ids when the id is unknown.
    """
    info = LICENSES.get(normalize_spdx(spdx_id))
    if info is None:
        raise ManifestError(
            f"unknown licence id {spdx_id!r}",
            hint=f"Use an SPDX id, one of: {', '.join(sorted(LICENSES))}.",
        )
    return info


_CC_URI = re.compile(r"creativecommons\.org/licenses/([a-z-]+)/(\d\.\d)", re.IGNORECASE)
_CC0_URI = re.compile(r"creativecommons\.org/publicdomain/zero/1\.0", re.IGNORECASE)
_CC_NAME = re.compile(r"creative\s+commons\s+(attribution[a-z\s-]*?)\s*(\d\.\d)", re.IGNORECASE)
_TITLE_TO_CODE = {title.lower(): code for code, title in _CC_TITLES.items()}


def spdx_from_tcia(license_name: str | None, license_uri: str | None) -> str | None:
    """Return the SPDX id for a getSeries LicenseName / LicenseURI pair, or None.

    The URI decides when it names a Creative Commons licence, because names
    vary in spelling ("... 3.0 Unported License"); otherwise the name is
    parsed. Returns None when neither names a known licence.
    """
    if license_uri:
        match = _CC_URI.search(license_uri)
        if match:
            candidate = f"CC-{match.group(1).upper()}-{match.group(2)}"
            if candidate in LICENSES:
                return candidate
        if _CC0_URI.search(license_uri):
            return "CC0-1.0"
    if license_name:
        match = _CC_NAME.search(license_name)
        if match:
            title = re.sub(r"\s*-\s*", "-", match.group(1).strip().lower())
            code = _TITLE_TO_CODE.get(title)
            if code:
                return f"CC-{code.upper()}-{match.group(2)}"
    return None


def check_tcia_license(
    source_id: str, manifest_license: str, license_name: str | None, license_uri: str | None
) -> None:
    """Raise FetchError when the licence TCIA reports differs from the manifest's.

    A licence that cannot be read from the API's fields is a mismatch too,
    because the build cannot show that the data may be used under the
    manifest's terms.
    """
    reported = spdx_from_tcia(license_name, license_uri)
    expected = normalize_spdx(manifest_license)
    if reported == expected:
        return
    reported_text = f"{license_name or '(no LicenseName)'} <{license_uri or 'no LicenseURI'}>"
    raise FetchError(
        f"source {source_id!r}: the manifest states licence {expected} but TCIA reports {reported_text}"
        + ("" if reported else ", which is not a licence this tool recognizes"),
        hint="Check the collection's licence on its TCIA page and correct the manifest's licence "
        "for this source; the source is not used until they agree.",
    )


_CITATION_ID = re.compile(r"(?:doi:|arXiv:)(\S+?)\.?(?:\s|$)")


def required_citations(record: SourceRecord) -> list[str]:
    """Return the citations a source's terms require, in the order to print them.

    The source's own citation and DOI come first. Sources with a TCIA DOI
    add Clark et al. 2013, kind ``msd`` adds the two Decathlon papers, and
    the mask kinds add the CTSpine1K paper.
    """
    citations: list[str] = []
    if record.citation:
        citations.append(record.citation)
    if record.doi and record.doi not in record.citation:
        citations.append(f"doi:{record.doi}")
    extras: list[str] = []
    if record.doi.startswith(TCIA_DOI_PREFIX):
        extras.append(TCIA_CITATION)
    if record.kind == "msd":
        extras.extend(MSD_CITATIONS)
    if record.kind.startswith("masks"):
        extras.append(CTSPINE1K_CITATION)
    for extra in extras:
        # A manifest citation or DOI that already names the paper's DOI or
        # arXiv number covers it.
        identifier = _CITATION_ID.search(extra)
        key = identifier.group(1) if identifier else extra
        if not any(key in citation for citation in citations):
            citations.append(extra)
    return citations


def _describe_terms(info: LicenseInfo) -> str:
    terms = [term for term, present in (
        ("NonCommercial", info.non_commercial),
        ("ShareAlike", info.share_alike),
        ("NoDerivatives", info.no_derivatives),
    ) if present]
    return f"{info.short_name} ({', '.join(terms)})" if terms else info.short_name


def _subset_conflicts(subset: str, used: list[tuple[str, SourceRecord]]) -> list[str]:
    conflicts: list[str] = []
    known: list[tuple[str, SourceRecord, LicenseInfo]] = []
    for role, record in used:
        spdx_id = normalize_spdx(record.license)
        if spdx_id not in LICENSES:
            conflicts.append(
                f"{subset}: the {role} source {record.id!r} has licence {record.license!r}, which this "
                "tool does not recognize, so conflicts with the other sources' licences were not checked."
            )
        else:
            known.append((role, record, LICENSES[spdx_id]))

    for role, record, info in known:
        if info.no_derivatives:
            conflicts.append(
                f"{subset}: the {role} source {record.id!r} is {info.short_name}, which does not allow "
                "sharing adapted material such as converted or relabelled files."
            )

    share_alike = sorted({info.spdx_id for _, _, info in known if info.share_alike})
    if len(share_alike) > 1 or (share_alike and len({info.spdx_id for _, _, info in known}) > 1):
        parts = [f"{role} from {record.id!r} are {_describe_terms(info)}" for role, record, info in known]
        sentence = f"{subset}: {' and '.join(parts)}."
        if len(share_alike) > 1:
            sentence += (
                " Each ShareAlike licence requires adaptations to be shared under that same licence,"
                " so no single licence satisfies both."
            )
        else:
            sentence += (
                f" {share_alike[0]} requires adaptations to be shared under that same licence,"
                " and the other licence's terms differ."
            )
        if any(info.non_commercial for _, _, info in known):
            sentence += " The NonCommercial terms also rule out commercial use of the combined files."
        conflicts.append(sentence)
    return conflicts


def license_conflicts(
    sources_by_subset: Mapping[str, Mapping[str, SourceRecord] | Iterable[SourceRecord]],
) -> list[str]:
    """Return one plain sentence per licence conflict, subset by subset.

    ``sources_by_subset`` maps a subset name to the sources its cases use,
    either as role -> SourceRecord (roles such as ``images`` and ``masks``)
    or as a plain list of records. Conflicts found: two different
    ShareAlike licences, a ShareAlike licence combined with any other
    licence, a NoDerivatives licence, and a licence id this tool does not
    recognize. An empty list means no conflict was found.
    """
    conflicts: list[str] = []
    for subset in sorted(sources_by_subset):
        sources = sources_by_subset[subset]
        if isinstance(sources, Mapping):
            used = list(sources.items())
        else:
            used = [("files", record) for record in sources]
        conflicts.extend(_subset_conflicts(subset, used))
    return conflicts
