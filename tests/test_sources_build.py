"""End-to-end `ctspine build` runs with the msd, covid19 and masks-folder sources on loopback."""
from __future__ import annotations

import gzip
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from click.testing import CliRunner

from ctspine_builder.cli import main
from msd_fixtures import cache_files, make_task03_tar
from range_server import HTML_PAGE, RangeServer

AFFINE = np.diag([0.8, 0.8, 2.5, 1.0])
SHAPE = (24, 20, 12)
COVID_CASE = "volume-covid19-A-0003_ct"


def _volume(seed: int) -> bytes:
    data = np.random.default_rng(seed).integers(-1000, 1500, size=SHAPE).astype(np.int16)
    return gzip.compress(nib.Nifti1Image(data, AFFINE).to_bytes(), mtime=0)


def _mask(seed: int) -> bytes:
    data = np.zeros(SHAPE, dtype=np.uint8)
    data[8:16, 6:14, 2 + seed % 3:10] = 20 + seed % 5
    return gzip.compress(nib.Nifti1Image(data, AFFINE).to_bytes(), mtime=0)


def _write_manifest(root: Path, tar_url: str, covid_folder: Path, masks_folder: Path) -> Path:
    manifest = {
        "format": 1,
        "dataset": {"name": "sources-e2e", "version": "0.1.0", "citation": "Loopback source test."},
        "sources": [
            {"id": "msd", "kind": "msd", "license": "CC-BY-SA-4.0", "locator": tar_url,
             "citation": "Task03_Liver test tar", "options": {"md5": (root / "tar.md5").read_text()}},
            {"id": "covid", "kind": "covid19", "license": "CC-BY-4.0", "locator": str(covid_folder),
             "doi": "10.7937/tcia.2020.gqry-nc81"},
            {"id": "masks", "kind": "masks-folder", "license": "CC-BY-NC-SA-4.0", "locator": str(masks_folder),
             "citation": "CTSpine1K masks test copy"},
        ],
        "cases": [
            {"case_id": "liver_0", "subset": "MSD-T10", "split": "trainset",
             "image": {"source": "msd", "locator": "imagesTr/liver_0.nii.gz"},
             "mask": {"source": "masks", "locator": ""}},
            {"case_id": "liver_150", "subset": "MSD-T10", "split": "test_public",
             "image": {"source": "msd", "locator": ""},
             "mask": {"source": "masks", "locator": ""}},
            {"case_id": COVID_CASE, "subset": "COVID-19", "split": "test_private",
             "image": {"source": "covid", "locator": ""},
             "mask": {"source": "masks", "locator": "COVID-19/volume-covid19-A-0003_ct_seg.nii.gz"}},
        ],
    }
    path = root / "manifest.json"
    path.write_text(json.dumps(manifest, indent=1))
    return path


@pytest.fixture
def inputs(tmp_path: Path):
    www = tmp_path / "www"
    www.mkdir()
    md5 = make_task03_tar(www / "Task03_Liver.tar", {
        "imagesTr/liver_0.nii.gz": _volume(0),
        "imagesTr/liver_1.nii.gz": _volume(1),
        "imagesTs/liver_150.nii.gz": _volume(150),
    })
    (tmp_path / "tar.md5").write_text(md5)
    covid = tmp_path / "tcia" / "CT Images in COVID-19"
    covid.mkdir(parents=True)
    (covid / "volume-covid19-A-0003.nii.gz").write_bytes(_volume(3))
    masks = tmp_path / "gdrive" / "CTSpine1K"
    for subset, case_id, seed in (("MSD-T10", "liver_0", 0), ("MSD-T10", "liver_150", 1),
                                  ("COVID-19", COVID_CASE, 2)):
        (masks / subset).mkdir(parents=True, exist_ok=True)
        (masks / subset / f"{case_id}_seg.nii.gz").write_bytes(_mask(seed))
    with RangeServer(www) as server:
        manifest = _write_manifest(tmp_path, server.url("Task03_Liver.tar"), covid.parent, masks)
        yield server, manifest, masks


def _build(tmp_path: Path, manifest: Path, *extra: str):
    args = ["-q", "build", "--manifest", str(manifest), "--out", str(tmp_path / "out"),
            "--cache-dir", str(tmp_path / "cache"), *extra]
    return CliRunner().invoke(main, args)


@pytest.mark.parametrize("keep", ["--keep-archive", "--no-keep-archive"])
def test_build_from_tar_folder_and_masks(tmp_path: Path, inputs, keep: str) -> None:
    server, manifest, _ = inputs

    result = _build(tmp_path, manifest, keep)

    assert result.exit_code == 0, result.output
    out = tmp_path / "out"
    for split, case_id in (("trainset", "liver_0"), ("test_public", "liver_150"), ("test_private", COVID_CASE)):
        assert (out / "data" / split / "images" / f"{case_id}.nii.gz").is_file()
        assert (out / "data" / split / "masks" / f"{case_id}.nii.gz").is_file()
    build = json.loads((out / "build.json").read_text())
    cases = {entry["case_id"]: entry for entry in build["cases"]}
    assert cases["liver_0"]["image_license"] == "CC-BY-SA-4.0"
    assert cases["liver_0"]["mask_license"] == "CC-BY-NC-SA-4.0"
    assert cases[COVID_CASE]["image_license"] == "CC-BY-4.0"
    assert cases[COVID_CASE]["mask_source"] == "masks"
    msd_license = (out / "LICENSES" / "msd.md").read_text()
    assert "CC-BY-SA-4.0" in msd_license
    assert "no single licence satisfies both" in msd_license

    tar_gets = [request for request in server.requests if request.method == "GET"]
    assert len(tar_gets) == 1
    tars = [name for name in cache_files(tmp_path / "cache") if ".tar" in name]
    assert len(tars) == (1 if keep == "--keep-archive" else 0)


def test_build_one_case_extracts_one_image(tmp_path: Path, inputs) -> None:
    _, manifest, _ = inputs

    result = _build(tmp_path, manifest, "--cases", "liver_150", "--no-keep-archive")

    assert result.exit_code == 0, result.output
    cached = [name for name in cache_files(tmp_path / "cache") if name.startswith("sha256/")]
    assert len(cached) == 1
    assert (tmp_path / "out" / "data" / "test_public" / "images" / "liver_150.nii.gz").is_file()


def test_build_html_mask_fails_one_case(tmp_path: Path, inputs) -> None:
    _, manifest, masks = inputs
    (masks / "MSD-T10" / "liver_150_seg.nii.gz").write_bytes(HTML_PAGE)

    result = _build(tmp_path, manifest)

    assert result.exit_code == 1
    assert "liver_150" in result.output
    assert "HTML page" in result.output
    out = tmp_path / "out"
    assert (out / "data" / "trainset" / "images" / "liver_0.nii.gz").is_file()
    assert not (out / "data" / "test_public" / "images" / "liver_150.nii.gz").exists()
    assert "Traceback" not in result.output


def test_dry_run_sends_only_head(tmp_path: Path, inputs, monkeypatch) -> None:
    from ctspine_builder.sources import msd as msd_module

    monkeypatch.setattr(msd_module, "_PLANNED_ARCHIVES", set())
    monkeypatch.setattr(msd_module, "_REMOTE_SIZES", {})
    server, manifest, _ = inputs

    result = _build(tmp_path, manifest, "--dry-run")

    assert result.exit_code == 0, result.output
    assert [request.method for request in server.requests] == ["HEAD"]
    assert "counted once" in result.output
    assert not (tmp_path / "out").exists()
    assert cache_files(tmp_path / "cache") == []
