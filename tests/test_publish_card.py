"""Tests for the released card: gating YAML, licence declarations and release notes."""
from __future__ import annotations

import pytest
from huggingface_hub import DatasetCard

from ctspine_builder.errors import PublishError
from ctspine_builder.package.card_release import (
    ReleaseNotes,
    compare_builds,
    release_card,
    split_card,
    undeclared_licenses,
)
from hubdata import CARD_TEMPLATE


def case(case_id: str, split: str = "trainset", image: str = "a", mask: str = "b") -> dict:
    return {"case_id": case_id, "subset": "MSD-T10", "split": split, "image_content_sha256": image, "mask_content_sha256": mask}


def test_compare_builds_added_removed_changed():
    before = {"cases": [case("liver_0"), case("liver_1"), case("liver_2")]}
    after = {"cases": [case("liver_0"), case("liver_1", mask="c"), case("liver_3")]}
    notes = compare_builds(before, after, "1.1.0", "1.0.0")
    assert notes.added == ["liver_3"]
    assert notes.removed == ["liver_2"]
    assert notes.changed == ["liver_1"]


def test_compare_builds_split_move_is_change():
    notes = compare_builds({"cases": [case("liver_0")]}, {"cases": [case("liver_0", split="test_public")]}, "2.0.0", "1.0.0")
    assert notes.changed == ["liver_0"]


def test_first_release_lists_all_as_added():
    notes = compare_builds(None, {"cases": [case("liver_0"), case("liver_1")]}, "1.0.0", None)
    assert notes.added == ["liver_0", "liver_1"]
    assert "First release: 2 cases." in release_card(CARD_TEMPLATE, notes, gated=False)


def test_gated_card_parses_as_hub_metadata():
    licenses = {"msd": "CC-BY-SA-4.0", "ctspine1k-masks": "CC-BY-NC-SA-4.0"}
    text = release_card(CARD_TEMPLATE, ReleaseNotes("1.0.0", None, added=["liver_0"]), gated=True, licenses=licenses)
    data = DatasetCard(text).data.to_dict()
    assert "ctspine1k-masks: CC-BY-NC-SA-4.0; msd: CC-BY-SA-4.0" in data["extra_gated_prompt"]
    assert data["extra_gated_fields"]["I will not try to identify any participant"] == "checkbox"
    assert data["extra_gated_fields"]["I will use the data for non-commercial purposes only"] == "checkbox"
    assert data["configs"][0]["data_files"][0] == {"split": "trainset", "path": "data/trainset/**"}
    assert data["license"] == "other"


def test_gated_without_nc_licence_asks_no_nc_promise():
    text = release_card(CARD_TEMPLATE, ReleaseNotes("1.0.0", None), gated=True, licenses={"phantom": "CC0-1.0"})
    fields = DatasetCard(text).data.to_dict()["extra_gated_fields"]
    assert "I will use the data for non-commercial purposes only" not in fields
    assert "I agree to the licence terms of every source listed in LICENSES/" in fields


def test_ungated_card_has_no_gating_fields():
    text = release_card(CARD_TEMPLATE, ReleaseNotes("1.0.0", None), gated=False)
    assert "extra_gated" not in text


def test_release_notes_replaced_not_stacked():
    once = release_card(CARD_TEMPLATE, ReleaseNotes("1.0.0", None, added=["liver_0"]), gated=False)
    twice = release_card(once, ReleaseNotes("1.1.0", "1.0.0", changed=["liver_0"]), gated=False)
    assert twice.count("## Release notes") == 1
    assert "### v1.1.0" in twice
    assert "### v1.0.0" not in twice


def test_long_case_lists_are_cut():
    notes = ReleaseNotes("2.0.0", "1.0.0", added=[f"case_{index:03d}" for index in range(120)])
    text = release_card(CARD_TEMPLATE, notes, gated=False)
    assert "Added (120)" in text
    assert "and 70 more (see build.json)" in text


@pytest.mark.parametrize(("metadata", "missing"), [
    ({"license": ["cc-by-4.0", "cc-by-sa-4.0", "cc-by-nc-sa-4.0"]}, []),
    ({"license": "cc-by-4.0"}, ["CC-BY-NC-SA-4.0", "CC-BY-SA-4.0"]),
    ({"license": ["cc-by-4.0", "other"]}, ["CC-BY-NC-SA-4.0", "CC-BY-SA-4.0"]),
    ({"license": ["other"], "license_name": "mixed", "license_link": "LICENSES/"}, []),
])
def test_undeclared_licenses(metadata, missing):
    assert undeclared_licenses(metadata, {"CC-BY-4.0", "CC-BY-SA-4.0", "CC-BY-NC-SA-4.0"}) == missing


def test_card_without_front_matter_rejected():
    with pytest.raises(PublishError, match="no YAML front matter"):
        split_card("# Title only\n")


def test_card_with_unclosed_front_matter_rejected():
    with pytest.raises(PublishError, match="not closed"):
        split_card("---\nlicense: mit\n# body\n")
