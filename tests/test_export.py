"""Tests for `ctspine export nnunet` and `ctspine export monai` on a small dataset folder."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from click.testing import CliRunner

from ctspine_builder.cli import main
from ctspine_builder.errors import PackagingError
from ctspine_builder.package.export import LABEL_NAMES, export_monai, export_nnunet, place_file
from hubdata import write_dataset


@pytest.fixture()
def dataset(tmp_path) -> Path:
    return write_dataset(tmp_path / "ds")


def test_nnunet_v1_layout(tmp_path, dataset):
    result = CliRunner().invoke(main, ["export", "nnunet", str(dataset), str(tmp_path / "raw")])
    assert result.exit_code == 0, result.output
    task = tmp_path / "raw" / "Task056_CTSpine1K"
    assert sorted(p.name for p in (task / "imagesTr").iterdir()) == ["liver_0_0000.nii.gz", "liver_1_0000.nii.gz"]
    assert sorted(p.name for p in (task / "labelsTr").iterdir()) == ["liver_0.nii.gz", "liver_1.nii.gz"]
    assert [p.name for p in (task / "imagesTs").iterdir()] == ["HN_P001_0000.nii.gz"]
    assert [p.name for p in (task / "labelsTs").iterdir()] == ["HN_P001.nii.gz"]
    assert [p.name for p in (task / "imagesTs_private").iterdir()] == ["volume-covid19-A-0003_ct_0000.nii.gz"]
    document = json.loads((task / "dataset.json").read_text())
    assert document["modality"] == {"0": "CT"}
    assert document["labels"]["0"] == "background"
    assert document["labels"]["25"] == "L6"
    assert document["labels"]["19"] == "T12"
    assert document["numTraining"] == 2
    assert document["test"] == ["./imagesTs/HN_P001.nii.gz"]
    assert "8 hardlink" in result.output


def test_nnunet_v1_hardlinks_share_inode(tmp_path, dataset):
    export_nnunet(dataset, tmp_path / "raw")
    linked = tmp_path / "raw" / "Task056_CTSpine1K" / "imagesTr" / "liver_0_0000.nii.gz"
    original = dataset / "data" / "trainset" / "images" / "liver_0.nii.gz"
    assert os.path.samefile(linked, original)


def test_nnunet_v1_passes_nnunet_integrity_check(tmp_path, dataset):
    pytest.importorskip("nnunet", reason="nnunet (v1) is not installed")
    export_nnunet(dataset, tmp_path / "raw", task_id=57)
    task = tmp_path / "raw" / "Task057_CTSpine1K"
    script = "import sys; from nnunet.preprocessing.sanity_checks import verify_dataset_integrity; verify_dataset_integrity(sys.argv[1]); print('INTEGRITY OK')"
    checked = subprocess.run([sys.executable, "-c", script, str(task)], capture_output=True, text=True, timeout=300)
    assert checked.returncode == 0, checked.stdout[-2000:] + checked.stderr[-2000:]
    assert "INTEGRITY OK" in checked.stdout


def test_nnunet_v2_layout(tmp_path, dataset):
    result = CliRunner().invoke(main, ["export", "nnunet", str(dataset), str(tmp_path / "raw"), "--format", "v2", "--id", "123"])
    assert result.exit_code == 0, result.output
    folder = tmp_path / "raw" / "Dataset123_CTSpine1K"
    document = json.loads((folder / "dataset.json").read_text())
    assert document["channel_names"] == {"0": "CT"}
    assert document["file_ending"] == ".nii.gz"
    assert document["numTraining"] == len(list((folder / "imagesTr").iterdir()))
    assert list(document["labels"].values()) == list(range(26))
    assert document["labels"]["C1"] == 1
    assert document["labels"]["L1"] == 20
    assert (folder / "imagesTs_private" / "volume-covid19-A-0003_ct_0000.nii.gz").is_file()


def test_nnunet_v2_dataset_json_accepted_by_nnunetv2(tmp_path, dataset):
    pytest.importorskip("nnunetv2", reason="nnunetv2 is not installed (it pulls in torch)")
    from nnunetv2.experiment_planning.verify_dataset_integrity import verify_dataset_integrity

    export_nnunet(dataset, tmp_path / "raw", version="v2")
    verify_dataset_integrity(str(tmp_path / "raw" / "Dataset056_CTSpine1K"), num_processes=1)


def test_export_twice_is_idempotent(tmp_path, dataset):
    export_nnunet(dataset, tmp_path / "raw")
    again = export_nnunet(dataset, tmp_path / "raw")
    assert again.methods == {"existing": 8}


def test_export_conflicting_target_rejected(tmp_path, dataset):
    target = tmp_path / "raw" / "Task056_CTSpine1K" / "imagesTr" / "liver_0_0000.nii.gz"
    target.parent.mkdir(parents=True)
    target.write_bytes(b"other content")
    with pytest.raises(PackagingError, match="export target exists with other content"):
        export_nnunet(dataset, tmp_path / "raw")


def test_symlink_and_copy_modes(tmp_path, dataset):
    source = dataset / "data" / "trainset" / "images" / "liver_0.nii.gz"
    assert place_file(source, tmp_path / "s.nii.gz", "symlink") == "symlink"
    assert (tmp_path / "s.nii.gz").is_symlink()
    assert place_file(source, tmp_path / "c.nii.gz", "copy") == "copy"
    assert not os.path.samefile(source, tmp_path / "c.nii.gz")
    assert (tmp_path / "c.nii.gz").read_bytes() == source.read_bytes()


def test_hardlink_across_file_systems_falls_back_to_copy(tmp_path, dataset):
    shm = Path("/dev/shm")
    if not shm.is_dir() or os.stat(shm).st_dev == os.stat(tmp_path).st_dev:
        pytest.skip("no second file system (/dev/shm) to link across")
    source = dataset / "data" / "trainset" / "images" / "liver_0.nii.gz"
    target = shm / f"ctspine-export-{os.getpid()}" / "x.nii.gz"
    try:
        assert place_file(source, target, "auto") == "copy"
        with pytest.raises(PackagingError, match="hard link failed"):
            place_file(source, target.with_name("y.nii.gz"), "hardlink")
    finally:
        for path in target.parent.glob("*"):
            path.unlink()
        target.parent.rmdir()


def test_missing_metadata_rejected(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(PackagingError, match="no cases found"):
        export_nnunet(tmp_path / "empty", tmp_path / "raw")


def test_missing_case_file_rejected(tmp_path, dataset):
    (dataset / "data" / "trainset" / "masks" / "liver_1.nii.gz").unlink()
    with pytest.raises(PackagingError, match="case liver_1: file listed in metadata.jsonl is missing"):
        export_nnunet(dataset, tmp_path / "raw")


def test_monai_datalist(tmp_path, dataset):
    out = tmp_path / "lists" / "ctspine.json"
    out.parent.mkdir()
    result = CliRunner().invoke(main, ["export", "monai", str(dataset), str(out)])
    assert result.exit_code == 0, result.output
    document = json.loads(out.read_text())
    assert [item["case_id"] for item in document["training"]] == ["liver_0", "liver_1"]
    assert [item["case_id"] for item in document["test"]] == ["HN_P001"]
    assert [item["case_id"] for item in document["test_private"]] == ["volume-covid19-A-0003_ct"]
    first = document["training"][0]
    image = nib.load(out.parent / first["image"])
    label = np.asarray(nib.load(out.parent / first["label"]).dataobj)
    assert image.shape == label.shape
    assert set(np.unique(label)) == {0, 18, 19, 20}
    assert not Path(first["image"]).is_absolute()


def test_monai_datalist_loads_with_monai(tmp_path, dataset):
    monai_data = pytest.importorskip("monai.data", reason="monai is not installed")
    out = tmp_path / "ctspine.json"
    export_monai(dataset, out)
    items = monai_data.load_decathlon_datalist(str(out), is_segmentation=True, data_list_key="training")
    assert all(Path(item["image"]).is_file() and Path(item["label"]).is_file() for item in items)


def test_label_names_cover_25_vertebrae():
    assert len(LABEL_NAMES) == 26
    assert LABEL_NAMES[7] == "C7"
    assert LABEL_NAMES[8] == "T1"
    assert LABEL_NAMES[20] == "L1"
