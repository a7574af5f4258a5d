"""Tests of `ctspine build --source ID=[KIND:]LOCATOR` on the shipped manifest."""
from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from click.testing import CliRunner

from ctspine_builder.cli import main
from ctspine_builder.errors import ManifestError
from ctspine_builder.manifest.loader import load_manifest, resolve_manifest
from ctspine_builder.manifest.overrides import apply_overrides, parse_override

CASE_ID = "volume-covid19-A-0003_ct"


@pytest.fixture(scope="module")
def shipped():
    return load_manifest(resolve_manifest(None))


def test_parse_override_with_kind() -> None:
    assert parse_override("masks=masks-folder:/data/m") == ("masks", "masks-folder", "/data/m")


def test_parse_override_url_keeps_scheme() -> None:
    assert parse_override("msd=https://example.org/T.tar") == ("msd", None, "https://example.org/T.tar")


def test_override_without_equals_rejected(shipped) -> None:
    with pytest.raises(ManifestError, match="invalid source override 'tcia-covid19'.*ID=LOCATOR"):
        apply_overrides(shipped, ["tcia-covid19"])


def test_override_unknown_source_rejected(shipped) -> None:
    with pytest.raises(ManifestError, match="unknown source 'covid'.*tcia-covid19"):
        apply_overrides(shipped, ["covid=/data"])


def test_override_new_kind_drops_options(shipped, tmp_path: Path) -> None:
    manifest = apply_overrides(shipped, [f"ctspine1k-masks=masks-folder:{tmp_path}"])
    record = manifest.sources["ctspine1k-masks"]
    assert record.kind == "masks-folder"
    assert record.options == {}
    assert record.locator == str(tmp_path.resolve())
    assert record.license == shipped.sources["ctspine1k-masks"].license
    assert shipped.sources["ctspine1k-masks"].kind == "masks-hf"


def _write_volume(path: Path, data: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data, np.diag([0.8, 0.8, 2.0, 1.0])), path)


def test_build_covid_case_from_local_folders(tmp_path: Path) -> None:
    image = np.full((24, 20, 12), -1000, dtype=np.int16)
    image[8:16, 6:14, 2:10] = 400
    mask = np.zeros(image.shape, dtype=np.uint8)
    mask[8:16, 6:14, 2:6] = 19
    mask[8:16, 6:14, 6:10] = 20
    _write_volume(tmp_path / "tcia" / "nested" / "volume-covid19-A-0003.nii.gz", image)
    _write_volume(tmp_path / "masks" / "COVID-19" / f"{CASE_ID}_seg.nii.gz", mask)

    out = tmp_path / "out"
    result = CliRunner().invoke(main, [
        "-q", "build", "--out", str(out), "--cases", CASE_ID,
        "--source", f"tcia-covid19={tmp_path / 'tcia'}",
        "--source", f"ctspine1k-masks=masks-folder:{tmp_path / 'masks'}",
    ])

    assert result.exit_code == 0, result.output
    built_mask = nib.load(out / "data" / "trainset" / "masks" / f"{CASE_ID}.nii.gz")
    assert np.array_equal(np.asarray(built_mask.dataobj), mask)
    rows = [json.loads(line) for line in (out / "data" / "trainset" / "metadata.jsonl").read_text().splitlines()]
    assert [row["case_id"] for row in rows] == [CASE_ID]
