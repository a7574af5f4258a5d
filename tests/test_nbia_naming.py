"""Tests of the NBIA Data Retriever folder-name rules and hint resolution."""
from __future__ import annotations

import pytest

from ctspine_builder.errors import FetchError
from ctspine_builder.sources.tcia_naming import (
    clean_description,
    format_series_number,
    format_study_date,
    parse_folder_hint,
    resolve_hint,
    series_folder_name,
    study_folder_name,
)

STUDY_UID = "1.3.6.1.4.1.9328.50.4.12345.1240"
SERIES_UID = "1.3.6.1.4.1.9328.50.4.98760.4.1"


def record(**overrides) -> dict:
    values = {
        "SeriesInstanceUID": SERIES_UID,
        "StudyInstanceUID": STUDY_UID,
        "SeriesNumber": 4,
        "SeriesDescription": "Colon 1.0 B30f (Adult)",
        "StudyDate": "2001-06-04 00:00:00.0",
        "StudyDesc": "Abdomen^CTC",
        "ImageCount": 420,
    }
    values.update(overrides)
    return {key: value for key, value in values.items() if value is not None}


def test_clean_description_rules():
    assert clean_description("Colon 1.0 B30f (Adult)") == "Colon 1.0 B30f Adult"
    assert clean_description("Abd/Pel_w/o") == "Abd-Pelw-o"
    assert clean_description("null") == ""
    assert clean_description(None) == ""
    assert len(clean_description("x" * 80)) == 53


def test_series_number_printed_as_float():
    assert format_series_number(4) == "4.000000"
    assert format_series_number("2") == "2.000000"
    assert format_series_number(None) == ""


def test_study_date_reformatted():
    assert format_study_date("2001-06-04 00:00:00.0") == "06-04-2001"
    assert format_study_date("20010604") == "06-04-2001"
    assert format_study_date(None) == ""


def test_folder_names_with_dotted_suffixes():
    assert series_folder_name(record()) == "4.000000-Colon 1.0 B30f Adult-0.4.1"
    assert study_folder_name(record()) == "06-04-2001-AbdomenCTC-.1240"


def test_study_folder_without_study_id_or_description():
    assert study_folder_name(record(StudyDesc=None)) == "06-04-2001-.1240"
    assert study_folder_name(record(StudyID="7781")) == "06-04-2001-7781-AbdomenCTC-.1240"


def test_study_description_cut_at_53_characters():
    long_desc = "A" * 60
    assert study_folder_name(record(StudyDesc=long_desc)) == f"06-04-2001-{'A' * 53}-.1240"


def test_parse_hint_parts():
    hint = parse_folder_hint("CTC-1/06-04-2001-AbdomenCTC-.1240/4.000000-Colon 1.0 B30f Adult-0.4.1")
    assert hint.patient_id == "CTC-1"
    assert hint.study_suffix == ".1240"
    assert hint.series_suffix == "0.4.1"
    assert hint.series_number == "4.000000"
    assert hint.series_description == "Colon 1.0 B30f Adult"


def test_parse_hint_without_description():
    hint = parse_folder_hint("P/01-01-2000-12345/3.000000-67890")
    assert hint.series_description == ""
    assert hint.series_suffix == "67890"


def test_parse_hint_wrong_shape_is_rejected():
    with pytest.raises(FetchError, match="does not have the form PatientID/<study folder>/<series folder>"):
        parse_folder_hint("P/only-two")


def test_resolve_picks_the_matching_series():
    other = record(SeriesInstanceUID="1.3.6.1.4.1.9328.50.4.98760.5.2", SeriesNumber=5)
    hint = "CTC-1/06-04-2001-1-Abdomen CTC-.1240/4.000000-Colon 1.0 B30f Adult-0.4.1"
    assert resolve_hint(hint, [other, record()])["SeriesInstanceUID"] == SERIES_UID


def test_resolve_checks_description():
    hint = "CTC-1/06-04-2001-.1240/4.000000-Colon 5.0 B30f Adult-0.4.1"
    with pytest.raises(FetchError, match="no series matches"):
        resolve_hint(hint, [record()])


def test_resolve_no_match_lists_candidates():
    hint = "CTC-1/06-04-2001-.1240/9.000000-Colon 1.0 B30f Adult-0.4.1"
    with pytest.raises(FetchError) as error:
        resolve_hint(hint, [record()], case_id="CTC-1")
    message = str(error.value)
    assert message.startswith("case CTC-1: no series matches")
    assert "available series" in message
    assert f"SeriesInstanceUID {SERIES_UID}" in message
    assert "ImageCount 420" in message


def test_resolve_several_matches_is_an_error():
    twin = record(StudyInstanceUID="1.3.6.1.4.1.9328.50.4.55555.1240", ImageCount=380)
    hint = "CTC-1/06-04-2001-.1240/4.000000-Colon 1.0 B30f Adult-0.4.1"
    with pytest.raises(FetchError) as error:
        resolve_hint(hint, [record(), twin])
    message = str(error.value)
    assert "2 series match" in message
    assert "ImageCount 380" in message
    assert "ImageCount 420" in message


def test_resolve_several_matches_split_by_study_date():
    twin = record(StudyInstanceUID="1.3.6.1.4.1.9328.50.4.55555.1240", StudyDate="2002-01-01 00:00:00.0")
    hint = "CTC-1/06-04-2001-.1240/4.000000-Colon 1.0 B30f Adult-0.4.1"
    assert resolve_hint(hint, [twin, record()])["StudyInstanceUID"] == STUDY_UID


def test_resolve_several_matches_split_by_study_id():
    twin_uid = "1.3.6.1.4.1.9328.50.4.11110.4.1"  # same suffix "0.4.1", another study with the same suffix
    twin = record(SeriesInstanceUID=twin_uid, StudyInstanceUID="1.3.6.1.4.1.9328.50.4.55555.1240")
    metadata = {SERIES_UID: {"StudyID": "7781"}, twin_uid: {"StudyID": "9999"}}
    looked_up: list[list[str]] = []

    def study_ids(uids: list[str]) -> dict:
        looked_up.append(uids)
        return {uid: metadata[uid] for uid in uids}

    hint = "CTC-1/06-04-2001-7781-AbdomenCTC-.1240/4.000000-Colon 1.0 B30f Adult-0.4.1"
    chosen = resolve_hint(hint, [twin, record()], study_ids=study_ids)
    assert chosen["SeriesInstanceUID"] == SERIES_UID
    assert len(looked_up) == 1
