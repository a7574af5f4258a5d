"""Fetch stage: the Medical Segmentation Decathlon Task03_Liver images (source kind ``msd``).

The source locator is the tar's URL (default: the mirror MONAI uses), a
local copy of the tar (a path or ``file://`` URL), or a folder holding the
extracted ``imagesTr``/``imagesTs`` folders. The options ``archive`` and
``folder`` name a local tar or folder too, and take precedence over the
URL. Option ``md5`` pins the tar's MD5.

A case's image locator is ``imagesTr/<file>`` or ``imagesTs/<file>``; when
empty, ``<case_id>.nii.gz`` is looked up in both. All images the manifest
needs from this source are extracted in one pass over the tar, the first
time any case requests one, and kept in the cache by content hash.

With the build option ``keep_archive`` (the default) the tar is downloaded
into the cache and a stopped download resumes with a Range request. With
``keep_archive`` False the images are extracted from the HTTP stream, no part
of the tar is stored, and a stopped download starts again from the beginning.
"""
from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from urllib.parse import unquote, urlsplit

from ctspine_builder.errors import FetchError
from ctspine_builder.fetch.cache import Cache
from ctspine_builder.fetch.download import BodyInterrupted, download_file, partial_path
from ctspine_builder.fetch.http import HttpClient, redact_url
from ctspine_builder.manifest.model import CaseRecord, SourceRecord
from ctspine_builder.sources.base import BuildContext, FetchedImage, SourcePlan, register_source_kind
from ctspine_builder.sources.file_checks import check_nifti_file
from ctspine_builder.sources.msd_extract import (
    IMAGE_FOLDERS,
    MemberIndex,
    archive_lock,
    extract_members,
    member_key,
)
from ctspine_builder.sources.tcia import make_http_client

logger = logging.getLogger(__name__)

DEFAULT_URL = "https://msd-for-monai.s3-us-west-2.amazonaws.com/Task03_Liver.tar"
# The MD5 that MONAI checks for the tar at DEFAULT_URL.
DEFAULT_MD5 = "a90ec6c4aa7f6a3d087205e23d4e6397"
ARCHIVE_NAME = "Task03_Liver.tar"

FOLDER_HTML_HINT = "Replace it with the file from the Task03_Liver tar, or point the source at the tar."

# Task03_Liver has 201 images (131 in imagesTr, 70 in imagesTs), used to
# estimate one image's share of the tar for --dry-run.
TASK03_IMAGE_COUNT = 201

# Archives already counted by `plan` in this process, so a dry run counts
# the shared tar once rather than once per case, and tar sizes by URL, so it
# sends one HEAD request per tar.
_PLANNED_ARCHIVES: set[str] = set()
_REMOTE_SIZES: dict[str, int] = {}


def _local_path(locator: str) -> Path | None:
    """Return the local path a locator names (plain path or file:// URL), or None for a network URL."""
    parts = urlsplit(locator)
    if parts.scheme == "file":
        return Path(unquote(parts.path))
    if parts.scheme in ("http", "https"):
        return None
    return Path(locator).expanduser()


def http_client(context: BuildContext) -> HttpClient:
    """Return the HTTP client in build option ``http_client``, else one made from the build's HTTP options."""
    client = context.options.get("http_client")
    return client if client is not None else make_http_client(context)


@register_source_kind("msd")
class MsdSource:
    """Task03_Liver images from the tar over HTTP, a local tar, or an extracted folder."""

    def __init__(self, record: SourceRecord, context: BuildContext) -> None:
        self.record = record
        self.md5 = str(record.options.get("md5", DEFAULT_MD5) or "").lower()
        self.url = record.locator or DEFAULT_URL
        self.tar_path: Path | None = None
        self.folder: Path | None = None

        local = record.options.get("folder") or record.options.get("archive")
        local_path = context.manifest.resolve_path(str(local)) if local else None
        if local_path is None and (path := _local_path(self.url)) is not None:
            local_path = context.manifest.resolve_path(str(path))
        if local_path is not None:
            if local_path.is_dir():
                self.folder = local_path
            elif local_path.is_file():
                self.tar_path = local_path
            else:
                raise FetchError(
                    f"MSD source {record.id!r}: no tar file or folder at {local_path}",
                    hint="Set the locator to the Task03_Liver.tar URL, a downloaded Task03_Liver.tar, "
                    "or the extracted Task03_Liver folder.",
                )
        self.cache = Cache(context.cache_dir)
        self.keep_archive = bool(context.options.get("keep_archive", True))
        self.progress = bool(context.options.get("progress", True))

    @property
    def archive_algorithm(self) -> str:
        """The cache algorithm name of the kept tar: ``md5`` when pinned, else ``url``."""
        return "md5" if self.md5 else "url"

    @property
    def archive_key(self) -> str:
        """The cache key of this archive's member index: its MD5, or a hash of its location."""
        if self.md5:
            return self.md5
        return hashlib.sha256(str(self.tar_path or self.url).encode("utf-8")).hexdigest()

    def candidate_keys(self, case: CaseRecord) -> list[str]:
        """Return the member keys that may hold the case's image, in lookup order."""
        locator = case.image.locator
        if not locator:
            return [f"{folder}/{case.case_id}.nii.gz" for folder in IMAGE_FOLDERS]
        key = member_key(locator)
        if key is None:
            raise FetchError(
                f"MSD image locator {locator!r} is not an image in {' or '.join(IMAGE_FOLDERS)}",
                case_id=case.case_id,
                hint="Use imagesTr/<name>.nii.gz or imagesTs/<name>.nii.gz, or leave the locator empty.",
            )
        return [key]

    def fetch_image(self, case: CaseRecord, context: BuildContext) -> FetchedImage:
        """Return the case's NIfTI image, extracting the build's MSD images from the tar first if needed."""
        if self.folder is not None:
            # Files extracted by hand have no MD5 to vouch for them, so check them here.
            key, path = self._find_in_folder(case)
            check_nifti_file(path, case_id=case.case_id, file_role="image", html_hint=FOLDER_HTML_HINT)
        else:
            key, path = self._find_in_cache(case, context)
        logger.debug("case %s: MSD image %s at %s", case.case_id, key, path)
        return FetchedImage(
            case_id=case.case_id,
            kind="nifti",
            path=path,
            provenance={"source": self.record.id, "kind": self.record.kind, "member": key},
        )

    def fetch_mask(self, case: CaseRecord, context: BuildContext) -> Path:
        """Raise FetchError: Task03_Liver has liver labels only, no vertebra masks."""
        raise FetchError(
            f"MSD source {self.record.id!r} provides images only, not vertebra masks",
            case_id=case.case_id,
            hint="Point the case's mask at a masks source (masks-folder or masks-hf).",
        )

    def _find_in_folder(self, case: CaseRecord) -> tuple[str, Path]:
        assert self.folder is not None
        keys = self.candidate_keys(case)
        for base in (self.folder, self.folder / "Task03_Liver"):
            for key in keys:
                if (base / key).is_file():
                    return key, base / key
        raise FetchError(
            f"MSD image not found in folder {self.folder} (looked for {', '.join(keys)})",
            case_id=case.case_id,
            hint="Point the locator at the extracted Task03_Liver folder that holds imagesTr and imagesTs.",
        )

    def _find_in_cache(self, case: CaseRecord, context: BuildContext) -> tuple[str, Path]:
        keys = self.candidate_keys(case)
        found = self._cached(keys)
        if found is not None:
            return found
        with archive_lock(self.cache, self.archive_key):
            # Another worker may have extracted it while this one waited.
            found = self._cached(keys)
            if found is None:
                self._extract(self._needed_keys(context) | set(keys), context)
                found = self._cached(keys)
        if found is None:
            raise FetchError(
                f"image not found in {self._label()} (looked for {', '.join(keys)})",
                case_id=case.case_id,
                hint="Check the case id and the image locator, and that the source points at Task03_Liver.",
            )
        return found

    def _cached(self, keys: list[str]) -> tuple[str, Path] | None:
        index = MemberIndex.load(self.cache, self.archive_key)
        for key in keys:
            path = index.cached_path(self.cache, key)
            if path is not None:
                return key, path
        return None

    def _needed_keys(self, context: BuildContext) -> set[str]:
        """Return the member keys that this build's cases need from this source and the cache lacks.

        The build's cases are those in option ``selected_case_ids`` when it
        is set, else every case of the manifest.
        """
        index = MemberIndex.load(self.cache, self.archive_key)
        selected = context.options.get("selected_case_ids")
        selected_ids = set(selected) if selected is not None else None
        needed: set[str] = set()
        for case in context.manifest.cases:
            if case.image.source != self.record.id:
                continue
            if selected_ids is not None and case.case_id not in selected_ids:
                continue
            keys = self.candidate_keys(case)
            if not any(index.cached_path(self.cache, key) for key in keys):
                needed.update(keys)
        return needed

    def _label(self) -> str:
        return str(self.tar_path) if self.tar_path else redact_url(self.url)

    def _extract(self, needed: set[str], context: BuildContext) -> None:
        index = MemberIndex.load(self.cache, self.archive_key)
        if self.tar_path is not None:
            with open(self.tar_path, "rb") as handle:
                extract_members(handle, str(self.tar_path), needed, self.cache, index, md5=self.md5)
        elif self.keep_archive:
            self._extract_kept(needed, context, index)
        else:
            self._extract_streamed(needed, context, index)

    def _extract_kept(self, needed: set[str], context: BuildContext, index: MemberIndex) -> None:
        """Download the tar into the cache (resuming a kept partial download), then extract from it."""
        dest = self.cache.path_for(self.archive_algorithm, self.archive_key, ".tar")
        if self.cache.get(self.archive_algorithm, self.archive_key, ".tar") is None:
            download_file(
                http_client(context), self.url, dest, md5=self.md5 or None, resume=True,
                progress=self.progress, description=ARCHIVE_NAME,
            )
        try:
            with open(dest, "rb") as handle:
                extract_members(handle, str(dest), needed, self.cache, index, md5=self.md5)
        except FetchError as error:
            # The kept copy was verified when it arrived, so a failure now
            # means it was damaged on disk: delete it so the next run downloads it.
            dest.unlink(missing_ok=True)
            raise FetchError(
                f"the kept archive failed its check and was deleted: {error.message}",
                path=dest,
                hint="Run the build again to download it.",
            ) from error

    def _extract_streamed(self, needed: set[str], context: BuildContext, index: MemberIndex) -> None:
        """Extract from the HTTP body as it arrives; an interrupted body restarts from byte 0."""
        client = http_client(context)
        failures = 0
        while True:
            try:
                self._stream_once(client, needed, index)
                return
            except BodyInterrupted as error:
                failures += 1
                if failures > client.retries:
                    raise FetchError(
                        f"download of {redact_url(self.url)} was interrupted {failures} times ({error})",
                        hint="Without a kept archive every attempt starts from the beginning. Run the build "
                        "again, or build with --keep-archive so that a stopped download resumes.",
                    ) from None
                delay = client.backoff_delay(failures - 1)
                logger.warning(
                    "download of %s interrupted (%s); restarting from the beginning in %.1f s (%d retries left)",
                    redact_url(self.url), error, delay, client.retries - failures,
                )
                client._sleep(delay)

    def _stream_once(self, client: HttpClient, needed: set[str], index: MemberIndex) -> None:
        from tqdm import tqdm

        response = client.get(self.url, stream=True)
        with response:
            if response.status_code != 200:
                raise FetchError(
                    f"GET {redact_url(self.url)} returned HTTP {response.status_code}",
                    hint="Check the URL and that the tar is still published there.",
                )
            if response.headers.get("Content-Type", "").lower().startswith("text/html"):
                raise FetchError(
                    f"{redact_url(self.url)} returned an HTML page instead of the tar",
                    hint="Check the URL, or download the tar in a browser and set the locator to the local copy.",
                )
            length_header = response.headers.get("Content-Length", "")
            length = int(length_header) if length_header.isdigit() else None
            response.raw.decode_content = True
            with tqdm.wrapattr(
                response.raw, "read", total=length, desc=ARCHIVE_NAME, disable=not self.progress, leave=False,
            ) as body:
                extract_members(
                    body, redact_url(self.url), needed, self.cache, index, md5=self.md5, expected_length=length,
                )

    def plan(self, case: CaseRecord, context: BuildContext) -> SourcePlan:
        """Estimate the download and disk space for the case; sends at most one HEAD request.

        The shared tar is counted for the first case planned in this process
        only. NOTE: one image's disk share is estimated as the tar size
        divided by Task03_Liver's 201 images.
        """
        if self.folder is not None:
            key, path = self._find_in_folder(case)
            return SourcePlan(f"MSD image {key} in {self.folder}", 0, path.stat().st_size)
        found = self._cached(self.candidate_keys(case))
        if found is not None:
            return SourcePlan(f"MSD image {found[0]} (cached)", 0, 0)

        first = self.archive_key not in _PLANNED_ARCHIVES
        _PLANNED_ARCHIVES.add(self.archive_key)
        if self.tar_path is not None:
            size = self.tar_path.stat().st_size
            return SourcePlan(f"MSD image from {self.tar_path}", 0, size // TASK03_IMAGE_COUNT)
        kept_archive = self.cache.get(self.archive_algorithm, self.archive_key, ".tar")
        size = kept_archive.stat().st_size if kept_archive is not None else self._remote_size(context)
        download = 0
        if kept_archive is None and first:
            partial = partial_path(self.cache.path_for(self.archive_algorithm, self.archive_key, ".tar"))
            resumed = partial.stat().st_size if self.keep_archive and partial.is_file() else 0
            download = size - resumed
        disk = size // TASK03_IMAGE_COUNT + (size if self.keep_archive and kept_archive is None and first else 0)
        shared = f"shared {ARCHIVE_NAME}, counted once" if first else f"shared {ARCHIVE_NAME}, counted already"
        return SourcePlan(f"MSD image from {redact_url(self.url)} ({shared})", download, disk)

    def _remote_size(self, context: BuildContext) -> int:
        if self.url in _REMOTE_SIZES:
            return _REMOTE_SIZES[self.url]
        response = http_client(context).request("HEAD", self.url, allow_redirects=True)
        with response:
            length = response.headers.get("Content-Length", "")
            if response.status_code != 200 or not length.isdigit():
                raise FetchError(
                    f"HEAD {redact_url(self.url)} returned HTTP {response.status_code} "
                    f"{'with' if length else 'without'} a usable Content-Length",
                    hint="Check the URL; the dry run needs the tar's size.",
                )
        _REMOTE_SIZES[self.url] = int(length)
        return int(length)
