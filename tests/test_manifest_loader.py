"""Tests for manifest loading and validation: file and folder forms, and each kind of bad input."""
from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from ctspine_builder.errors import ManifestError
from ctspine_builder.manifest.loader import ManifestValidationError, load_manifest, validate_manifest
from ctspine_builder.manifest.model import FileRef
from ctspine_builder.manifest.schema import KNOWN_SOURCE_KINDS, SOURCE_OPTIONS
from ctspine_builder.sources.base import source_kinds

HASH = "0123456789abcdef" * 4

BASE = {
    "format": 1,
    "dataset": {"name": "tiny", "version": "0.1.0", "citation": "Tiny test dataset."},
    "sources": [
        {"id": "scans", "kind": "local-dicom", "license": "CC0-1.0", "locator": "dicom", "citation": "Synthetic scans."},
        {"id": "labels", "kind": "local-nifti", "license": "CC-BY-4.0", "locator": "masks", "doi": "10.1234/tiny.5"},
    ],
    "cases": [
        {
            "case_id": "case_001",
            "subset": "SYN",
            "split": "trainset",
            "image": {"source": "scans", "locator": "case_001"},
            "mask": {"source": "labels", "locator": "case_001.nii.gz"},
            "image_sha256": HASH,
        },
        {
            "case_id": "case_002",
            "subset": "SYN",
            "split": "test_public",
            "image": {"source": "scans", "locator": "case_002"},
            "mask": None,
        },
    ],
}


def base_manifest() -> dict:
    """Return a fresh copy of the valid two-case manifest."""
    return copy.deepcopy(BASE)


def write_file_manifest(folder: Path, data: dict, name: str = "manifest.json") -> Path:
    """Write `data` as a single-file manifest and return its path."""
    path = folder / name
    path.write_text(json.dumps(data, indent=2), encoding="utf-8")
    return path


def write_folder_manifest(folder: Path, data: dict, case_files: dict[str, list[dict]]) -> Path:
    """Write manifest.json without cases plus cases*.jsonl files; return the folder."""
    folder.mkdir(parents=True, exist_ok=True)
    top = {key: value for key, value in data.items() if key != "cases"}
    (folder / "manifest.json").write_text(json.dumps(top), encoding="utf-8")
    for name, cases in case_files.items():
        lines = [json.dumps(case) for case in cases]
        (folder / name).write_text("\n".join(lines) + "\n", encoding="utf-8")
    return folder


def only_problem(path: Path):
    """Validate `path` and return its single problem, failing when there are more or none."""
    problems = validate_manifest(path)
    assert len(problems) == 1, [problem.format() for problem in problems]
    return problems[0]


# --- valid manifests -------------------------------------------------------


def test_file_form_loads(tmp_path):
    path = write_file_manifest(tmp_path, base_manifest())

    manifest = load_manifest(path)

    assert validate_manifest(path) == []
    assert manifest.dataset.name == "tiny"
    assert manifest.dataset.version == "0.1.0"
    assert list(manifest.sources) == ["scans", "labels"]
    assert manifest.sources["labels"].doi == "10.1234/tiny.5"
    assert [case.case_id for case in manifest.cases] == ["case_001", "case_002"]
    assert manifest.cases[0].mask == FileRef("labels", "case_001.nii.gz")
    assert manifest.cases[0].image_sha256 == HASH
    assert manifest.cases[1].mask is None
    assert manifest.root == tmp_path.resolve()


def test_folder_form_loads_all_case_files(tmp_path):
    data = base_manifest()
    cases = data["cases"]
    folder = write_folder_manifest(tmp_path / "m", data, {"cases-b.jsonl": [cases[1]], "cases-a.jsonl": [cases[0]]})

    manifest = load_manifest(folder)

    assert validate_manifest(folder) == []
    # cases*.jsonl files are read in file-name order.
    assert [case.case_id for case in manifest.cases] == ["case_001", "case_002"]
    assert manifest.root == folder.resolve()


def test_folder_form_accepts_cases_in_manifest_json(tmp_path):
    data = base_manifest()
    extra = copy.deepcopy(data["cases"][1])
    extra["case_id"] = "case_003"
    folder = tmp_path / "m"
    folder.mkdir()
    write_file_manifest(folder, data)
    (folder / "cases-more.jsonl").write_text(json.dumps(extra) + "\n\n", encoding="utf-8")

    manifest = load_manifest(folder)

    assert [case.case_id for case in manifest.cases] == ["case_001", "case_002", "case_003"]


def test_relative_locator_resolves_against_manifest_folder(tmp_path, monkeypatch):
    path = write_file_manifest(tmp_path, base_manifest())
    monkeypatch.chdir("/")

    manifest = load_manifest(path)

    assert manifest.resolve_path(manifest.sources["scans"].locator) == tmp_path.resolve() / "dicom"
    assert manifest.resolve_path("/abs/folder") == Path("/abs/folder")


def test_license_ref_is_accepted(tmp_path):
    data = base_manifest()
    data["sources"][0]["license"] = "LicenseRef-TCIA-Restricted"
    path = write_file_manifest(tmp_path, data)

    assert validate_manifest(path) == []


def test_empty_case_locator_is_accepted(tmp_path):
    data = base_manifest()
    data["cases"][1]["image"]["locator"] = ""
    path = write_file_manifest(tmp_path, data)

    assert validate_manifest(path) == []


# --- file-level faults ------------------------------------------------------


def test_json_syntax_error_names_line_and_column(tmp_path):
    path = tmp_path / "manifest.json"
    path.write_text('{\n  "format": 1,\n  "dataset": {"name": "x",}\n}\n', encoding="utf-8")

    problem = only_problem(path)

    assert problem.file == str(path)
    assert problem.record == "line 3, column 27"
    assert problem.field == "-"
    assert problem.message.startswith("invalid JSON: ")


def test_jsonl_syntax_error_names_line(tmp_path):
    data = base_manifest()
    folder = write_folder_manifest(tmp_path / "m", data, {"cases-a.jsonl": data["cases"]})
    case_file = folder / "cases-a.jsonl"
    case_file.write_text(case_file.read_text() + '{"case_id": "broken"\n', encoding="utf-8")

    problem = only_problem(folder)

    assert problem.file == str(case_file)
    assert problem.record.startswith("line 3, column ")
    assert "invalid JSON" in problem.message
    assert "one case object" in problem.message


def test_missing_path_is_reported(tmp_path):
    problem = only_problem(tmp_path / "absent.json")

    assert problem.file == str(tmp_path / "absent.json")
    assert problem.message.startswith("not found")


def test_folder_without_manifest_json(tmp_path):
    problem = only_problem(tmp_path)

    assert problem.file == str(tmp_path / "manifest.json")
    assert "must contain manifest.json" in problem.message


def test_top_level_not_object(tmp_path):
    path = tmp_path / "m.json"
    path.write_text("[1, 2]", encoding="utf-8")

    problem = only_problem(path)

    assert problem.record == "top level"
    assert "expected a JSON object" in problem.message


def test_non_utf8_file(tmp_path):
    path = tmp_path / "m.json"
    path.write_bytes(b'{"format": 1, "dataset": "\xff"}')

    problem = only_problem(path)

    assert "not UTF-8" in problem.message


# --- top level and dataset --------------------------------------------------


def test_unknown_format_version(tmp_path):
    data = base_manifest()
    data["format"] = 2
    path = write_file_manifest(tmp_path, data)

    problem = only_problem(path)

    assert (problem.record, problem.field) == ("top level", "format")
    assert problem.message == "unsupported format version 2; this ctspine reads format 1"


def test_missing_format(tmp_path):
    data = base_manifest()
    del data["format"]
    path = write_file_manifest(tmp_path, data)

    problem = only_problem(path)

    assert problem.field == "format"
    assert "missing required field" in problem.message


def test_format_true_is_not_one(tmp_path):
    data = base_manifest()
    data["format"] = True
    path = write_file_manifest(tmp_path, data)

    problem = only_problem(path)

    assert problem.message == "expected the integer 1, got boolean"


def test_missing_dataset_name(tmp_path):
    data = base_manifest()
    del data["dataset"]["name"]
    path = write_file_manifest(tmp_path, data)

    problem = only_problem(path)

    assert (problem.record, problem.field, problem.message) == ("dataset", "name", "missing required field")


@pytest.mark.parametrize("version", ["1.0", "v1.0.0", "01.0.0", "1.0.0-", "one"])
def test_bad_semver(tmp_path, version):
    data = base_manifest()
    data["dataset"]["version"] = version
    path = write_file_manifest(tmp_path, data)

    problem = only_problem(path)

    assert (problem.record, problem.field) == ("dataset", "version")
    assert problem.message.startswith(f"invalid semantic version {json.dumps(version)}")


@pytest.mark.parametrize("version", ["0.0.1", "1.2.3-rc.1", "2.0.0+build.7", "10.20.30-alpha-1+x"])
def test_good_semver(tmp_path, version):
    data = base_manifest()
    data["dataset"]["version"] = version
    path = write_file_manifest(tmp_path, data)

    assert validate_manifest(path) == []


def test_unknown_top_level_key(tmp_path):
    data = base_manifest()
    data["source"] = []
    path = write_file_manifest(tmp_path, data)

    problem = only_problem(path)

    assert (problem.record, problem.field) == ("top level", "source")
    assert problem.message.startswith("unknown field; allowed fields: format, dataset, sources, cases")


def test_no_cases(tmp_path):
    data = base_manifest()
    data["cases"] = []
    path = write_file_manifest(tmp_path, data)

    problem = only_problem(path)

    assert (problem.record, problem.field) == ("top level", "cases")
    assert problem.message.startswith("no cases")


def test_duplicate_json_key(tmp_path):
    path = tmp_path / "m.json"
    text = json.dumps(base_manifest()).replace('"name": "tiny"', '"name": "tiny", "name": "other"')
    path.write_text(text, encoding="utf-8")

    problem = only_problem(path)

    assert (problem.record, problem.field) == ("dataset", "name")
    assert "appears more than once" in problem.message


# --- sources ----------------------------------------------------------------


def test_missing_license(tmp_path):
    data = base_manifest()
    del data["sources"][1]["license"]
    path = write_file_manifest(tmp_path, data)

    problem = only_problem(path)

    assert (problem.record, problem.field, problem.message) == ('sources[1] "labels"', "license", "missing required field")


def test_non_spdx_license(tmp_path):
    data = base_manifest()
    data["sources"][0]["license"] = "CC BY 4.0"
    path = write_file_manifest(tmp_path, data)

    problem = only_problem(path)

    assert (problem.record, problem.field) == ('sources[0] "scans"', "license")
    assert problem.message.startswith('"CC BY 4.0" is not an SPDX licence id')
    assert "LicenseRef-" in problem.message


def test_unknown_source_kind(tmp_path):
    data = base_manifest()
    data["sources"][0]["kind"] = "local-dcm"
    path = write_file_manifest(tmp_path, data)

    problem = only_problem(path)

    assert (problem.record, problem.field) == ('sources[0] "scans"', "kind")
    assert problem.message.startswith('unknown source kind "local-dcm"; known kinds: ')
    assert "local-dicom" in problem.message


def test_duplicate_source_id(tmp_path):
    data = base_manifest()
    data["sources"][1]["id"] = "scans"
    data["cases"][0]["mask"] = None
    path = write_file_manifest(tmp_path, data)

    problem = only_problem(path)

    assert (problem.record, problem.field) == ('sources[1] "scans"', "id")
    assert problem.message == 'duplicate source id "scans"; first defined at sources[0] "scans"'


def test_source_without_citation_or_doi(tmp_path):
    data = base_manifest()
    del data["sources"][0]["citation"]
    path = write_file_manifest(tmp_path, data)

    problem = only_problem(path)

    assert (problem.record, problem.field) == ('sources[0] "scans"', "citation")
    assert problem.message == "missing citation; give a citation, a doi, or both"


def test_invalid_doi(tmp_path):
    data = base_manifest()
    data["sources"][1]["doi"] = "https://doi.org/10.1234/tiny.5"
    path = write_file_manifest(tmp_path, data)

    problem = only_problem(path)

    assert problem.field == "doi"
    assert problem.message.startswith('invalid DOI "https://doi.org/10.1234/tiny.5"')


def test_unknown_source_key(tmp_path):
    data = base_manifest()
    data["sources"][0]["licence"] = "CC0-1.0"
    path = write_file_manifest(tmp_path, data)

    problem = only_problem(path)

    assert (problem.record, problem.field) == ('sources[0] "scans"', "licence")
    assert problem.message.startswith("unknown field; allowed fields: id, kind, license")


def test_options_must_be_object(tmp_path):
    data = base_manifest()
    data["sources"][0]["options"] = ["strict"]
    path = write_file_manifest(tmp_path, data)

    problem = only_problem(path)

    assert (problem.field, problem.message) == ("options", "expected an object, got array")


# --- cases ------------------------------------------------------------------


def test_duplicate_case_id_names_both_places(tmp_path):
    data = base_manifest()
    second = copy.deepcopy(data["cases"][0])
    folder = write_folder_manifest(tmp_path / "m", data, {"cases-a.jsonl": data["cases"], "cases-b.jsonl": [second]})

    problem = only_problem(folder)

    assert problem.file == str(folder / "cases-b.jsonl")
    assert problem.record == 'line 1, case "case_001"'
    assert problem.field == "case_id"
    assert problem.message == f'duplicate case id "case_001"; first defined in {folder / "cases-a.jsonl"} line 1, case "case_001"'


def test_unknown_split_lists_allowed(tmp_path):
    data = base_manifest()
    data["cases"][1]["split"] = "test"
    path = write_file_manifest(tmp_path, data)

    problem = only_problem(path)

    assert (problem.record, problem.field) == ('cases[1], case "case_002"', "split")
    assert problem.message == 'unknown split "test"; allowed splits: trainset, test_public, test_private'


def test_unknown_image_source(tmp_path):
    data = base_manifest()
    data["cases"][0]["image"]["source"] = "scan"
    path = write_file_manifest(tmp_path, data)

    problem = only_problem(path)

    assert (problem.record, problem.field) == ('cases[0], case "case_001"', "image.source")
    assert problem.message == 'unknown source id "scan"; sources defined: labels, scans'


def test_mask_from_dicom_source(tmp_path):
    data = base_manifest()
    data["cases"][0]["mask"]["source"] = "scans"
    path = write_file_manifest(tmp_path, data)

    problem = only_problem(path)

    assert problem.field == "mask.source"
    assert problem.message == 'source "scans" has kind "local-dicom", which cannot provide a mask'


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (HASH.upper(), "malformed SHA-256"),
        (HASH[:-1], "malformed SHA-256"),
        ("sha256:" + HASH, "malformed SHA-256"),
        (12, "expected a string of 64 lowercase hexadecimal digits, got number"),
    ],
)
def test_malformed_hash(tmp_path, value, message):
    data = base_manifest()
    data["cases"][0]["image_sha256"] = value
    path = write_file_manifest(tmp_path, data)

    problem = only_problem(path)

    assert (problem.record, problem.field) == ('cases[0], case "case_001"', "image_sha256")
    assert problem.message.startswith(message)


def test_mask_hash_without_mask(tmp_path):
    data = base_manifest()
    data["cases"][1]["mask_sha256"] = HASH
    path = write_file_manifest(tmp_path, data)

    problem = only_problem(path)

    assert problem.field == "mask_sha256"
    assert "mask is null" in problem.message


def test_missing_split_and_mask_keys(tmp_path):
    data = base_manifest()
    del data["cases"][1]["split"]
    del data["cases"][1]["mask"]
    path = write_file_manifest(tmp_path, data)

    problems = validate_manifest(path)

    assert [(p.record, p.field, p.message) for p in problems] == [
        ('cases[1], case "case_002"', "split", "missing required field"),
        ('cases[1], case "case_002"', "mask", "missing required field"),
    ]


def test_unknown_case_key(tmp_path):
    data = base_manifest()
    data["cases"][0]["image_sha"] = HASH
    path = write_file_manifest(tmp_path, data)

    problem = only_problem(path)

    assert (problem.field) == "image_sha"
    assert problem.message.startswith("unknown field; allowed fields: case_id, subset, split, image, mask")


def test_unknown_file_ref_key(tmp_path):
    data = base_manifest()
    data["cases"][0]["image"]["path"] = "x"
    path = write_file_manifest(tmp_path, data)

    problem = only_problem(path)

    assert problem.field == "image.path"
    assert problem.message == "unknown field; allowed fields: source, locator"


@pytest.mark.parametrize("case_id", ["../escape", "a/b", ".hidden", "with space"])
def test_case_id_unsafe_as_file_name(tmp_path, case_id):
    data = base_manifest()
    data["cases"][0]["case_id"] = case_id
    path = write_file_manifest(tmp_path, data)

    problem = only_problem(path)

    assert problem.field == "case_id"
    assert problem.message.startswith("invalid case id")


def test_case_line_not_object(tmp_path):
    data = base_manifest()
    folder = write_folder_manifest(tmp_path / "m", data, {"cases.jsonl": data["cases"]})
    with (folder / "cases.jsonl").open("a", encoding="utf-8") as handle:
        handle.write('"case_003"\n')

    problem = only_problem(folder)

    assert (problem.record, problem.field, problem.message) == ("line 3", "-", "expected an object, got string")


def test_wrong_field_type(tmp_path):
    data = base_manifest()
    data["cases"][0]["subset"] = 7
    path = write_file_manifest(tmp_path, data)

    problem = only_problem(path)

    assert (problem.field, problem.message) == ("subset", "expected a string, got number")


# --- load_manifest and the kind registry -----------------------------------


def test_load_manifest_raises_with_every_problem(tmp_path):
    data = base_manifest()
    data["cases"][0]["split"] = "train"
    data["cases"][1]["image_sha256"] = "abc"
    path = write_file_manifest(tmp_path, data)

    with pytest.raises(ManifestValidationError) as caught:
        load_manifest(path)

    assert isinstance(caught.value, ManifestError)
    assert len(caught.value.problems) == 2
    text = caught.value.format()
    assert "2 problem(s)" in text
    assert f'{path}: cases[0], case "case_001": split: unknown split "train"' in text
    assert f'{path}: cases[1], case "case_002": image_sha256: malformed SHA-256 "abc"' in text


def test_registered_kinds_are_documented():
    undocumented = sorted(set(source_kinds()) - set(KNOWN_SOURCE_KINDS))

    assert undocumented == [], "registered source kinds missing from KNOWN_SOURCE_KINDS and docs/manifest.md"


@pytest.mark.parametrize("kind", KNOWN_SOURCE_KINDS)
def test_documented_kind_is_registered(kind):
    assert kind in source_kinds(), f"source kind {kind!r} is documented but no module registers it"


def test_unknown_option_for_kind(tmp_path):
    data = base_manifest()
    data["sources"][0]["options"] = {"geometry": "simpleitk", "geometri": "strict"}
    path = write_file_manifest(tmp_path, data)

    problem = only_problem(path)

    assert (problem.record, problem.field) == ('sources[0] "scans"', "options.geometri")
    assert problem.message == 'unknown option for kind "local-dicom"; allowed options: geometry, series_uid'


def test_option_keys_read_by_sources_are_documented():
    # Each key that a source module reads from its record's options must be
    # allowed by SOURCE_OPTIONS for the kinds that module registers, or
    # validation would reject a manifest that the source accepts.
    import re

    import ctspine_builder.sources as sources_package

    checked = set()
    for module in sorted(Path(sources_package.__file__).parent.glob("*.py")):
        text = module.read_text(encoding="utf-8")
        kinds = set(re.findall(r"register_source_kind\(\s*\"([\w-]+)\"", text))
        if not kinds or not kinds <= set(SOURCE_OPTIONS):
            continue
        read_keys = set(re.findall(r"(?:record|source)\.options(?:\.get\(|\[)\s*\"(\w+)\"", text))
        allowed = set().union(*(SOURCE_OPTIONS[kind] for kind in kinds))
        assert read_keys <= allowed, f"{module.name} reads options missing from SOURCE_OPTIONS: {sorted(read_keys - allowed)}"
        checked |= kinds

    # The pattern must still find the modules of the kinds listed, or this test checks nothing.
    assert checked == set(SOURCE_OPTIONS)


def test_folder_manifest_json_named_directly_reads_its_cases() -> None:
    from ctspine_builder.manifest.loader import resolve_manifest

    folder = resolve_manifest(None)
    manifest = load_manifest(folder / "manifest.json")
    assert len(manifest.cases) == 1005
