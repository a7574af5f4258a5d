"""Tests of the package stage: card, metadata.jsonl, licences, build.json and SHA256SUMS."""
from __future__ import annotations

import json
import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import yaml

from ctspine_builder.fileio import sha256_content, sha256_file
from ctspine_builder.manifest.model import DatasetInfo, Manifest, SourceRecord
from ctspine_builder.nifti import save_nifti
from ctspine_builder.package import CaseEntry, package_dataset
from ctspine_builder.package.buildinfo import read_entries
from ctspine_builder.package.layout import image_relpath, mask_relpath, sidecar_relpath

SOURCES = {
    "images": SourceRecord("images", "local-nifti", "CC-BY-SA-4.0", citation="Image paper.", doi="10.1234/images", locator="x"),
    "masks": SourceRecord("masks", "local-nifti", "CC-BY-NC-SA-4.0", citation="Mask paper.", locator="x"),
    "odd": SourceRecord("odd", "local-nifti", "LicenseRef-Custom-Terms", citation="Odd source.", locator="x"),
}


def make_manifest(root: Path) -> Manifest:
    return Manifest(
        dataset=DatasetInfo("packtest", "1.2.3", "Cite the package test.", pretty_name="Package test"),
        sources=dict(SOURCES),
        cases=[],
        root=root,
    )


def add_case(out: Path, case_id: str, split: str, *, mask: bool = True, image_source: str = "images") -> CaseEntry:
    """Write a small image (and mask) for a case and return its entry."""
    rng = np.random.default_rng(abs(hash(case_id)) % 2**32)
    image = rng.integers(-1000, 1000, size=(6, 5, 4)).astype(np.int16)
    save_nifti(image, np.diag([1.0, 1.0, 2.0, 1.0]), out / image_relpath(split, case_id))
    mask_file = None
    if mask:
        save_nifti((image > 0).astype(np.uint8) * 19, np.diag([1.0, 1.0, 2.0, 1.0]), out / mask_relpath(split, case_id))
        mask_file = mask_relpath(split, case_id)
    (out / "sidecars").mkdir(parents=True, exist_ok=True)
    (out / sidecar_relpath(case_id)).write_text('{"Modality": "CT"}\n')
    return CaseEntry(
        case_id=case_id,
        subset="SUB",
        split=split,
        has_mask=mask,
        image_content_sha256=sha256_content(out / image_relpath(split, case_id)),
        mask_content_sha256=sha256_content(out / mask_file) if mask_file else None,
        image_source=image_source,
        image_license=SOURCES[image_source].license,
        mask_source="masks" if mask else None,
        mask_license=SOURCES["masks"].license if mask else None,
        inputs_sha256="0" * 64,
        image_file=image_relpath(split, case_id),
        mask_file=mask_file,
        sidecar_file=sidecar_relpath(case_id),
    )


def read_card(out: Path) -> tuple[dict, str]:
    text = (out / "README.md").read_text()
    _, front, body = text.split("---\n", 2)
    return yaml.safe_load(front), body


@pytest.fixture()
def packaged(tmp_path: Path) -> tuple[Path, list[CaseEntry]]:
    out = tmp_path / "dataset"
    entries = [
        add_case(out, "case_b", "trainset"),
        add_case(out, "case_a", "trainset", mask=False),
        add_case(out, "case_c", "test_public"),
        add_case(out, "case_d", "test_private"),
    ]
    package_dataset(out, make_manifest(tmp_path), entries)
    return out, entries


def test_metadata_rows_sorted_with_null_mask(packaged):
    out, _ = packaged
    lines = (out / "data/trainset/metadata.jsonl").read_text().splitlines()
    rows = [json.loads(line) for line in lines]
    assert [row["case_id"] for row in rows] == ["case_a", "case_b"]
    assert rows[0]["mask_file_name"] is None
    assert rows[1]["mask_file_name"] == "masks/case_b.nii.gz"
    assert rows[1]["image_file_name"] == "images/case_b.nii.gz"
    assert rows[1]["split"] == "trainset"
    assert rows[1]["subset"] == "SUB"


def test_card_yaml_fields(packaged):
    out, _ = packaged
    front, body = read_card(out)
    assert front["license"] == ["cc-by-nc-sa-4.0", "cc-by-sa-4.0"]
    assert front["task_categories"] == ["image-segmentation"]
    assert front["tags"] == ["medical", "ct", "spine", "vertebrae", "nifti"]
    assert front["size_categories"] == ["n<1K"]
    assert front["configs"] == [
        {
            "config_name": "default",
            "data_files": [
                {"split": "trainset", "path": "data/trainset/**"},
                {"split": "test_public", "path": "data/test_public/**"},
                {"split": "test_private", "path": "data/test_private/**"},
            ],
        }
    ]
    assert "ctspine verify" in body
    assert "Image paper." in body
    assert "| SUB | 2 | 1 | 1 | 4 |" in body
    assert "L6 = 25" in body
    assert "1 case(s) have no mask" in body


def test_card_names_licence_conflict(packaged):
    out, _ = packaged
    _, body = read_card(out)
    assert "Licence conflicts" in body
    assert "ShareAlike" in body


def test_card_lists_only_built_splits(tmp_path):
    out = tmp_path / "dataset"
    entries = [add_case(out, "only", "test_public")]
    package_dataset(out, make_manifest(tmp_path), entries)
    front, _ = read_card(out)
    assert front["configs"][0]["data_files"] == [{"split": "test_public", "path": "data/test_public/**"}]
    assert not (out / "data/trainset").exists()


def test_unknown_licence_declared_as_other(tmp_path):
    out = tmp_path / "dataset"
    entries = [add_case(out, "odd_case", "trainset", mask=False, image_source="odd")]
    package_dataset(out, make_manifest(tmp_path), entries)
    front, _ = read_card(out)
    assert front["license"] == ["other"]
    assert front["license_name"] == "licenseref-custom-terms"
    assert front["license_link"] == "LICENSES/odd.md"
    assert "LicenseRef-Custom-Terms" in (out / "LICENSES/odd.md").read_text()


def test_license_files_per_used_source(packaged):
    out, _ = packaged
    assert sorted(p.name for p in (out / "LICENSES").iterdir()) == ["images.md", "masks.md"]
    text = (out / "LICENSES/images.md").read_text()
    assert "CC-BY-SA-4.0" in text
    assert "https://doi.org/10.1234/images" in text
    assert "Image paper." in text
    assert "images of subset(s) SUB" in text


def test_checksums_cover_every_file(packaged):
    out, _ = packaged
    lines = (out / "SHA256SUMS").read_text().splitlines()
    listed = {}
    for line in lines:
        digest, relative = line.split("  ", 1)
        listed[relative] = digest
    on_disk = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()} - {"SHA256SUMS"}
    assert set(listed) == on_disk
    assert [line.split("  ", 1)[1] for line in lines] == sorted(listed)
    for relative, digest in listed.items():
        assert sha256_file(out / relative) == digest, relative


def test_build_json_round_trip(packaged):
    out, entries = packaged
    document = json.loads((out / "build.json").read_text())
    assert document["tool"]["name"] == "ctspine_builder"
    assert document["manifest"]["version"] == "1.2.3"
    assert len(document["manifest"]["sha256"]) == 64
    assert [case["case_id"] for case in document["cases"]] == ["case_a", "case_b", "case_c", "case_d"]
    assert read_entries(out) == {entry.case_id: entry for entry in entries}


def test_repackage_changes_nothing(packaged, tmp_path):
    out, entries = packaged
    before = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in out.rglob("*") if p.is_file()}
    package_dataset(out, make_manifest(tmp_path), entries)
    after = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in out.rglob("*") if p.is_file()}
    assert after == before


def test_stale_case_files_removed(packaged, tmp_path):
    out, entries = packaged
    kept = [entry for entry in entries if entry.case_id != "case_c"]
    package_dataset(out, make_manifest(tmp_path), kept)
    assert not (out / "data/test_public").exists()
    assert not (out / "sidecars/case_c.json").exists()
    assert "case_c" not in (out / "SHA256SUMS").read_text()


def test_corrupt_build_json_is_reported(tmp_path):
    from ctspine_builder.errors import PackagingError

    (tmp_path / "build.json").write_text("{not json")
    with pytest.raises(PackagingError, match="build.json of the earlier build cannot be read"):
        read_entries(tmp_path)


@pytest.mark.slow
def test_load_dataset_reads_packaged_folder(packaged, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf" / "datasets"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    from datasets import load_dataset

    out, _ = packaged
    dataset = load_dataset(str(out), cache_dir=str(tmp_path / "hf" / "datasets"))
    assert sorted(dataset) == ["test_private", "test_public", "trainset"]
    rows = {row["case_id"]: row for row in dataset["trainset"]}
    assert rows["case_a"]["mask"] is None
    assert isinstance(rows["case_b"]["mask"], nib.Nifti1Image)
    expected = nib.load(out / "data/trainset/images/case_b.nii.gz").get_fdata()
    assert np.array_equal(rows["case_b"]["image"].get_fdata(), expected)
    assert rows["case_b"]["subset"] == "SUB"
    assert os.path.basename(rows["case_b"]["split"]) == "trainset"
