"""Tests of `ctspine demo`: phantom generation, build, verification and loading."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
from click.testing import CliRunner

from ctspine_builder.cli import main
from ctspine_builder.demo import SLICES, phantom_volume, write_demo_sources


def test_phantom_is_deterministic():
    first_hu, first_labels = phantom_volume(1)
    second_hu, second_labels = phantom_volume(1)
    assert np.array_equal(first_hu, second_hu)
    assert np.array_equal(first_labels, second_labels)


def test_phantom_labels_run_head_to_feet():
    hu, labels = phantom_volume(0)
    assert sorted(np.unique(labels)) == [0, 18, 19, 20]
    # Slice index grows towards the head, so T11 (18) lies above L1 (20).
    top_slice = max(k for k in range(SLICES) if (labels[:, :, k] == 18).any())
    bottom_slice = min(k for k in range(SLICES) if (labels[:, :, k] == 20).any())
    assert top_slice > bottom_slice
    assert hu.min() >= -1024
    assert 650 < hu[labels > 0].mean() < 750


def test_demo_sources_are_valid_dicom(tmp_path):
    sources = write_demo_sources(tmp_path, cases=1)
    files = sorted((tmp_path / "dicom" / "phantom_000").iterdir())
    assert len(files) == SLICES
    dataset = pydicom.dcmread(files[0])
    assert dataset.Modality == "CT"
    assert dataset.PatientID == "phantom_000"
    assert dataset.pixel_array.shape == (64, 64)
    assert sources.manifest.is_file()


def test_demo_sources_repeat_byte_for_byte(tmp_path):
    write_demo_sources(tmp_path / "a", cases=2)
    write_demo_sources(tmp_path / "b", cases=2)
    for path in sorted((tmp_path / "a").rglob("*")):
        if path.is_file():
            twin = tmp_path / "b" / path.relative_to(tmp_path / "a")
            assert path.read_bytes() == twin.read_bytes(), path.name


def test_demo_command_builds_and_verifies(tmp_path):
    result = CliRunner().invoke(main, ["-q", "demo", "--out", str(tmp_path / "demo"), "--cases", "4"])
    assert result.exit_code == 0, result.output
    assert "Dataset built and verified" in result.output
    assert "load_dataset(" in result.output
    dataset = tmp_path / "demo" / "dataset"
    assert len(list(dataset.glob("data/*/images/*.nii.gz"))) == 4
    assert (dataset / "data/trainset/masks/phantom_003.nii.gz").is_file()


@pytest.mark.slow
def test_demo_dataset_loads(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    from datasets import load_dataset

    result = CliRunner().invoke(main, ["-q", "demo", "--out", str(tmp_path / "demo")])
    assert result.exit_code == 0, result.output
    loaded = load_dataset(str(tmp_path / "demo" / "dataset"), cache_dir=str(tmp_path / "hf" / "datasets"))
    assert sorted(loaded) == ["test_private", "test_public", "trainset"]
    sample = loaded["test_public"][0]
    assert sample["case_id"] == "phantom_001"
    assert sample["subset"] == "PHANTOM"
    labels = np.asarray(sample["mask"].dataobj)
    assert sorted(np.unique(labels)) == [0, 19, 20, 21]
    assert sample["image"].shape == labels.shape
