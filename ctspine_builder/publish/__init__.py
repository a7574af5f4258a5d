"""Publish stage: verified, versioned releases of a dataset folder on the Hugging Face Hub."""
from __future__ import annotations

import json
import logging
import re
from pathlib import Path

from ctspine_builder.errors import PublishError
from ctspine_builder.package.card_release import ReleaseNotes, compare_builds
from ctspine_builder.publish.hub import (
    DEFAULT_FILES_PER_COMMIT,
    REPO_TYPE,
    VERSION_PATTERN,
    PublishResult,
    check_revision,
    release_on_main,
    existing_tags,
    find_or_open_pull,
    sync_revision,
)
from ctspine_builder.publish.plan import CARD_FILE, ReleasePlan, build_plan, check_licenses, read_build

logger = logging.getLogger(__name__)

REPO_ID_PATTERN = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def check_arguments(repo_id: str, version: str) -> None:
    """Raise PublishError for a repo id or version the Hub or semver would reject."""
    if not REPO_ID_PATTERN.match(repo_id):
        raise PublishError(f"invalid repo id {repo_id!r}: expected ORG/NAME", hint="For example --repo my-lab/ctspine1k.")
    if not VERSION_PATTERN.match(version):
        raise PublishError(f"invalid version {version!r}: expected X.Y.Z", hint="For example --version 1.0.0 (the tag becomes v1.0.0).")


def verify_before_publish(root: Path) -> None:
    """Run the verify stage on ``root`` and raise PublishError listing its failures."""
    try:
        from ctspine_builder.verify import verify_dataset
    except ImportError as error:
        raise PublishError("the verify stage is not available in this installation", hint="Reinstall ctspine_builder.") from error
    report = verify_dataset(root)
    failures = _report_failures(report)
    if failures:
        listed = "\n  ".join(failures[:20])
        more = f"\n  ... and {len(failures) - 20} more" if len(failures) > 20 else ""
        raise PublishError(
            f"dataset failed verification, so it was not published:\n  {listed}{more}",
            path=root,
            hint="Run `ctspine verify` on the folder for the full report, fix or rebuild, then publish again.",
        )


def _report_failures(report) -> list[str]:
    """Return one line per failed check of a VerifyReport: case id, check and message."""
    lines = []
    for case in [report.dataset, *report.cases]:
        for check, result in case.checks.items():
            lines += [f"{case.case_id}: {check}: {message}" for message in result.messages]
    if not lines and not report.ok:
        lines.append("verification failed without a message; run `ctspine verify` for the report")
    return lines


def previous_release(api, repo_id: str, version: str, tags: dict[str, str]) -> tuple[str | None, dict | None]:
    """Return (version, build.json) of the newest tagged release older than ``version``."""
    from huggingface_hub import hf_hub_download

    older = []
    for tag in tags:
        match = re.fullmatch(r"v(\d+)\.(\d+)\.(\d+)", tag)
        if match and tuple(map(int, match.groups())) < tuple(map(int, version.split("."))):
            older.append(tuple(map(int, match.groups())))
    if not older:
        return None, None
    previous = ".".join(map(str, max(older)))
    path = hf_hub_download(repo_id, "build.json", repo_type=REPO_TYPE, revision=f"v{previous}", endpoint=api.endpoint)
    return previous, json.loads(Path(path).read_text(encoding="utf-8"))


def prepare_release(root: Path, version: str, notes: ReleaseNotes, gated: bool) -> ReleasePlan:
    """Check licences and return the plan of files to publish; contacts no server."""
    build = read_build(root)
    check_licenses(root, build, (root / CARD_FILE).read_text(encoding="utf-8"))
    return build_plan(root, version, notes, gated)


def dry_run(root: Path, repo_id: str, version: str, gated: bool) -> ReleasePlan:
    """Verify and plan a release without contacting any server."""
    check_arguments(repo_id, version)
    verify_before_publish(root)
    notes = ReleaseNotes(version=version, previous_version=None, checked=False)
    return prepare_release(root, version, notes, gated)


def publish_release(
    root: Path,
    repo_id: str,
    version: str,
    *,
    private: bool = False,
    gated: bool = False,
    files_per_commit: int = DEFAULT_FILES_PER_COMMIT,
) -> tuple[PublishResult, ReleasePlan]:
    """Publish ``root`` as release vX.Y.Z of the dataset repo ``repo_id``.

    The token comes from huggingface_hub's usual places (HF_TOKEN or a saved
    login). Raises PublishError when verification or the licence check
    fails, when the tag exists already, or when the upload stops. Running
    the same call again resumes an upload that stopped.
    """
    from huggingface_hub import HfApi, get_token
    from huggingface_hub.errors import HfHubHTTPError

    try:
        from httpx2 import TransportError  # the HTTP client of huggingface_hub 2.x
    except ImportError:
        from requests import ConnectionError as TransportError  # huggingface_hub before 1.0

    check_arguments(repo_id, version)
    verify_before_publish(root)
    if get_token() is None:
        raise PublishError("no Hugging Face token found", hint="Set HF_TOKEN or run `hf auth login`, then publish again.")
    api = HfApi()
    tag = f"v{version}"
    try:
        return _push(api, root, repo_id, version, tag, private, gated, files_per_commit)
    except (HfHubHTTPError, TransportError, RuntimeError) as error:
        # huggingface_hub wraps a failed LFS upload in a RuntimeError whose
        # cause is the HTTP error; other RuntimeErrors are not upload failures.
        cause = error.__cause__ if isinstance(error, RuntimeError) else error
        if isinstance(error, RuntimeError) and not isinstance(cause, (HfHubHTTPError, TransportError)):
            raise
        # The error text contains the URL and the server's message, never the token.
        reason = f"{str(error).splitlines()[0]} ({str(cause).splitlines()[0]})" if cause is not error else str(error).splitlines()[0]
        raise PublishError(
            f"upload of {tag} to {repo_id} stopped: {reason}",
            hint="Run the same command again to resume; files already on the Hub are not sent again, and no tag was created.",
        ) from error


def _push(api, root: Path, repo_id: str, version: str, tag: str, private: bool, gated: bool, files_per_commit: int):
    tags = existing_tags(api, repo_id)
    if tag in tags:
        raise PublishError(
            f"tag {tag} already exists on {repo_id} (commit {tags[tag][:12]}); a published release is never moved",
            hint="Publish the changes under a new --version.",
        )
    previous_version, previous_build = previous_release(api, repo_id, version, tags)
    notes = compare_builds(previous_build, read_build(root), version, previous_version)
    plan = prepare_release(root, version, notes, gated)

    repo_url = api.create_repo(repo_id, repo_type=REPO_TYPE, private=private, exist_ok=True)
    if gated:
        # The card's extra_gated_* fields only shape the form; the repo
        # setting is what makes the Hub ask for it. Set it before any upload.
        api.update_repo_settings(repo_id, gated="auto", repo_type=REPO_TYPE)
    pull = find_or_open_pull(api, repo_id, version)
    revision = f"refs/pr/{pull}"
    uploaded, deleted = sync_revision(api, repo_id, revision, plan, files_per_commit)
    check_revision(api, repo_id, revision, plan)

    if release_on_main(api, repo_id, plan):
        # A run that stopped after the merge left main complete: an empty pull
        # request has nothing to merge, so close it and tag main.
        api.change_discussion_status(repo_id, pull, "closed", repo_type=REPO_TYPE, comment="main already contains this release.")
    else:
        api.merge_pull_request(repo_id, pull, repo_type=REPO_TYPE, comment=f"Merged by `ctspine publish` after checking every file of {tag}.")
    commit = api.repo_info(repo_id, repo_type=REPO_TYPE, revision="main").sha
    check_revision(api, repo_id, commit, plan)
    api.create_tag(repo_id, tag=tag, revision=commit, repo_type=REPO_TYPE, tag_message=f"Dataset release {tag}")
    logger.info("tagged %s at %s on %s", tag, commit, repo_id)
    return PublishResult(str(repo_url), tag, commit, uploaded, deleted, pull), plan
