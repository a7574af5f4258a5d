"""Predict stage: the model cache behind `ctspine model install/list` and `--model`."""
from __future__ import annotations

import json
import logging
import shutil
import tempfile
import zipfile
from pathlib import Path

from ctspine_builder import TOOL_NAME, __version__
from ctspine_builder.errors import ModelError
from ctspine_builder.fileio import write_bytes_atomic
from ctspine_builder.predict.model_store import (
    INSTALL_FORMAT,
    INSTALL_RECORD,
    MODEL_SUBDIR,
    OPTIONAL_FILES,
    REQUIRED_FILES,
    ModelFolder,
    check_hashes,
    check_model_name,
    download_hf_model,
    find_trainer_folder,
    hash_model_files,
    model_cache_dir,
    parse_hf_reference,
)

logger = logging.getLogger(__name__)


def _stage_source(source: str, staging: Path) -> tuple[Path, str, str]:
    """Fetch or unpack ``source`` under ``staging``.

    Returns the trainer folder, the source description for the install
    record and a default model name.
    """
    from ctspine_builder.fetch.archive import extract_zip

    if source.startswith("hf://"):
        repo_id, _ = parse_hf_reference(source)
        folder, commit = download_hf_model(source, staging / "download")
        return find_trainer_folder(folder, source), f"hf://{repo_id}@{commit}", repo_id.split("/")[1]
    path = Path(source).expanduser()
    if path.is_file():
        if not zipfile.is_zipfile(path):
            raise ModelError("model file is not a zip archive", path=path, hint="Pass a zip of the trainer folder, the folder itself or hf://ORG/NAME@REV")
        extract_zip(path, staging / "extract")
        return find_trainer_folder(staging / "extract", path), f"zip {path.name}", path.stem
    trainer = find_trainer_folder(path, path)
    task = trainer.parent.name if trainer.parent.name.startswith("Task") else path.name
    return trainer, f"folder {path.name}", task


def _copy_model_files(trainer: Path, target: Path) -> None:
    for name in REQUIRED_FILES + tuple(name for name in OPTIONAL_FILES if (trainer / name).is_file()):
        destination = target / name
        destination.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(trainer / name, destination)


def install_model(source: str, name: str | None = None, pin: dict[str, str] | None = None, overwrite: bool = False) -> ModelFolder:
    """Copy a model folder, zip or Hub repo into the cache and record its hashes.

    The model is validated (safe pickle loading, trainer allow-list, labels
    1..25 and, when torch is installed, the weights-only checkpoint load)
    before it becomes visible under its name. ``pin`` maps relative file
    paths to the SHA-256 they must have.
    """
    cache = model_cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".install-", dir=cache))
    try:
        trainer, description, default_name = _stage_source(source, staging)
        name = check_model_name(name or default_name)
        final = cache / name
        if final.exists() and not overwrite:
            raise ModelError(f"model {name!r} is already installed", path=final, hint="Pass --name NEW_NAME, or --overwrite to replace it")
        if pin:
            check_hashes(trainer, pin, "pin file")

        installed = staging / "installed"
        _copy_model_files(trainer, installed / MODEL_SUBDIR)
        validate_model_files(installed / MODEL_SUBDIR)
        hashes = hash_model_files(installed / MODEL_SUBDIR)
        record = {"format": INSTALL_FORMAT, "name": name, "source": description, "installed_by": f"{TOOL_NAME} {__version__}", "files": hashes}
        write_bytes_atomic(installed / INSTALL_RECORD, (json.dumps(record, indent=2, sort_keys=True) + "\n").encode())

        if final.exists():
            retired = staging / "retired"
            final.rename(retired)
        installed.rename(final)
        logger.info("installed model %s from %s into %s", name, description, final)
        return ModelFolder(name=name, path=final / MODEL_SUBDIR, hashes=hashes, source=description)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def validate_model_files(folder: Path) -> None:
    """Load the model's pickles and checkpoint safely; raise ModelError if unusable."""
    from ctspine_builder.predict.model_checks import read_model_info

    read_model_info(folder, load_weights=True)


def _read_record(folder: Path) -> dict:
    record_path = folder / INSTALL_RECORD
    try:
        record = json.loads(record_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise ModelError(f"install record unreadable: {error}", path=record_path, hint="Reinstall the model with `ctspine model install`") from error
    files = record.get("files") if isinstance(record, dict) else None
    if not isinstance(files, dict) or any(name not in files for name in REQUIRED_FILES):
        raise ModelError("install record does not list every model file", path=record_path, hint="Reinstall the model with `ctspine model install`")
    return record


def list_models() -> list[ModelFolder]:
    """Return the installed models, sorted by name, with their recorded hashes."""
    cache = model_cache_dir()
    if not cache.is_dir():
        return []
    models = []
    for folder in sorted(cache.iterdir()):
        if folder.name.startswith(".") or not (folder / INSTALL_RECORD).is_file():
            continue
        record = _read_record(folder)
        models.append(ModelFolder(name=folder.name, path=folder / MODEL_SUBDIR, hashes=dict(record["files"]), source=str(record.get("source", ""))))
    return models


def open_installed(name: str) -> ModelFolder:
    """Return installed model ``name`` after checking every file's SHA-256."""
    folder = model_cache_dir() / check_model_name(name)
    if not (folder / INSTALL_RECORD).is_file():
        installed = ", ".join(model.name for model in list_models()) or "none"
        raise ModelError(f"model {name!r} is not installed (installed: {installed})", hint="Install it with `ctspine model install ZIP|DIR|hf://ORG/NAME@REV --name NAME`")
    record = _read_record(folder)
    check_hashes(folder / MODEL_SUBDIR, record["files"], "install record")
    return ModelFolder(name=name, path=folder / MODEL_SUBDIR, hashes=dict(record["files"]), source=str(record.get("source", "")))


def open_model(spec: str, work_dir: Path, pin: dict[str, str] | None = None) -> ModelFolder:
    """Resolve ``--model``: a folder, a zip, ``hf://ORG/NAME@REV`` or an installed name.

    A Hub model is installed into the cache first (or reused when the same
    commit is installed). A zip is unpacked into ``work_dir``. ``pin``, when
    given, is checked against the files in every case.
    """
    path = Path(spec).expanduser()
    if spec.startswith("hf://"):
        model = _open_hub_model(spec, pin)
    elif path.is_dir() or path.is_file():
        from ctspine_builder.fetch.archive import extract_zip

        if path.is_file():
            if not zipfile.is_zipfile(path):
                raise ModelError("model file is not a zip archive", path=path, hint="Pass a zip of the trainer folder, the folder itself or an installed name")
            extract_zip(path, work_dir / "model")
            trainer = find_trainer_folder(work_dir / "model", path)
        else:
            trainer = find_trainer_folder(path, path)
        model = ModelFolder(name=path.name, path=trainer, hashes=hash_model_files(trainer), source=f"{'zip' if path.is_file() else 'folder'} {path.name}")
    else:
        model = open_installed(spec)
    if pin:
        check_hashes(model.path, pin, "pin file")
    return model


def _open_hub_model(reference: str, pin: dict[str, str] | None) -> ModelFolder:
    repo_id, revision = parse_hf_reference(reference)
    for model in list_models():
        if model.source.startswith(f"hf://{repo_id}@") and model.source.endswith(f"@{revision}"):
            return open_installed(model.name)
    # The pin is checked before installing, so a mismatching download never enters the cache.
    installed = install_model(reference, name=f"{repo_id.replace('/', '--')}--{revision[:12]}", pin=pin, overwrite=True)
    return open_installed(installed.name)
