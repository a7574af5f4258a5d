"""Fetch stage: the CTSpine1K vertebra masks (source kinds ``masks-folder`` and ``masks-hf``).

``masks-folder``: the locator (or option ``folder``) is a local folder, such
as the masks released on Google Drive, in any nesting. A case's mask is the
file at its mask locator when that exists, else the one file named
``<case_id>_seg.nii.gz`` (or ``<case_id>.nii.gz`` when no ``_seg`` file
exists) anywhere under the folder. Several matches are an error, unless
exactly one of them sits under a folder named after the case's subset.

``masks-hf``: the locator is a Hugging Face dataset repository id, read
through huggingface_hub at the revision the option ``revision`` names. A
commit id pins the masks; a branch or tag is resolved to its current commit
once per run, with a warning. A case's file is ``<locator_base>/<mask
locator>`` when the case has a mask locator, else option ``path_pattern``
(default ``raw_data/labels/{subset}/{case_id}_seg.nii.gz``). Option
``endpoint`` (else the HF_ENDPOINT environment variable) selects the Hub.

Every mask is checked before use: an HTML page saved in its place, a cut or
corrupt gzip and a file without a NIfTI header are each reported with the fix.
"""
from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
from collections.abc import Iterator
from pathlib import Path

from ctspine_builder.errors import FetchError, ManifestError
from ctspine_builder.fetch.archive import remove_tree
from ctspine_builder.fetch.cache import Cache
from ctspine_builder.fileio import sha256_file
from ctspine_builder.manifest.model import CaseRecord, SourceRecord
from ctspine_builder.sources.base import BuildContext, FetchedImage, SourcePlan, register_source_kind
from ctspine_builder.sources.file_checks import check_nifti_file

logger = logging.getLogger(__name__)

DEFAULT_PATH_PATTERN = "raw_data/labels/{subset}/{case_id}_seg.nii.gz"
COMMIT_ID = re.compile(r"^[0-9a-f]{40}$")
MASK_SUFFIX = ".nii.gz"

# Branch or tag -> commit id, resolved once per process and Hub repository.
_RESOLVED_REVISIONS: dict[tuple[str, str, str], str] = {}


@contextlib.contextmanager
def _hub_errors(
    record: SourceRecord, repo_id: str, revision: str, path: str | None, case_id: str | None = None
) -> Iterator[None]:
    """Turn huggingface_hub's errors into FetchError naming the repository, revision and file."""
    from huggingface_hub.errors import (
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RemoteEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    where = f"dataset {repo_id} at revision {revision}"
    try:
        yield
    except RevisionNotFoundError:
        raise FetchError(
            f"revision not found: {where}", case_id=case_id,
            hint=f"Check option revision of source {record.id!r}.",
        ) from None
    except RepositoryNotFoundError:
        raise FetchError(
            f"dataset repository not found or not accessible: {repo_id}", case_id=case_id,
            hint=f"Check the locator of source {record.id!r}; a gated or private repository needs HF_TOKEN.",
        ) from None
    except RemoteEntryNotFoundError:
        raise FetchError(
            f"mask file {path} not found in {where}", case_id=case_id,
            hint="Check the case's mask locator and the source's locator_base or path_pattern option.",
        ) from None
    except LocalEntryNotFoundError as error:
        # huggingface_hub raises this when the Hub cannot be reached and no
        # local copy exists, not when the file is missing on the Hub.
        raise FetchError(
            f"could not reach the Hub for {where}: {error}", case_id=case_id,
            hint="Check the network and HF_ENDPOINT, then run the build again.",
        ) from None
    except (HfHubHTTPError, OSError) as error:
        raise FetchError(
            f"download of {path or 'repository metadata'} from {where} failed: {error}", case_id=case_id,
            hint="Run the build again; if it repeats, check the Hub's status.",
        ) from None


def _images_rejected(record: SourceRecord, case: CaseRecord) -> FetchError:
    return FetchError(
        f"{record.kind} source {record.id!r} provides masks only, not images",
        case_id=case.case_id,
        hint="Point the case's image at an image source.",
    )


@register_source_kind("masks-folder")
class MaskFolderSource:
    """Vertebra masks in a local folder, found by case id in any nesting."""

    def __init__(self, record: SourceRecord, context: BuildContext) -> None:
        self.record = record
        folder = record.options.get("folder") or record.locator
        if not folder:
            raise FetchError(
                f"masks-folder source {record.id!r} has no folder",
                hint="Set the source's locator to the folder that contains the mask files.",
            )
        self.root = context.manifest.resolve_path(str(folder))
        if not self.root.is_dir():
            raise FetchError(
                f"masks folder {self.root} not found for source {record.id!r}",
                hint="Download the released masks into that folder, or correct the source's locator.",
            )

    def find(self, case: CaseRecord) -> Path:
        """Return the case's mask file in the folder; raise FetchError when none or several match."""
        if case.mask is not None and case.mask.locator and (self.root / case.mask.locator).is_file():
            return self.root / case.mask.locator

        tiers = [
            {f"{case.case_id}_seg.nii.gz", f"{case.case_id}_seg.nii"},
            {f"{case.case_id}.nii.gz", f"{case.case_id}.nii"},
        ]
        candidate_names = set().union(*tiers)
        found = sorted(path for path in self.root.rglob("*") if path.name in candidate_names and path.is_file())
        for names in tiers:
            matches = [path for path in found if path.name in names]
            if len(matches) == 1:
                return matches[0]
            if matches:
                return self._pick_by_subset(case, matches)
        looked_for = ", ".join(sorted(tiers[0]) + sorted(tiers[1]))
        raise FetchError(
            f"mask not found under {self.root} (looked for {looked_for} in any folder)",
            case_id=case.case_id,
            hint="Check that the masks folder is complete, or set the case's mask locator.",
        )

    def _pick_by_subset(self, case: CaseRecord, matches: list[Path]) -> Path:
        in_subset = [path for path in matches if case.subset in path.relative_to(self.root).parts[:-1]]
        if len(in_subset) == 1:
            return in_subset[0]
        listed = ", ".join(str(path.relative_to(self.root)) for path in matches)
        raise FetchError(
            f"{len(matches)} candidate masks under {self.root}: {listed}",
            case_id=case.case_id,
            hint="Remove the extra copies, or set the case's mask locator to the intended file.",
        )

    def fetch_mask(self, case: CaseRecord, context: BuildContext) -> Path:
        """Return the case's mask file in place, after checking that it is a complete NIfTI."""
        path = self.find(case)
        check_nifti_file(path, case_id=case.case_id, file_role="mask")
        return path

    def fetch_image(self, case: CaseRecord, context: BuildContext) -> FetchedImage:
        """Raise FetchError: this source provides masks only."""
        raise _images_rejected(self.record, case)

    def plan(self, case: CaseRecord, context: BuildContext) -> SourcePlan:
        """Describe the case's mask file; nothing is downloaded."""
        path = self.find(case)
        return SourcePlan(f"mask {path}", 0, path.stat().st_size)

    def input_fingerprint(self, case: CaseRecord, context: BuildContext, role: str) -> str:
        """Return the SHA-256 of the case's mask file."""
        return sha256_file(self.find(case))


@register_source_kind("masks-hf")
class HubMaskSource:
    """Vertebra masks from a Hugging Face dataset repository at a given revision."""

    def __init__(self, record: SourceRecord, context: BuildContext) -> None:
        self.record = record
        self.repo_id = record.locator
        self.revision = str(record.options.get("revision") or "")
        if not self.repo_id or not self.revision:
            raise ManifestError(
                f"masks-hf source {record.id!r} needs a repository id (locator) and a revision (option revision)",
                hint="Set the locator to the dataset repository, for example owner/name, and option revision "
                "to a commit id so that every build reads the same masks.",
            )
        self.path_pattern = str(record.options.get("path_pattern") or DEFAULT_PATH_PATTERN)
        self.locator_base = str(record.options.get("locator_base") or "").strip("/")
        self.endpoint = record.options.get("endpoint") or os.environ.get("HF_ENDPOINT") or None
        self.cache = Cache(context.cache_dir)

    def repo_path(self, case: CaseRecord) -> str:
        """Return the path of the case's mask inside the repository."""
        if case.mask is not None and case.mask.locator:
            locator = case.mask.locator.strip("/")
            return f"{self.locator_base}/{locator}" if self.locator_base else locator
        try:
            return self.path_pattern.format(subset=case.subset, case_id=case.case_id, split=case.split)
        except (KeyError, IndexError, ValueError) as error:
            raise ManifestError(
                f"masks-hf source {self.record.id!r} has invalid path_pattern {self.path_pattern!r}: {error}",
                hint="Use the fields {subset}, {case_id} and {split} only.",
            ) from None

    def commit(self) -> str:
        """Return the commit id of the configured revision, resolving a branch or tag once per run."""
        if COMMIT_ID.match(self.revision):
            return self.revision
        key = (self.endpoint or "", self.repo_id, self.revision)
        if key not in _RESOLVED_REVISIONS:
            from huggingface_hub import HfApi

            with _hub_errors(self.record, self.repo_id, self.revision, None):
                info = HfApi(endpoint=self.endpoint).dataset_info(self.repo_id, revision=self.revision)
            _RESOLVED_REVISIONS[key] = info.sha
            logger.warning(
                "masks source %s: revision %r is not a commit id; using its current commit %s. "
                "Set option revision to that commit id so that later builds read the same masks.",
                self.record.id, self.revision, info.sha,
            )
        return _RESOLVED_REVISIONS[key]

    def _cache_key(self, commit: str, path: str) -> str:
        identity = f"hf-dataset:{self.endpoint or 'default'}:{self.repo_id}@{commit}/{path}"
        return hashlib.sha256(identity.encode("utf-8")).hexdigest()

    def fetch_mask(self, case: CaseRecord, context: BuildContext) -> Path:
        """Return the case's mask, downloaded into the cache at the pinned commit and checked."""
        commit = self.commit()
        path = self.repo_path(case)
        key = self._cache_key(commit, path)
        cached = self.cache.get("hf", key, MASK_SUFFIX)
        if cached is not None:
            check_nifti_file(cached, case_id=case.case_id, file_role="mask")
            return cached

        from huggingface_hub import hf_hub_download

        staging = self.cache.staging_dir()
        try:
            with _hub_errors(self.record, self.repo_id, commit, path, case.case_id):
                local = hf_hub_download(
                    self.repo_id, path, repo_type="dataset", revision=commit,
                    local_dir=staging, endpoint=self.endpoint,
                )
            check_nifti_file(Path(local), case_id=case.case_id, file_role="mask")
            return self.cache.add(local, "hf", key, MASK_SUFFIX)
        finally:
            remove_tree(staging)

    def fetch_image(self, case: CaseRecord, context: BuildContext) -> FetchedImage:
        """Raise FetchError: this source provides masks only."""
        raise _images_rejected(self.record, case)

    def plan(self, case: CaseRecord, context: BuildContext) -> SourcePlan:
        """Return the mask's size from the Hub's file metadata (one HEAD request), or 0 when cached."""
        commit = self.commit()
        path = self.repo_path(case)
        if self.cache.get("hf", self._cache_key(commit, path), MASK_SUFFIX) is not None:
            return SourcePlan(f"mask {self.repo_id}/{path} (cached)", 0, 0)

        from huggingface_hub import get_hf_file_metadata, hf_hub_url

        url = hf_hub_url(self.repo_id, path, repo_type="dataset", revision=commit, endpoint=self.endpoint)
        with _hub_errors(self.record, self.repo_id, commit, path, case.case_id):
            metadata = get_hf_file_metadata(url, endpoint=self.endpoint)
        size = metadata.size or 0
        return SourcePlan(f"mask {self.repo_id}/{path}@{commit[:12]}", size, size)
