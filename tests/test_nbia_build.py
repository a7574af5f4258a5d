"""End-to-end: `ctspine build` of TCIA cases from the NBIA stand-in, with masks and position variants."""
from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from click.testing import CliRunner

from ctspine_builder.cli import main
from ctspine_builder.dicom.convert import convert_series
from ctspine_builder.nifti import save_nifti
from tests.nbia_server import NbiaServer, series_from_folder
from tests.test_lock import write_manifest_file
from tests.test_nbia_source import COLLECTION, SOURCE_ID, hint_for
from tests.test_position import PRONE_IOP, SUPINE_IOP, write_positioned_series

MASK_SOURCE = "masks"


@pytest.fixture()
def colonography(tmp_path):
    """A patient with a supine (authors' choice, with a mask on its grid) and a prone series."""
    # NOTE: descriptions that are just "SUPINE" or "PRONE" would make the build's
    # identifier scan flag the "position" value in build.json, because the scan
    # treats every SeriesDescription as identifying text.
    supine = write_positioned_series(tmp_path / "supine", "HFS", SUPINE_IOP, 0, "Colon B30f first")
    prone = write_positioned_series(tmp_path / "prone", "HFP", PRONE_IOP, 1, "Colon B30f second")
    supine_series = series_from_folder(supine.folder, collection=COLLECTION, patient_id="CTC-0001",
                                       series_number=2, series_description="Colon B30f first")
    prone_series = series_from_folder(prone.folder, collection=COLLECTION, patient_id="CTC-0001",
                                      series_number=3, series_description="Colon B30f second")

    # The released masks sit on SimpleITK's grid of the authors' series.
    convert_series(supine.folder, tmp_path / "reference.nii.gz", geometry="simpleitk")
    image = nib.load(tmp_path / "reference.nii.gz")
    labels = np.zeros(image.shape, dtype=np.uint8)
    labels[2:5, 2:5, :] = 20  # L1
    (tmp_path / "masks").mkdir()
    save_nifti(labels, image.affine, tmp_path / "masks" / "CTC-0001.nii.gz")

    document = write_manifest_file(tmp_path, [{
        "case_id": "CTC-0001", "subset": "COLONOG", "split": "trainset",
        "image": {"source": SOURCE_ID, "locator": "CTC-0001"},
        "mask": {"source": MASK_SOURCE, "locator": "CTC-0001.nii.gz"},
        "series_hint": hint_for(supine_series),
    }])
    data = json.loads(document.read_text())
    data["sources"].append({"id": MASK_SOURCE, "kind": "local-nifti", "license": "CC-BY-NC-SA-4.0",
                            "locator": "masks", "citation": "Synthetic test masks."})
    document.write_text(json.dumps(data, indent=2))
    with NbiaServer([supine_series, prone_series]) as server:
        yield server, document


def run_build(tmp_path: Path, server: NbiaServer, manifest: Path, *extra: str):
    out = tmp_path / "out"
    result = CliRunner().invoke(main, [
        "-q", "build", "--manifest", str(manifest), "--out", str(out), "--nbia-url", server.url,
        "--cache-dir", str(tmp_path / "cache"), *extra,
    ])
    return result, out


def case_entry(out: Path) -> dict:
    build = json.loads((out / "build.json").read_text())
    return next(case for case in build["cases"] if case["case_id"] == "CTC-0001")


def test_build_authors_series_with_mask(tmp_path, colonography):
    server, manifest = colonography
    result, out = run_build(tmp_path, server, manifest)
    assert result.exit_code == 0, result.output
    entry = case_entry(out)
    assert entry["has_mask"] is True
    assert entry["position"] == "supine"
    assert (out / "data" / "trainset" / "masks" / "CTC-0001.nii.gz").is_file()
    assert server.count("getImage") == 1


def test_build_prone_variant_is_image_only(tmp_path, colonography):
    server, manifest = colonography
    result, out = run_build(tmp_path, server, manifest, "--position", "prone")
    assert result.exit_code == 0, result.output
    entry = case_entry(out)
    assert entry["has_mask"] is False
    assert entry["position"] == "prone"
    assert (out / "data" / "trainset" / "images" / "CTC-0001.nii.gz").is_file()
    assert not (out / "data" / "trainset" / "masks" / "CTC-0001.nii.gz").exists()


def test_rebuild_reuses_cached_series(tmp_path, colonography):
    server, manifest = colonography
    run_build(tmp_path, server, manifest)
    result, _ = run_build(tmp_path, server, manifest, "--out", str(tmp_path / "second"))
    assert result.exit_code == 0, result.output
    assert server.count("getImage") == 1


def test_dry_run_contacts_metadata_only(tmp_path, colonography):
    server, manifest = colonography
    result, out = run_build(tmp_path, server, manifest, "--dry-run")
    assert result.exit_code == 0, result.output
    assert server.count("getImage") == 0
    assert not (out / "build.json").exists()
