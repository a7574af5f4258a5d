"""Build stage: turn a manifest into a dataset folder, case by case, then package it.

`build` selects the cases, skips those whose inputs are unchanged since the
last build into the same folder, builds the others (in worker processes
with ``jobs`` > 1), reports each failed case without stopping the others,
and finally writes the dataset-level files. `plan` returns what
`--dry-run` prints.
"""
from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import json
import logging
import shutil
from collections.abc import Iterable
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path

from ctspine_builder import __version__
from ctspine_builder.build_case import STATUS_FAILED, STATUS_UNCHANGED, CaseOutcome, build_case
from ctspine_builder.errors import CtspineError, ManifestError, PackagingError
from ctspine_builder.fileio import PARTIAL_SUFFIX, sha256_file
from ctspine_builder.manifest.model import SPLITS, CaseRecord, Manifest
from ctspine_builder.package import package_dataset
from ctspine_builder.package.buildinfo import CaseEntry, read_entries
from ctspine_builder.package.layout import BUILD_FILE, STAGING_DIR, SUMS_FILE
from ctspine_builder.sources.base import BuildContext, SourcePlan, open_source

logger = logging.getLogger(__name__)

# Options that change what a case's files contain, with their defaults; they
# are part of a case's input fingerprint. The others (cache_dir, nbia_url, concurrency,
# keep_archive) change only how the inputs arrive.
CONTENT_OPTIONS = {"position": "authors"}

# Held with flock for the whole build, so two builds never write one folder.
LOCK_FILE = ".ctspine-build.lock"


@dataclass
class BuildReport:
    """The outcome of every selected case and where the dataset was written."""

    out_dir: Path
    outcomes: list[CaseOutcome] = field(default_factory=list)
    # The `verify_dataset` report of the finished folder, when the build ran it.
    verification: object | None = None

    @property
    def failed(self) -> list[CaseOutcome]:
        """The cases that failed, in manifest order."""
        return [outcome for outcome in self.outcomes if outcome.status == STATUS_FAILED]

    @property
    def ok(self) -> bool:
        """True when no selected case failed and the verification, if run, passed."""
        return not self.failed and (self.verification is None or self.verification.ok)


@dataclass
class CasePlan:
    """Downloads and disk space that building one case needs, for `--dry-run`."""

    case_id: str
    sources: list[SourcePlan]
    error: str = ""

    @property
    def download_bytes(self) -> int:
        """Bytes this case would download."""
        return sum(plan.download_bytes for plan in self.sources)

    @property
    def disk_bytes(self) -> int:
        """Estimated disk space this case needs."""
        return sum(plan.disk_bytes for plan in self.sources)


def select_cases(
    manifest: Manifest,
    case_ids: Iterable[str] | None = None,
    subsets: Iterable[str] | None = None,
    splits: Iterable[str] | None = None,
) -> list[CaseRecord]:
    """Return the manifest's cases that match every given filter, in manifest order."""
    requested_ids = set(case_ids or ())
    known = {case.case_id for case in manifest.cases}
    unknown = sorted(requested_ids - known)
    if unknown:
        raise ManifestError(
            f"case id(s) not in the manifest: {', '.join(unknown)}",
            hint="Check the spelling; `ctspine manifest stats` lists the manifest's subsets and splits.",
        )
    requested_splits = set(splits or ())
    bad_splits = sorted(requested_splits - set(SPLITS))
    if bad_splits:
        raise ManifestError(f"unknown split(s): {', '.join(bad_splits)}", hint=f"Use one of: {', '.join(SPLITS)}.")
    requested_subsets = set(subsets or ())
    return [
        case
        for case in manifest.cases
        if (not requested_ids or case.case_id in requested_ids)
        and (not requested_subsets or case.subset in requested_subsets)
        and (not requested_splits or case.split in requested_splits)
    ]


def case_fingerprint(manifest: Manifest, case: CaseRecord, context: BuildContext) -> str:
    """Return a SHA-256 over everything that decides a case's output.

    That is the tool version, the case record, its sources' records, the
    content options, and each source's digest of the input files when the
    source offers one. Paths and times are left out, so the value is the
    same on every machine.
    """
    parts: dict = {
        "tool_version": __version__,
        "case": dataclasses.asdict(case),
        "options": {name: context.options.get(name) or default for name, default in CONTENT_OPTIONS.items()},
    }
    for role, ref in (("image", case.image), ("mask", case.mask)):
        if ref is None:
            continue
        record = manifest.sources[ref.source]
        parts[f"{role}_source"] = dataclasses.asdict(record)
        source = open_source(record, context)
        fingerprint = getattr(source, "input_fingerprint", None)
        if fingerprint is not None:
            parts[f"{role}_inputs"] = fingerprint(case, context, role)
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode("utf-8")).hexdigest()


def _read_sums(out_dir: Path) -> dict[str, str]:
    path = out_dir / SUMS_FILE
    if not path.is_file():
        return {}
    sums = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        digest, _, relative = line.partition("  ")
        sums[relative] = digest
    return sums


def _is_intact(out_dir: Path, entry: CaseEntry, sums: dict[str, str]) -> bool:
    """Return True when the entry's files exist and match the last SHA256SUMS."""
    for relative in (entry.image_file, entry.mask_file, entry.sidecar_file):
        if relative is None:
            continue
        path = out_dir / relative
        if not relative or not path.is_file() or sums.get(relative) != sha256_file(path):
            return False
    return True


def _check_target(out_dir: Path) -> None:
    """Raise PackagingError when ``out_dir`` holds files but no earlier build.

    Writing a dataset into an unrelated folder would list its files in
    SHA256SUMS and publish them, so only an empty folder or an earlier
    build's folder is accepted.
    """
    if not out_dir.is_dir() or (out_dir / BUILD_FILE).is_file():
        return
    visible = [p.name for p in out_dir.iterdir() if not p.name.startswith(".")]
    if visible:
        raise PackagingError(
            f"output folder is not empty and holds no earlier build ({len(visible)} entries, e.g. {sorted(visible)[0]})",
            path=out_dir,
            hint="Choose an empty or new folder for --out, or the folder of an earlier build.",
        )


@contextlib.contextmanager
def _build_lock(out_dir: Path):
    """Hold an exclusive lock on ``out_dir`` for one build, and remove it afterwards."""
    path = out_dir / LOCK_FILE
    with open(path, "a+b") as handle:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise PackagingError(
                "another build is writing into this folder",
                path=out_dir,
                hint="Wait for it to finish, or build into another folder.",
            ) from None
        try:
            yield
        finally:
            path.unlink(missing_ok=True)
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def _clean_leftovers(out_dir: Path) -> None:
    """Remove the staging folder and partial files that a stopped build left behind."""
    shutil.rmtree(out_dir / STAGING_DIR, ignore_errors=True)
    for partial in out_dir.rglob(f"*{PARTIAL_SUFFIX}"):
        logger.info("removing partial file %s left by a stopped build", partial.relative_to(out_dir))
        partial.unlink()


def _fingerprints(
    manifest: Manifest, cases: list[CaseRecord], context: BuildContext
) -> tuple[dict[str, str], list[CaseOutcome]]:
    """Fingerprint each case; a case whose inputs cannot be read fails here."""
    fingerprints, failures = {}, []
    for case in cases:
        try:
            fingerprints[case.case_id] = case_fingerprint(manifest, case, context)
        except CtspineError as error:
            if error.case_id is None:
                error.case_id = case.case_id
            logger.error("%s", error.format())
            failures.append(CaseOutcome(case.case_id, STATUS_FAILED, error.format()))
        except OSError as error:
            # An unreadable input file (permissions, I/O error) fails this case only.
            reason = f"cannot read the case's input: {error}"
            logger.error("case %s: %s", case.case_id, reason)
            failures.append(CaseOutcome(case.case_id, STATUS_FAILED, reason))
    return fingerprints, failures


def _run_cases(
    manifest: Manifest, todo: list[CaseRecord], out_dir: Path, options: dict,
    fingerprints: dict[str, str], jobs: int, progress_bar,
) -> list[CaseOutcome]:
    outcomes = []
    if jobs <= 1:
        for case in todo:
            outcomes.append(build_case(manifest, case, out_dir, options, fingerprints[case.case_id]))
            progress_bar.update(1)
        return outcomes
    with ProcessPoolExecutor(max_workers=jobs) as pool:
        futures = [
            pool.submit(build_case, manifest, case, out_dir, options, fingerprints[case.case_id]) for case in todo
        ]
        for future in as_completed(futures):
            outcomes.append(future.result())
            progress_bar.update(1)
    return outcomes


def build(
    manifest: Manifest,
    out_dir: str | Path,
    *,
    case_ids: Iterable[str] | None = None,
    subsets: Iterable[str] | None = None,
    splits: Iterable[str] | None = None,
    options: dict | None = None,
    progress: bool = True,
    jobs: int = 1,
    verify: bool = True,
) -> BuildReport:
    """Build the selected cases of ``manifest`` into ``out_dir`` and package the dataset.

    Cases built by an earlier run into the same folder are kept when they are
    still in the manifest unchanged; among the selected cases, those whose
    input fingerprint and files are unchanged are not built again. Raises
    CtspineError only for problems that stop the whole build (bad filters,
    unreadable build.json); a case's failure is in the report. With
    ``verify`` the finished folder is checked as `ctspine verify` does,
    searching every file for the identifying values read in this run.
    """
    out_dir = Path(out_dir)
    options = dict(options or {})
    cases = select_cases(manifest, case_ids, subsets, splits)
    # Sources that fetch many cases at once (the MSD tar) fetch only these,
    # and download progress bars follow the build's.
    options.setdefault("selected_case_ids", [case.case_id for case in cases])
    options.setdefault("progress", progress)
    _check_target(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with _build_lock(out_dir):
        report = _build_locked(manifest, out_dir, cases, options, progress, jobs)
    if verify:
        from ctspine_builder.verify import verify_dataset

        deny_values = set().union(*(outcome.deny_values for outcome in report.outcomes))
        report.verification = verify_dataset(out_dir, deny_values=deny_values)
        if not report.verification.ok:
            failed = ", ".join(report.verification.failed_cases) or "dataset files"
            logger.error("verification of %s failed for: %s", out_dir, failed)
    return report


def _build_locked(
    manifest: Manifest, out_dir: Path, cases: list[CaseRecord], options: dict, progress: bool, jobs: int
) -> BuildReport:
    """Build and package ``cases`` while the caller holds the folder's build lock."""
    from tqdm import tqdm

    _clean_leftovers(out_dir)
    previous = read_entries(out_dir)
    sums = _read_sums(out_dir)
    context = BuildContext(
        manifest=manifest, work_dir=out_dir / STAGING_DIR, cache_dir=options.get("cache_dir"), options=options
    )
    logger.info("building %d case(s) of %s %s into %s", len(cases), manifest.dataset.name, manifest.dataset.version, out_dir)

    report = BuildReport(out_dir)
    fingerprints, failures = _fingerprints(manifest, cases, context)
    report.outcomes.extend(failures)
    todo = []
    for case in cases:
        if case.case_id not in fingerprints:
            continue
        old = previous.get(case.case_id)
        if old and old.inputs_sha256 == fingerprints[case.case_id] and _is_intact(out_dir, old, sums):
            report.outcomes.append(CaseOutcome(case.case_id, STATUS_UNCHANGED, "inputs unchanged", old))
        else:
            todo.append(case)

    with tqdm(total=len(cases), disable=not progress, unit="case", desc="cases", initial=len(cases) - len(todo)) as bar:
        report.outcomes.extend(_run_cases(manifest, todo, out_dir, options, fingerprints, jobs, bar))
    order = {case.case_id: index for index, case in enumerate(manifest.cases)}
    report.outcomes.sort(key=lambda outcome: order[outcome.case_id])

    entries = _dataset_entries(manifest, previous, report, {case.case_id for case in cases})
    package_dataset(out_dir, manifest, entries, lock_sha256=lock_sha256(manifest, options))
    shutil.rmtree(out_dir / STAGING_DIR, ignore_errors=True)
    return report


def lock_sha256(manifest: Manifest, options: dict) -> str | None:
    """Return the SHA-256 of the lock file in use: the ``lock`` option, else lock.json beside the manifest.

    The hash is recorded in build.json. It is not part of the case
    fingerprints: the tcia source's ``input_fingerprint`` carries each case's
    locked series MD5 instead, so a lock change rebuilds only the cases whose
    series changed.
    """
    from ctspine_builder.manifest.lock import default_lock_path

    option = options.get("lock")
    if isinstance(option, (str, Path)) and option:
        path = Path(option)
    else:
        path = default_lock_path(manifest.root)
    return sha256_file(path) if path.is_file() else None


def _dataset_entries(
    manifest: Manifest, previous: dict[str, CaseEntry], report: BuildReport, selected: set[str]
) -> list[CaseEntry]:
    """Return the entries the dataset holds after this build.

    That is every case built or unchanged now, plus cases of earlier runs
    that were not selected this time and are still in the manifest with the
    same subset and split. A selected case that failed is left out, so the
    dataset never holds a stale copy of it.
    """
    entries = {outcome.case_id: outcome.entry for outcome in report.outcomes if outcome.entry is not None}
    for case in manifest.cases:
        old = previous.get(case.case_id)
        if case.case_id in selected or old is None:
            continue
        if (old.subset, old.split) == (case.subset, case.split):
            entries[case.case_id] = old
    return list(entries.values())


def plan(
    manifest: Manifest,
    *,
    case_ids: Iterable[str] | None = None,
    subsets: Iterable[str] | None = None,
    splits: Iterable[str] | None = None,
    options: dict | None = None,
) -> list[CasePlan]:
    """Return what building the selected cases would fetch, without writing anything.

    Each source of a case is asked once through its optional `plan` method;
    a source without one is listed with unknown sizes (0).
    """
    options = dict(options or {})
    context = BuildContext(manifest=manifest, work_dir=Path("."), options=options)
    plans = []
    for case in select_cases(manifest, case_ids, subsets, splits):
        source_ids = dict.fromkeys(ref.source for ref in (case.image, case.mask) if ref is not None)
        case_plan = CasePlan(case.case_id, [])
        try:
            for source_id in source_ids:
                source = open_source(manifest.sources[source_id], context)
                planner = getattr(source, "plan", None)
                if planner is None:
                    case_plan.sources.append(SourcePlan(description=f"{source_id}: size unknown"))
                else:
                    case_plan.sources.append(planner(case, context))
        except CtspineError as error:
            case_plan.error = error.format()
        plans.append(case_plan)
    return plans
