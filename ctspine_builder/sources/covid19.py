"""Fetch stage: NIfTI images of TCIA's "CT Images in COVID-19" collection (source kind ``covid19``).

CTSpine1K names these cases after the COVID-19-20 challenge files
(``volume-covid19-A-0003_ct``), while TCIA publishes
``volume-covid19-A-0003.nii.gz``. The rule applied here drops the ``_ct``
suffix. NOTE: that rule is inferred from the two naming schemes and not
confirmed by TCIA; `unmatched_case_ids` lists every id it does not fit.

The source locator is a local folder of the TCIA files in any nesting (a
path or a ``file://`` URL), or a base URL to which the file name is appended.
The options ``folder`` and ``base_url`` set them explicitly and take
precedence. A case's image locator, when set, is the TCIA file name to use.
"""
from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Iterable
from pathlib import Path
from urllib.parse import quote, unquote, urlsplit

from ctspine_builder.errors import FetchError
from ctspine_builder.fetch.cache import Cache
from ctspine_builder.fetch.download import download_file
from ctspine_builder.fetch.http import redact_url
from ctspine_builder.manifest.model import CaseRecord, Manifest, SourceRecord
from ctspine_builder.sources.base import BuildContext, FetchedImage, SourcePlan, register_source_kind
from ctspine_builder.sources.file_checks import check_nifti_file
from ctspine_builder.sources.msd import http_client

logger = logging.getLogger(__name__)

# CTSpine1K ids of this subset: volume-covid19-A-<4 digits>, an optional
# _<series number>, then _ct.
CASE_ID_RULE = re.compile(r"^(volume-covid19-A-\d{4}(?:_\d+)?)_ct$")

# A DOI link opens the collection's landing page, not a file.
LANDING_HOSTS = ("doi.org", "dx.doi.org")

HTML_HINT = "The server sent a web page instead of the NIfTI file; check the source's base_url."


def tcia_file_name(case_id: str) -> str | None:
    """Return TCIA's file name for a CTSpine1K COVID-19 case id, or None if the id does not fit the rule."""
    match = CASE_ID_RULE.match(case_id)
    return f"{match.group(1)}.nii.gz" if match else None


def unmatched_case_ids(case_ids: Iterable[str]) -> list[str]:
    """Return the case ids that the naming rule cannot map to a TCIA file name, in input order."""
    return [case_id for case_id in case_ids if tcia_file_name(case_id) is None]


def unmatched_in_manifest(manifest: Manifest) -> list[str]:
    """Return the ids of covid19-sourced cases whose id or image locator breaks the naming rule.

    A case breaks the rule when its id does not fit it, or when its image
    locator names a different file than the rule gives.
    """
    covid_sources = {source_id for source_id, record in manifest.sources.items() if record.kind == "covid19"}
    unmatched = []
    for case in manifest.cases:
        if case.image.source not in covid_sources:
            continue
        expected = tcia_file_name(case.case_id)
        if expected is None or (case.image.locator and Path(case.image.locator).name != expected):
            unmatched.append(case.case_id)
    return unmatched


def _local_path(locator: str) -> Path | None:
    parts = urlsplit(locator)
    if parts.scheme == "file":
        return Path(unquote(parts.path))
    if parts.scheme in ("http", "https") or not locator:
        return None
    return Path(locator).expanduser()


@register_source_kind("covid19")
class Covid19Source:
    """CT Images in COVID-19 NIfTI files from a local folder or a download base URL."""

    def __init__(self, record: SourceRecord, context: BuildContext) -> None:
        self.record = record
        self.folder: Path | None = None
        self.base_url: str | None = record.options.get("base_url")
        local = record.options.get("folder") or (None if self.base_url else _local_path(record.locator))
        if local is not None:
            self.folder = context.manifest.resolve_path(str(local))
            if not self.folder.is_dir():
                raise FetchError(
                    f"COVID-19 source {record.id!r}: folder {self.folder} not found",
                    hint="Set the locator to the folder holding the TCIA volume-covid19-A-*.nii.gz files.",
                )
        elif self.base_url is None:
            self.base_url = record.locator
        self.cache = Cache(context.cache_dir)
        self.progress = bool(context.options.get("progress", True))

    def file_name(self, case: CaseRecord) -> str:
        """Return the TCIA file name for the case: its image locator, else the naming rule."""
        if case.image.locator:
            return Path(case.image.locator).name
        name = tcia_file_name(case.case_id)
        if name is None:
            raise FetchError(
                "case id does not fit the COVID-19 naming rule (volume-covid19-A-NNNN[_N]_ct)",
                case_id=case.case_id,
                hint="Set the case's image locator to the TCIA file name.",
            )
        return name

    def fetch_image(self, case: CaseRecord, context: BuildContext) -> FetchedImage:
        """Return the case's NIfTI image from the folder, or download it into the cache first."""
        name = self.file_name(case)
        path = self._find_local(case, name) if self.folder else self._download(case, name, context)
        check_nifti_file(path, case_id=case.case_id, file_role="image", html_hint=HTML_HINT)
        return FetchedImage(
            case_id=case.case_id,
            kind="nifti",
            path=path,
            provenance={"source": self.record.id, "kind": self.record.kind, "file": name},
        )

    def fetch_mask(self, case: CaseRecord, context: BuildContext) -> Path:
        """Raise FetchError: the collection has no vertebra masks."""
        raise FetchError(
            f"COVID-19 source {self.record.id!r} provides images only, not vertebra masks",
            case_id=case.case_id,
            hint="Point the case's mask at a masks source (masks-folder or masks-hf).",
        )

    def _find_local(self, case: CaseRecord, name: str) -> Path:
        assert self.folder is not None
        names = {name, name.removesuffix(".gz")}
        matches = sorted(path for path in self.folder.rglob("*") if path.name in names and path.is_file())
        if len(matches) == 1:
            return matches[0]
        if not matches:
            raise FetchError(
                f"{name} not found under {self.folder}",
                case_id=case.case_id,
                hint="Download it from the CT Images in COVID-19 collection into that folder.",
            )
        listed = ", ".join(str(path) for path in matches)
        raise FetchError(
            f"{name} found {len(matches)} times under {self.folder}: {listed}",
            case_id=case.case_id,
            hint="Keep one copy, or set the case's image locator to the intended file.",
        )

    def url_for(self, name: str) -> str:
        """Return the download URL of a TCIA file name."""
        base = self.base_url or ""
        host = urlsplit(base).hostname or ""
        if not base or host in LANDING_HOSTS:
            raise FetchError(
                f"COVID-19 source {self.record.id!r} has no download URL "
                f"({base or 'no locator'} is not a folder of files)",
                hint="Download the NIfTI files from the collection's TCIA page into a folder and set the "
                "source's folder option (or locator) to it, or set the option base_url to a server that "
                "serves the files by name.",
            )
        return base.rstrip("/") + "/" + quote(name)

    def _cache_key(self, url: str) -> str:
        return hashlib.sha256(url.encode("utf-8")).hexdigest()

    def _download(self, case: CaseRecord, name: str, context: BuildContext) -> Path:
        url = self.url_for(name)
        dest = self.cache.path_for("url", self._cache_key(url), ".nii.gz")
        download_file(http_client(context), url, dest, progress=self.progress, description=name)
        try:
            check_nifti_file(dest, case_id=case.case_id, file_role="image", html_hint=HTML_HINT)
        except FetchError:
            dest.unlink(missing_ok=True)
            raise
        return dest

    def plan(self, case: CaseRecord, context: BuildContext) -> SourcePlan:
        """Return the case's download size (one HEAD request when not cached) and disk estimate."""
        name = self.file_name(case)
        if self.folder is not None:
            path = self._find_local(case, name)
            return SourcePlan(f"COVID-19 image {path}", 0, path.stat().st_size)
        url = self.url_for(name)
        cached = self.cache.get("url", self._cache_key(url), ".nii.gz")
        if cached is not None:
            return SourcePlan(f"COVID-19 image {name} (cached)", 0, cached.stat().st_size)
        response = http_client(context).request("HEAD", url, allow_redirects=True)
        with response:
            length = response.headers.get("Content-Length", "")
        if response.status_code != 200 or not length.isdigit():
            raise FetchError(
                f"HEAD {redact_url(url)} returned HTTP {response.status_code} without a usable Content-Length",
                case_id=case.case_id,
                hint="Check the source's base URL.",
            )
        size = int(length)
        return SourcePlan(f"COVID-19 image {redact_url(url)}", size, 2 * size)
