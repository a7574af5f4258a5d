"""Predict stage: find, install, list and verify nnU-Net v1 model folders.

An installed model lives in the model cache (``CTSPINE_MODEL_DIR``, else the
platform's user cache folder) as ``<cache>/<name>/model/`` plus
``<cache>/<name>/ctspine-model.json``, which records the SHA-256 of every
model file. Every load of an installed model checks those hashes, and an
optional pin file (or a manifest source of kind ``nnunet-model``) fixes the
hashes that the released model must have.
"""
from __future__ import annotations

import json
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from ctspine_builder.errors import FetchError, ModelError
from ctspine_builder.fileio import sha256_file

logger = logging.getLogger(__name__)

# Files of an nnU-Net v1 trainer folder, relative to it, as the authors
# released Task056_VerSe/nnUNetTrainerV2__nnUNetPlansv2.1 with fold "all".
REQUIRED_FILES = ("plans.pkl", "all/model_final_checkpoint.model", "all/model_final_checkpoint.model.pkl")
OPTIONAL_FILES = ("postprocessing.json",)

INSTALL_RECORD = "ctspine-model.json"
INSTALL_FORMAT = 1
MODEL_SUBDIR = "model"
PIN_SOURCE_KIND = "nnunet-model"

_NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
_HF_PATTERN = re.compile(r"^hf://(?P<repo>[A-Za-z0-9][\w.-]*/[\w.-]+)(?:@(?P<revision>[\w./-]+))?$")
_COMMIT_PATTERN = re.compile(r"^[0-9a-f]{40}$")


@dataclass
class ModelFolder:
    """A verified nnU-Net v1 trainer folder ready to load.

    ``hashes`` maps each file's path relative to ``path`` to its SHA-256.
    ``name`` is the installed name, or the folder or archive name for a model
    used in place.
    """

    name: str
    path: Path
    hashes: dict[str, str] = field(default_factory=dict)
    source: str = ""


def model_cache_dir() -> Path:
    """Return the model cache folder: ``CTSPINE_MODEL_DIR`` or the user cache."""
    override = os.environ.get("CTSPINE_MODEL_DIR")
    if override:
        return Path(override).expanduser()
    import platformdirs

    return Path(platformdirs.user_cache_dir("ctspine")) / "models"


def find_trainer_folder(root: Path, origin: str | Path | None = None) -> Path:
    """Return the folder under ``root`` that contains ``plans.pkl`` and fold ``all``.

    ``root`` may be the trainer folder itself or any folder above it. Raises
    ModelError listing the missing files when there is none, or the
    candidates when there are several.
    """
    origin = origin or root
    if not root.is_dir():
        raise ModelError("model folder not found", path=origin, hint="Pass an nnU-Net v1 results folder, a zip of it, hf://ORG/NAME@REV or an installed model name")
    if (root / "plans.pkl").is_file():
        candidates = [root]
    else:
        candidates = sorted(plans.parent for plans in root.rglob("plans.pkl"))
    complete = [folder for folder in candidates if all((folder / name).is_file() for name in REQUIRED_FILES)]
    if len(complete) == 1:
        return complete[0]
    if len(complete) > 1:
        listed = ", ".join(str(folder.relative_to(root)) for folder in complete)
        raise ModelError(f"several nnU-Net trainer folders found: {listed}", path=origin, hint="Pass the one to use")
    if candidates:
        missing = [name for name in REQUIRED_FILES if not (candidates[0] / name).is_file()]
        raise ModelError(f"missing model files: {', '.join(missing)}", path=candidates[0], hint="Copy the complete trainer folder, with fold 'all'")
    raise ModelError(f"no nnU-Net v1 model found (expected {', '.join(REQUIRED_FILES)})", path=origin, hint="Pass the trainer folder, for example .../3d_fullres/Task056_VerSe/nnUNetTrainerV2__nnUNetPlansv2.1")


def hash_model_files(folder: Path) -> dict[str, str]:
    """Return the SHA-256 of each required and present optional model file."""
    names = list(REQUIRED_FILES) + [name for name in OPTIONAL_FILES if (folder / name).is_file()]
    return {name: sha256_file(folder / name) for name in names}


def check_hashes(folder: Path, expected: dict[str, str], what: str) -> None:
    """Compare the files in ``folder`` with ``expected`` hashes.

    Raises ModelError naming the first file that is missing or differs and
    ``what`` the hashes came from.
    """
    for name, digest in sorted(expected.items()):
        path = folder / name
        if not path.is_file():
            raise ModelError(f"model file listed in the {what} is missing", path=path, hint="Reinstall the model")
        actual = sha256_file(path)
        if actual != digest.lower():
            raise ModelError(
                f"SHA-256 mismatch against the {what}: expected {digest}, found {actual}; the file was changed",
                path=path,
                hint="Reinstall the model with `ctspine model install` from a trusted copy",
            )


def read_pin(path: str | Path) -> dict[str, str]:
    """Read expected model file hashes from a pin file or a manifest.

    A pin file is ``{"files": {"<relative path>": "<sha256>", ...}}``. A
    manifest pins them in a source of kind ``nnunet-model`` under
    ``options.sha256`` with the same mapping.
    """
    path = Path(path)
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise ModelError(f"cannot read model pin: {error}", path=path, hint="Pass a JSON pin file or a manifest") from error
    files = document.get("files") if isinstance(document, dict) else None
    if files is None and isinstance(document, dict):
        sources = document.get("sources", [])
        sources = list(sources.values()) if isinstance(sources, dict) else sources
        pinned = [source for source in sources if isinstance(source, dict) and source.get("kind") == PIN_SOURCE_KIND]
        if pinned:
            files = (pinned[0].get("options") or {}).get("sha256")
    valid = isinstance(files, dict) and files and all(
        isinstance(value, str) and re.fullmatch(r"[0-9a-fA-F]{64}", value) for value in files.values()
    )
    if not valid:
        raise ModelError(
            f"no model hashes found; expected \"files\" or a source of kind {PIN_SOURCE_KIND} with options.sha256, each value a SHA-256 hex digest",
            path=path,
        )
    known = set(REQUIRED_FILES) | set(OPTIONAL_FILES)
    unknown = sorted(set(files) - known)
    missing = sorted(set(REQUIRED_FILES) - set(files))
    if unknown or missing:
        raise ModelError(
            f"model pin must list exactly the model files (unknown: {', '.join(unknown) or 'none'}; missing: {', '.join(missing) or 'none'})",
            path=path, hint=f"Pin {', '.join(REQUIRED_FILES)} and optionally {', '.join(OPTIONAL_FILES)}",
        )
    return {str(name): str(value).lower() for name, value in files.items()}


def parse_hf_reference(reference: str) -> tuple[str, str]:
    """Split ``hf://ORG/NAME@REV`` into repo id and revision.

    Raises ModelError when the form is wrong or the revision is missing,
    because an unpinned model can change between two runs.
    """
    match = _HF_PATTERN.match(reference)
    if not match:
        raise ModelError(f"invalid Hugging Face model reference {reference!r}", hint="Write it as hf://ORG/NAME@REVISION")
    if not match.group("revision"):
        raise ModelError(f"revision missing in {reference!r}", hint="Pin a commit: hf://ORG/NAME@<40-hex commit>")
    return match.group("repo"), match.group("revision")


def check_model_name(name: str) -> str:
    """Return ``name`` when it is a valid model name, else raise ModelError."""
    if not _NAME_PATTERN.match(name):
        raise ModelError(f"invalid model name {name!r}", hint="Use letters, digits, '.', '_' or '-' (at most 100 characters)")
    return name


def download_hf_model(reference: str, target: Path) -> tuple[Path, str]:
    """Download the model files of ``hf://ORG/NAME@REV`` into ``target``.

    Resolves the revision to a commit first and downloads that commit, so the
    files and the recorded commit always agree. Returns the folder and the
    commit. Uses huggingface_hub, which honours ``HF_ENDPOINT`` and ``HF_TOKEN``.
    """
    from huggingface_hub import HfApi, snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, RepositoryNotFoundError, RevisionNotFoundError

    repo_id, revision = parse_hf_reference(reference)
    if not _COMMIT_PATTERN.match(revision):
        logger.warning("revision %s of %s is not a commit hash; a branch or tag can move, so pin the commit instead", revision, repo_id)
    patterns = ["*plans.pkl", "*model_final_checkpoint.model", "*model_final_checkpoint.model.pkl", "*postprocessing.json"]
    # huggingface_hub reads HF_ENDPOINT once at import; read it per call so a
    # changed endpoint (a mirror, a test server) is always honoured.
    endpoint = os.environ.get("HF_ENDPOINT") or None
    try:
        commit = HfApi(endpoint=endpoint).repo_info(repo_id, revision=revision).sha or revision
        folder = snapshot_download(repo_id=repo_id, revision=commit, local_dir=target, allow_patterns=patterns, endpoint=endpoint)
    except (RepositoryNotFoundError, RevisionNotFoundError) as error:
        raise FetchError(f"model {repo_id} at revision {revision} not found on the Hub", hint="Check the repository name and revision") from error
    except (HfHubHTTPError, OSError) as error:
        raise FetchError(f"download of model {repo_id}@{revision} failed: {error}", hint="Check the network and HF_ENDPOINT, then retry") from error
    return Path(folder), commit
