"""Tests for safe loading of nnU-Net v1 model files: pickles, trainer class and checkpoint."""
from __future__ import annotations

import pickle
import shutil
import zipfile
from pathlib import Path

import pytest

pytest.importorskip("torch", reason="the predict extra (torch, nnunet) is not installed")
pytest.importorskip("nnunet", reason="the predict extra (torch, nnunet) is not installed")

from nnunet_tiny import build_tiny_model  # noqa: E402

from ctspine_builder.errors import ModelError  # noqa: E402
from ctspine_builder.predict.model_checks import read_model_info  # noqa: E402
from ctspine_builder.predict.model_store import find_trainer_folder  # noqa: E402
from ctspine_builder.predict.safe_load import load_checkpoint_safely, load_pickle_safely  # noqa: E402

MARKER = "PAYLOAD-RAN-7f3a"


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    """A tiny nnU-Net v1 trainer folder saved by nnU-Net's own code."""
    return build_tiny_model(tmp_path_factory.mktemp("tiny"))


@pytest.fixture()
def model_copy(tiny_model: Path, tmp_path: Path) -> Path:
    """A private copy of the tiny model that a test may tamper with."""
    return Path(shutil.copytree(tiny_model, tmp_path / "model"))


def print_payload() -> bytes:
    """Pickle opcodes (protocol 2) that would call builtins.print(MARKER) when loaded."""
    return b"\x80\x02cbuiltins\nprint\nX" + len(MARKER).to_bytes(4, "little") + MARKER.encode() + b"\x85R."


def getcwd_payload() -> bytes:
    """Pickle opcodes that would call os.getcwd() when loaded."""
    return b"\x80\x02cos\ngetcwd\n)R."


def test_tiny_model_loads(tiny_model: Path) -> None:
    info = read_model_info(tiny_model, load_weights=True)
    assert info.trainer_name == "nnUNetTrainerV2"
    assert info.plans["num_classes"] == 25
    assert info.checkpoint is not None
    assert any(key.endswith("weight") for key in info.checkpoint["state_dict"])


def test_checkpoint_numpy_scalars_load(tiny_model: Path) -> None:
    checkpoint = load_checkpoint_safely(tiny_model / "all/model_final_checkpoint.model")
    losses = checkpoint["plot_stuff"][0]
    assert [float(value) for value in losses] == [0.9, 0.7]


def test_plans_print_payload_rejected(model_copy: Path, capsys) -> None:
    (model_copy / "plans.pkl").write_bytes(print_payload())
    with pytest.raises(ModelError) as caught:
        read_model_info(model_copy, load_weights=False)
    assert "disallowed global builtins.print" in str(caught.value)
    assert "plans.pkl" in str(caught.value)
    assert MARKER not in capsys.readouterr().out


def test_model_pkl_getcwd_payload_rejected(model_copy: Path) -> None:
    (model_copy / "all/model_final_checkpoint.model.pkl").write_bytes(getcwd_payload())
    with pytest.raises(ModelError) as caught:
        read_model_info(model_copy, load_weights=False)
    assert "disallowed global os.getcwd" in str(caught.value)
    assert "model_final_checkpoint.model.pkl" in str(caught.value)


def test_unknown_trainer_rejected(model_copy: Path) -> None:
    info_path = model_copy / "all/model_final_checkpoint.model.pkl"
    info = load_pickle_safely(info_path)
    info["name"] = "EvilTrainer"
    info_path.write_bytes(pickle.dumps(info))
    with pytest.raises(ModelError) as caught:
        read_model_info(model_copy, load_weights=False)
    assert "unknown trainer class 'EvilTrainer'" in str(caught.value)
    assert "nnUNetTrainerV2" in str(caught.value)


def test_checkpoint_with_foreign_class_rejected(model_copy: Path) -> None:
    import torch

    checkpoint_path = model_copy / "all/model_final_checkpoint.model"
    torch.save({"state_dict": {}, "extra": zipfile.ZipInfo("x")}, checkpoint_path)
    with pytest.raises(ModelError) as caught:
        load_checkpoint_safely(checkpoint_path)
    assert "weights-only" in str(caught.value)
    assert "zipfile" in str(caught.value)


def test_checkpoint_numpy1_names_load(model_copy: Path) -> None:
    """A checkpoint written under numpy 1.x names numpy.core.multiarray."""
    checkpoint_path = model_copy / "all/model_final_checkpoint.model"
    rewritten = checkpoint_path.with_suffix(".rewritten")
    with zipfile.ZipFile(checkpoint_path) as source, zipfile.ZipFile(rewritten, "w", zipfile.ZIP_STORED) as target:
        for item in source.infolist():
            data = source.read(item)
            if item.filename.endswith("data.pkl"):
                assert b"numpy._core.multiarray\nscalar" in data
                data = data.replace(b"numpy._core.multiarray\nscalar", b"numpy.core.multiarray\nscalar")
            target.writestr(item, data)
    checkpoint = load_checkpoint_safely(rewritten)
    assert float(checkpoint["plot_stuff"][3][1]) == 0.5


def test_plans_numpy1_names_load(model_copy: Path) -> None:
    plans_path = model_copy / "plans.pkl"
    plans = load_pickle_safely(plans_path)
    old_style = pickle.dumps(plans, protocol=2).replace(b"numpy._core.multiarray\n", b"numpy.core.multiarray\n")
    assert b"numpy.core.multiarray\n" in old_style
    plans_path.write_bytes(old_style)
    loaded = load_pickle_safely(plans_path)
    assert list(loaded["plans_per_stage"][0]["patch_size"]) == [32, 32, 32]


def test_truncated_pickle_rejected(model_copy: Path) -> None:
    plans_path = model_copy / "plans.pkl"
    plans_path.write_bytes(plans_path.read_bytes()[:40])
    with pytest.raises(ModelError) as caught:
        load_pickle_safely(plans_path)
    assert "invalid pickle" in str(caught.value)


def test_model_for_other_labels_rejected(tmp_path: Path) -> None:
    folder = build_tiny_model(tmp_path, num_classes=10)
    with pytest.raises(ModelError) as caught:
        read_model_info(folder, load_weights=False)
    assert "model trained for other labels" in str(caught.value)
    assert "num_classes=10" in str(caught.value)


def test_missing_checkpoint_named(model_copy: Path) -> None:
    (model_copy / "all/model_final_checkpoint.model").unlink()
    with pytest.raises(ModelError) as caught:
        find_trainer_folder(model_copy)
    assert "missing model files: all/model_final_checkpoint.model" in str(caught.value)


def test_folder_without_model_rejected(tmp_path: Path) -> None:
    with pytest.raises(ModelError) as caught:
        find_trainer_folder(tmp_path)
    assert "no nnU-Net v1 model found" in str(caught.value)
