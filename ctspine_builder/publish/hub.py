"""Publish stage: push a release to the Hugging Face Hub through a pull request, then tag it.

Steps, in order: refuse an existing tag; create the dataset repo if needed;
open (or reuse, on a re-run) the pull request titled "Release vX.Y.Z";
commit the files that differ from the pull request's head in chunks, so an
interrupted upload resumes from the last committed chunk and LFS objects
already on the Hub are not sent again; check every file at the pull
request's head against the plan's SHA-256; merge; check main again; and
create the tag vX.Y.Z on that exact commit. Main never shows a partial
release, because the merge moves every file at once.
"""
from __future__ import annotations

import logging
import re
from dataclasses import dataclass

from ctspine_builder.errors import PublishError
from ctspine_builder.publish.plan import ReleasePlan

logger = logging.getLogger(__name__)

REPO_TYPE = "dataset"
# Files the Hub manages itself, which a release neither uploads nor deletes.
HUB_MANAGED = {".gitattributes"}
# Operations per commit. Smaller commits lose less work when an upload stops;
# the Hub advises against very large single commits.
DEFAULT_FILES_PER_COMMIT = 200
VERSION_PATTERN = re.compile(r"^\d+\.\d+\.\d+$")


@dataclass
class PublishResult:
    """What a publish did: the repo URL, tag, tagged commit and counts."""

    repo_url: str
    tag: str
    commit: str
    uploaded: int
    deleted: int
    pull_request: int

    def load_line(self, repo_id: str) -> str:
        """Return the Python line that loads this release."""
        return f'load_dataset("{repo_id}", revision="{self.tag}")'


def pull_title(version: str) -> str:
    """Return the title of the pull request that carries a release."""
    return f"Release v{version}"


def existing_tags(api, repo_id: str) -> dict[str, str]:
    """Return {tag: commit} of the repo, or {} when it does not exist yet."""
    from huggingface_hub.errors import RepositoryNotFoundError

    try:
        refs = api.list_repo_refs(repo_id, repo_type=REPO_TYPE)
    except RepositoryNotFoundError:
        return {}
    return {ref.name: ref.target_commit for ref in refs.tags}


def remote_files(api, repo_id: str, revision: str) -> dict[str, object]:
    """Return {path: RepoFile} of every file at ``revision``."""
    from huggingface_hub.hf_api import RepoFile

    entries = api.list_repo_tree(repo_id, repo_type=REPO_TYPE, revision=revision, recursive=True)
    return {entry.path: entry for entry in entries if isinstance(entry, RepoFile)}


def remote_matches(remote, planned) -> bool:
    """Return True when a file on the Hub has the planned content.

    LFS files are compared by their SHA-256 oid; files stored in git by
    git's blob id, which the plan computes from the local bytes.
    """
    if remote.size != planned.size:
        return False
    if remote.lfs is not None:
        return remote.lfs.sha256 == planned.sha256
    return remote.blob_id == planned.git_blob_sha1()


def differences(plan: ReleasePlan, remote: dict) -> tuple[list[str], list[str]]:
    """Return (paths to upload, paths to delete) to make ``remote`` equal the plan."""
    upload = [path for path, item in sorted(plan.files.items()) if path not in remote or not remote_matches(remote[path], item)]
    delete = sorted(path for path in remote if path not in plan.files and path not in HUB_MANAGED)
    return upload, delete


def find_or_open_pull(api, repo_id: str, version: str) -> int:
    """Return the number of the open release pull request, opening one if there is none."""
    title = pull_title(version)
    for discussion in api.get_repo_discussions(repo_id, repo_type=REPO_TYPE, discussion_type="pull_request", discussion_status="open"):
        if discussion.title == title:
            logger.info("resuming release pull request #%d on %s", discussion.num, repo_id)
            return discussion.num
    pull = api.create_pull_request(repo_id, title=title, repo_type=REPO_TYPE, description=f"Dataset release v{version}, uploaded by `ctspine publish`.")
    logger.info("opened release pull request #%d on %s", pull.num, repo_id)
    return pull.num


def sync_revision(api, repo_id: str, revision: str, plan: ReleasePlan, files_per_commit: int) -> tuple[int, int]:
    """Commit what differs between the plan and ``revision`` in chunks; return (uploaded, deleted)."""
    from huggingface_hub import CommitOperationAdd, CommitOperationDelete

    upload, delete = differences(plan, remote_files(api, repo_id, revision))
    logger.info("%d files to upload and %d to delete on %s", len(upload), len(delete), revision)
    operations = [CommitOperationDelete(path_in_repo=path) for path in delete]
    for path in upload:
        item = plan.files[path]
        source = item.content if item.content is not None else str(item.local_path)
        operations.append(CommitOperationAdd(path_in_repo=path, path_or_fileobj=source))
    chunks = [operations[start:start + files_per_commit] for start in range(0, len(operations), files_per_commit)]
    for number, chunk in enumerate(chunks, start=1):
        api.create_commit(
            repo_id,
            operations=chunk,
            commit_message=f"Upload release v{plan.version} ({number}/{len(chunks)})",
            repo_type=REPO_TYPE,
            revision=revision,
        )
        logger.info("committed part %d of %d to %s", number, len(chunks), revision)
    return len(upload), len(delete)


def release_on_main(api, repo_id: str, plan: ReleasePlan) -> bool:
    """Return True when main already has exactly the plan's files."""
    upload, delete = differences(plan, remote_files(api, repo_id, "main"))
    return not upload and not delete


def check_revision(api, repo_id: str, revision: str, plan: ReleasePlan) -> None:
    """Raise PublishError unless the files at ``revision`` are exactly the plan's files."""
    upload, delete = differences(plan, remote_files(api, repo_id, revision))
    if upload or delete:
        raise PublishError(
            f"the Hub's copy at {revision} does not match the local release: "
            f"{len(upload)} files differ or are missing (first: {upload[:3]}), {len(delete)} are extra (first: {delete[:3]})",
            hint="Run the same command again to resume the upload; no tag was created.",
        )
