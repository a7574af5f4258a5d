"""Tests for `ctspine manifest validate|stats` and for finding installed manifests."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from ctspine_builder.cli import main
from ctspine_builder.errors import ManifestError
from ctspine_builder.manifest.loader import installed_manifests, resolve_manifest

MINIMAL = {
    "format": 1,
    "dataset": {"name": "mini", "version": "1.0.0", "citation": "Mini."},
    "sources": [{"id": "img", "kind": "local-nifti", "license": "CC0-1.0", "locator": ".", "citation": "Synthetic."}],
    "cases": [
        {"case_id": f"c{index}", "subset": subset, "split": split, "image": {"source": "img", "locator": f"c{index}.nii.gz"},
         "mask": {"source": "img", "locator": f"c{index}_seg.nii.gz"} if index % 2 else None}
        for index, (subset, split) in enumerate(
            [("A", "trainset"), ("A", "trainset"), ("A", "test_public"), ("B", "test_private"), ("B", "trainset")]
        )
    ],
}


def write_minimal(tmp_path: Path) -> Path:
    """Write the five-case manifest and return its path."""
    path = tmp_path / "mini.json"
    path.write_text(json.dumps(MINIMAL), encoding="utf-8")
    return path


def run(*args: str):
    """Invoke the ctspine CLI as a user would and return the click Result."""
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def test_validate_valid_manifest(tmp_path):
    result = run("manifest", "validate", str(write_minimal(tmp_path)))

    assert result.exit_code == 0
    assert result.output.strip() == "valid: 5 cases, 1 sources"


def test_validate_lists_every_problem(tmp_path):
    data = json.loads(json.dumps(MINIMAL))
    data["cases"][0]["split"] = "val"
    data["cases"][1]["image"]["source"] = "nope"
    data["sources"][0]["license"] = ""
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(data), encoding="utf-8")

    result = CliRunner().invoke(main, ["manifest", "validate", str(path)])

    assert result.exit_code == 1
    lines = result.stdout.strip().splitlines()
    assert lines == [
        f'{path}: sources[0] "img": license: must not be empty',
        f'{path}: cases[0], case "c0": split: unknown split "val"; allowed splits: trainset, test_public, test_private',
        f'{path}: cases[1], case "c1": image.source: unknown source id "nope"; sources defined: img',
    ]
    assert f"3 problem(s) found in {path}" in result.stderr


def test_validate_missing_path_exits_1(tmp_path):
    result = CliRunner().invoke(main, ["manifest", "validate", str(tmp_path / "absent")])

    assert result.exit_code == 1
    assert "not found" in result.stderr
    assert "Traceback" not in result.output


def test_stats_json_counts(tmp_path):
    result = run("manifest", "stats", str(write_minimal(tmp_path)), "--json")

    stats = json.loads(result.output)
    assert result.exit_code == 0
    assert stats["cases"] == 5
    assert stats["with_mask"] == 2
    assert stats["subsets"] == {"A": 3, "B": 2}
    assert stats["splits"] == {"trainset": 3, "test_public": 1, "test_private": 1}
    assert stats["subset_split"] == {
        "A": {"trainset": 2, "test_public": 1, "test_private": 0},
        "B": {"trainset": 1, "test_public": 0, "test_private": 1},
    }


def test_stats_table(tmp_path):
    result = run("manifest", "stats", str(write_minimal(tmp_path)))

    lines = result.output.splitlines()
    assert result.exit_code == 0
    assert lines[0] == "mini 1.0.0: 5 cases (2 with a mask), 1 sources"
    assert lines[2].split() == ["subset", "trainset", "test_public", "test_private", "total"]
    assert lines[3].split() == ["A", "2", "1", "0", "3"]
    assert lines[4].split() == ["B", "1", "0", "1", "2"]
    assert lines[5].split() == ["total", "3", "1", "1", "5"]


def test_stats_invalid_manifest_exits_1(tmp_path):
    path = tmp_path / "broken.json"
    path.write_text("{", encoding="utf-8")

    result = CliRunner().invoke(main, ["manifest", "stats", str(path)])

    assert result.exit_code == 1
    assert "invalid manifest, 1 problem(s)" in result.stderr
    assert "invalid JSON" in result.stderr


def test_resolve_default_is_installed_ctspine1k():
    path = resolve_manifest(None)

    assert path.name == "ctspine1k"
    assert (path / "manifest.json").is_file()
    assert resolve_manifest("ctspine1k") == path
    assert "ctspine1k" in installed_manifests()


def test_resolve_prefers_existing_path(tmp_path, monkeypatch):
    local = tmp_path / "ctspine1k"
    local.mkdir()
    monkeypatch.chdir(tmp_path)

    assert resolve_manifest("ctspine1k") == Path("ctspine1k")
    assert resolve_manifest(str(write_minimal(tmp_path))) == tmp_path / "mini.json"


def test_resolve_unknown_name_lists_installed():
    with pytest.raises(ManifestError) as caught:
        resolve_manifest("no-such-manifest")

    assert "'no-such-manifest' not found" in caught.value.format()
    assert "ctspine1k" in caught.value.format()


def test_docs_example_is_valid(tmp_path):
    text = (Path(__file__).resolve().parents[1] / "docs" / "manifest.md").read_text(encoding="utf-8")
    example = text.split("```json\n", 1)[1].split("```", 1)[0]
    path = tmp_path / "manifest.json"
    path.write_text(example, encoding="utf-8")

    result = run("manifest", "validate", str(path))

    assert result.exit_code == 0
    assert result.output.strip() == "valid: 3 cases, 2 sources"
