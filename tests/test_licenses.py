"""Tests for licence lookup, TCIA licence mapping, citations and conflict detection."""
from __future__ import annotations

import pytest

from ctspine_builder.errors import FetchError, ManifestError
from ctspine_builder.licenses import (
    CTSPINE1K_CITATION,
    LICENSES,
    MSD_CITATIONS,
    TCIA_CITATION,
    check_tcia_license,
    license_conflicts,
    license_info,
    required_citations,
    spdx_from_tcia,
)
from ctspine_builder.manifest.model import SourceRecord

REQUIRED_IDS = [
    "CC-BY-4.0", "CC-BY-SA-4.0", "CC-BY-NC-SA-4.0", "CC-BY-NC-4.0", "CC-BY-3.0", "CC0-1.0", "Apache-2.0", "MIT",
]


@pytest.mark.parametrize("spdx_id", REQUIRED_IDS)
def test_license_info_known_ids(spdx_id: str) -> None:
    info = license_info(spdx_id)
    assert info.spdx_id == spdx_id
    assert info.url.startswith("https://")
    assert info.name


def test_license_info_cc_details() -> None:
    info = license_info("CC-BY-NC-SA-4.0")
    assert info.name == "Creative Commons Attribution-NonCommercial-ShareAlike 4.0 International"
    assert info.url == "https://creativecommons.org/licenses/by-nc-sa/4.0/"
    assert info.non_commercial
    assert info.share_alike
    assert info.short_name == "CC BY-NC-SA 4.0"
    assert license_info("CC-BY-3.0").name == "Creative Commons Attribution 3.0 Unported"


@pytest.mark.parametrize("spelling", ["CC BY-SA 4.0", "cc-by-sa-4.0", " CC_BY_SA_4.0 "])
def test_license_info_common_spellings(spelling: str) -> None:
    assert license_info(spelling).spdx_id == "CC-BY-SA-4.0"


def test_license_info_unknown_id() -> None:
    with pytest.raises(ManifestError) as excinfo:
        license_info("CC-BY-NC-SA")
    message = str(excinfo.value)
    assert "unknown licence id 'CC-BY-NC-SA'" in message
    assert "CC-BY-NC-SA-4.0" in message


@pytest.mark.parametrize(
    "name, uri, expected",
    [
        ("Creative Commons Attribution 3.0 Unported License", "http://creativecommons.org/licenses/by/3.0/", "CC-BY-3.0"),
        ("Creative Commons Attribution 4.0 International License", "https://creativecommons.org/licenses/by/4.0/", "CC-BY-4.0"),
        ("Creative Commons Attribution-NonCommercial 3.0 Unported License", None, "CC-BY-NC-3.0"),
        ("Creative Commons Attribution-NonCommercial 4.0 International License", "", "CC-BY-NC-4.0"),
        (None, "https://creativecommons.org/licenses/by-nc-sa/4.0/legalcode", "CC-BY-NC-SA-4.0"),
        ("CC0", "https://creativecommons.org/publicdomain/zero/1.0/", "CC0-1.0"),
        ("TCIA Restricted", "https://www.cancerimagingarchive.net/data-usage-policies-and-restrictions/", None),
        (None, None, None),
    ],
)
def test_spdx_from_tcia(name, uri, expected) -> None:
    assert spdx_from_tcia(name, uri) == expected


def test_check_tcia_license_match() -> None:
    check_tcia_license(
        "colonog", "CC BY 3.0", "Creative Commons Attribution 3.0 Unported License",
        "https://creativecommons.org/licenses/by/3.0/",
    )


def test_check_tcia_license_mismatch() -> None:
    with pytest.raises(FetchError) as excinfo:
        check_tcia_license(
            "colonog", "CC-BY-4.0", "Creative Commons Attribution 3.0 Unported License",
            "https://creativecommons.org/licenses/by/3.0/",
        )
    message = str(excinfo.value)
    assert "source 'colonog'" in message
    assert "manifest states licence CC-BY-4.0" in message
    assert "Attribution 3.0 Unported" in message
    assert "correct the manifest" in message


def test_check_tcia_license_unreadable() -> None:
    with pytest.raises(FetchError, match="not a licence this tool recognizes"):
        check_tcia_license("hnscc", "CC-BY-3.0", "TCIA Restricted", None)


def test_required_citations_tcia() -> None:
    record = SourceRecord(id="covid", kind="covid19", license="CC-BY-4.0", doi="10.7937/tcia.2020.gqry-nc81")
    assert required_citations(record) == ["doi:10.7937/tcia.2020.gqry-nc81", TCIA_CITATION]
    assert "doi:10.1007/s10278-013-9622-7" in TCIA_CITATION


def test_required_citations_msd_and_masks() -> None:
    msd = SourceRecord(id="msd", kind="msd", license="CC-BY-SA-4.0", citation="Task03_Liver")
    assert required_citations(msd) == ["Task03_Liver", *MSD_CITATIONS]
    assert "doi:10.1038/s41467-022-30695-9" in MSD_CITATIONS[0]
    assert "arXiv:1902.09063" in MSD_CITATIONS[1]
    masks = SourceRecord(id="masks", kind="masks-hf", license="CC-BY-NC-SA-4.0")
    assert required_citations(masks) == [CTSPINE1K_CITATION]
    assert "arXiv:2105.14711" in CTSPINE1K_CITATION


def test_conflicts_msd_sharealike_vs_noncommercial() -> None:
    msd = SourceRecord(id="msd", kind="msd", license="CC-BY-SA-4.0")
    masks = SourceRecord(id="masks", kind="masks-folder", license="CC-BY-NC-SA-4.0")
    conflicts = license_conflicts({"MSD-T10": {"images": msd, "masks": masks}})
    assert len(conflicts) == 1
    text = conflicts[0]
    assert text.startswith("MSD-T10: ")
    assert "images from 'msd' are CC BY-SA 4.0 (ShareAlike)" in text
    assert "masks from 'masks' are CC BY-NC-SA 4.0 (NonCommercial, ShareAlike)" in text
    assert "no single licence satisfies both" in text
    assert "commercial use" in text


def test_conflicts_none_for_compatible() -> None:
    covid = SourceRecord(id="covid", kind="covid19", license="CC-BY-4.0")
    colonog = SourceRecord(id="tcia", kind="nbia", license="CC-BY-3.0")
    assert license_conflicts({"COVID-19": [covid], "COLONOG": [colonog, colonog]}) == []


def test_conflicts_sharealike_with_other_licence() -> None:
    images = SourceRecord(id="covid", kind="covid19", license="CC-BY-4.0")
    masks = SourceRecord(id="masks", kind="masks-folder", license="CC-BY-NC-SA-4.0")
    conflicts = license_conflicts({"COVID-19": {"images": images, "masks": masks}})
    assert len(conflicts) == 1
    assert "CC-BY-NC-SA-4.0 requires adaptations to be shared under that same licence" in conflicts[0]


def test_conflicts_no_derivatives_and_unknown() -> None:
    nd = SourceRecord(id="nd", kind="local-nifti", license="CC-BY-ND-4.0")
    odd = SourceRecord(id="odd", kind="local-nifti", license="Custom-Terms")
    conflicts = license_conflicts({"A": [nd], "B": {"masks": odd}})
    assert len(conflicts) == 2
    assert "does not allow sharing adapted material" in conflicts[0]
    assert "'Custom-Terms', which this tool does not recognize" in conflicts[1]


def test_licenses_table_urls_unique() -> None:
    urls = [info.url for info in LICENSES.values()]
    assert len(urls) == len(set(urls))


def test_required_citations_no_duplicates() -> None:
    msd = SourceRecord(
        id="msd", kind="msd", license="CC-BY-SA-4.0", doi="10.1038/s41467-022-30695-9",
        citation="Antonelli et al., The Medical Segmentation Decathlon, doi:10.1038/s41467-022-30695-9",
    )
    citations = required_citations(msd)
    assert citations == [msd.citation, MSD_CITATIONS[1]]
    masks = SourceRecord(
        id="masks", kind="masks-hf", license="CC-BY-NC-SA-4.0", doi="10.48550/arXiv.2105.14711",
        citation="Deng et al. CTSpine1K.",
    )
    assert required_citations(masks) == ["Deng et al. CTSpine1K.", "doi:10.48550/arXiv.2105.14711"]
