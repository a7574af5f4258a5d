"""Tests for `ctspine model install/list`, hash checks, pins and Hub downloads."""
from __future__ import annotations

import json
import shutil
import zipfile
from pathlib import Path

import pytest
from click.testing import CliRunner

pytest.importorskip("torch", reason="the predict extra (torch, nnunet) is not installed")
pytest.importorskip("nnunet", reason="the predict extra (torch, nnunet) is not installed")

from model_hub_server import ModelRepo, start_model_hub  # noqa: E402
from nnunet_tiny import TRAINER_SUBPATH, build_tiny_model  # noqa: E402

from ctspine_builder.cli import main  # noqa: E402
from ctspine_builder.errors import ModelError  # noqa: E402
from ctspine_builder.fileio import sha256_file  # noqa: E402
from ctspine_builder.predict.model_cache import list_models, open_installed, open_model  # noqa: E402
from ctspine_builder.predict.model_store import REQUIRED_FILES, read_pin  # noqa: E402

HUB_REPO = "spine-lab/ctspine-nnunet"


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory) -> Path:
    """Folder holding nnUNet/3d_fullres/Task056_VerSe/... of a tiny model."""
    root = tmp_path_factory.mktemp("tiny")
    build_tiny_model(root)
    return root


@pytest.fixture()
def cache(tmp_path: Path, monkeypatch) -> Path:
    """An empty model cache for one test."""
    folder = tmp_path / "cache"
    monkeypatch.setenv("CTSPINE_MODEL_DIR", str(folder))
    return folder


def run(*args: str):
    return CliRunner().invoke(main, list(args))


def zip_folder(source: Path, archive: Path, prefix: str = "") -> Path:
    with zipfile.ZipFile(archive, "w") as handle:
        for path in sorted(source.rglob("*")):
            if path.is_file():
                handle.write(path, prefix + str(path.relative_to(source)))
    return archive


def test_install_folder_and_list(tiny_root: Path, cache: Path) -> None:
    result = run("model", "install", str(tiny_root / "nnUNet"))
    assert result.exit_code == 0, result.output
    assert "Installed model Task056_VerSe" in result.output

    listing = run("model", "list")
    assert listing.exit_code == 0
    expected = sha256_file(tiny_root / TRAINER_SUBPATH / "all/model_final_checkpoint.model")
    assert f"{expected}  all/model_final_checkpoint.model" in listing.output
    assert str(cache / "Task056_VerSe" / "model") in listing.output
    record = json.loads((cache / "Task056_VerSe" / "ctspine-model.json").read_text())
    assert sorted(record["files"]) == sorted(REQUIRED_FILES)


def test_list_empty_cache(cache: Path) -> None:
    result = run("model", "list")
    assert result.exit_code == 0
    assert "No models installed" in result.output


def test_install_same_name_twice_rejected(tiny_root: Path, cache: Path) -> None:
    assert run("model", "install", str(tiny_root), "--name", "spine").exit_code == 0
    again = run("model", "install", str(tiny_root), "--name", "spine")
    assert again.exit_code == 1
    assert "model 'spine' is already installed" in again.output
    assert run("model", "install", str(tiny_root), "--name", "spine", "--overwrite").exit_code == 0


def test_tampered_checkpoint_after_install_rejected(tiny_root: Path, cache: Path, tmp_path: Path) -> None:
    assert run("model", "install", str(tiny_root), "--name", "spine").exit_code == 0
    checkpoint = cache / "spine" / "model" / "all/model_final_checkpoint.model"
    with open(checkpoint, "ab") as handle:
        handle.write(b"\0")
    with pytest.raises(ModelError) as caught:
        open_installed("spine")
    assert "SHA-256 mismatch against the install record" in str(caught.value)
    assert "model_final_checkpoint.model" in str(caught.value)


def test_predict_with_tampered_model_fails(tiny_root: Path, cache: Path, tmp_path: Path) -> None:
    import nibabel as nib
    import numpy as np

    assert run("model", "install", str(tiny_root), "--name", "spine").exit_code == 0
    plans = cache / "spine" / "model" / "plans.pkl"
    plans.write_bytes(plans.read_bytes() + b"\0")
    volume = np.random.default_rng(0).normal(0, 300, (20, 20, 20)).astype(np.int16)
    nib.save(nib.Nifti1Image(volume, np.eye(4)), tmp_path / "ct.nii.gz")
    result = run("predict", "-i", str(tmp_path / "ct.nii.gz"), "-o", str(tmp_path / "out"), "--model", "spine", "--no-tta")
    assert result.exit_code == 1
    assert "SHA-256 mismatch" in result.output
    assert "plans.pkl" in result.output
    assert not (tmp_path / "out").exists()


def test_unknown_model_name_rejected(cache: Path) -> None:
    with pytest.raises(ModelError) as caught:
        open_installed("nothing-here")
    assert "model 'nothing-here' is not installed" in str(caught.value)


def test_install_from_zip(tiny_root: Path, cache: Path, tmp_path: Path) -> None:
    archive = zip_folder(tiny_root, tmp_path / "verse.zip")
    result = run("model", "install", str(archive), "--name", "zipped")
    assert result.exit_code == 0, result.output
    assert [model.name for model in list_models()] == ["zipped"]


def test_zip_with_parent_entry_rejected(tiny_root: Path, cache: Path, tmp_path: Path) -> None:
    archive = zip_folder(tiny_root, tmp_path / "evil.zip")
    with zipfile.ZipFile(archive, "a") as handle:
        handle.writestr("../escaped.txt", b"outside")
    result = run("model", "install", str(archive), "--name", "evil")
    assert result.exit_code == 1
    assert "'../escaped.txt' rejected" in result.output
    assert not (tmp_path / "escaped.txt").exists()
    assert not (cache / "escaped.txt").exists()
    assert list_models() == []


def test_model_zip_used_in_place(tiny_root: Path, tmp_path: Path) -> None:
    archive = zip_folder(tiny_root, tmp_path / "verse.zip")
    model = open_model(str(archive), tmp_path / "work")
    assert model.name == "verse.zip"
    assert sorted(model.hashes) == sorted(REQUIRED_FILES)


def write_pin(path: Path, files: dict[str, str]) -> Path:
    path.write_text(json.dumps({"files": files}))
    return path


def test_pin_match_and_mismatch(tiny_root: Path, cache: Path, tmp_path: Path) -> None:
    trainer = tiny_root / TRAINER_SUBPATH
    hashes = {name: sha256_file(trainer / name) for name in REQUIRED_FILES}
    good = write_pin(tmp_path / "good.json", hashes)
    assert run("model", "install", str(tiny_root), "--name", "pinned", "--pin", str(good)).exit_code == 0

    bad = write_pin(tmp_path / "bad.json", {**hashes, "plans.pkl": "0" * 64})
    result = run("model", "install", str(tiny_root), "--name", "other", "--pin", str(bad))
    assert result.exit_code == 1
    assert "SHA-256 mismatch against the pin file" in result.output
    assert "plans.pkl" in result.output


def test_pin_from_manifest_source(tmp_path: Path) -> None:
    digest = "ab" * 32
    manifest = tmp_path / "manifest.json"
    hashes = {name: digest for name in REQUIRED_FILES}
    manifest.write_text(json.dumps({"sources": [{"id": "model", "kind": "nnunet-model", "options": {"sha256": hashes}}]}))
    assert read_pin(manifest) == hashes


def test_pin_with_unknown_file_rejected(tmp_path: Path) -> None:
    path = write_pin(tmp_path / "pin.json", {**{name: "ab" * 32 for name in REQUIRED_FILES}, "../secret": "ab" * 32})
    with pytest.raises(ModelError) as caught:
        read_pin(path)
    assert "unknown: ../secret" in str(caught.value)


def test_partial_pin_rejected(tmp_path: Path) -> None:
    path = write_pin(tmp_path / "pin.json", {"plans.pkl": "ab" * 32})
    with pytest.raises(ModelError) as caught:
        read_pin(path)
    assert "missing: all/model_final_checkpoint.model" in str(caught.value)


def test_pin_without_hashes_rejected(tmp_path: Path) -> None:
    path = tmp_path / "pin.json"
    path.write_text(json.dumps({"files": {"plans.pkl": "not-a-hash"}}))
    with pytest.raises(ModelError) as caught:
        read_pin(path)
    assert "no model hashes found" in str(caught.value)


@pytest.fixture()
def model_hub(tiny_root: Path, monkeypatch, tmp_path: Path):
    """A loopback Hub holding the tiny model under a Task folder, tagged v1."""
    server, state, url = start_model_hub()
    repo = state.repos.setdefault(HUB_REPO, ModelRepo())
    trainer = tiny_root / TRAINER_SUBPATH
    files = {f"Task056_VerSe/nnUNetTrainerV2__nnUNetPlansv2.1/{path.relative_to(trainer)}": path.read_bytes() for path in trainer.rglob("*") if path.is_file()}
    files["README.md"] = b"tiny test model\n"
    state.commit = repo.add_commit(files, ref="v1")
    monkeypatch.setenv("HF_ENDPOINT", url)
    monkeypatch.setenv("HF_HUB_DISABLE_XET", "1")
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    yield state
    server.shutdown()
    server.server_close()


def test_install_from_hub_at_commit(model_hub, cache: Path) -> None:
    result = run("model", "install", f"hf://{HUB_REPO}@{model_hub.commit}")
    assert result.exit_code == 0, result.output
    models = list_models()
    assert models[0].name == "ctspine-nnunet"
    assert models[0].source == f"hf://{HUB_REPO}@{model_hub.commit}"
    assert not any("README.md" in request for request in model_hub.requests if "/resolve/" in request)


def test_hub_model_used_by_reference(model_hub, cache: Path, tmp_path: Path) -> None:
    first = open_model(f"hf://{HUB_REPO}@v1", tmp_path / "work")
    downloads = len([request for request in model_hub.requests if request.startswith("GET") and "/resolve/" in request])
    second = open_model(f"hf://{HUB_REPO}@{model_hub.commit}", tmp_path / "work")
    assert first.hashes == second.hashes
    assert len([request for request in model_hub.requests if request.startswith("GET") and "/resolve/" in request]) == downloads


def test_hub_reference_without_revision_rejected(cache: Path) -> None:
    result = run("model", "install", f"hf://{HUB_REPO}")
    assert result.exit_code == 1
    assert "revision missing" in result.output


def test_hub_unknown_revision_rejected(model_hub, cache: Path) -> None:
    result = run("model", "install", f"hf://{HUB_REPO}@{'0' * 40}")
    assert result.exit_code == 1
    assert "not found on the Hub" in result.output


def test_installed_copy_independent_of_source(tiny_root: Path, cache: Path, tmp_path: Path) -> None:
    source = Path(shutil.copytree(tiny_root, tmp_path / "source"))
    assert run("model", "install", str(source), "--name", "spine").exit_code == 0
    shutil.rmtree(source)
    assert open_installed("spine").path.is_dir()


def test_hub_model_with_wrong_pin_not_cached(model_hub, cache: Path, tmp_path: Path) -> None:
    pin = {name: "0" * 64 for name in REQUIRED_FILES}
    with pytest.raises(ModelError) as caught:
        open_model(f"hf://{HUB_REPO}@{model_hub.commit}", tmp_path / "work", pin)
    assert "SHA-256 mismatch against the pin file" in str(caught.value)
    assert list_models() == []
