"""Verify stage: check a built dataset folder file by file and case by case.

`verify_dataset` checks that every expected file exists, SHA256SUMS
matches, pinned and recorded content hashes match, each mask fits its
image's grid with labels in 0..25, no output carries an identifier, and
each source used has its licence file. It returns a `VerifyReport` and
raises only when the folder itself cannot be read.
"""
from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np

from ctspine_builder.deid import READ_ERRORS, prepare_deny_values, scan_tree
from ctspine_builder.errors import PairingError, VerificationError
from ctspine_builder.fileio import PARTIAL_SUFFIX, sha256_content, sha256_file, write_bytes_atomic
from ctspine_builder.manifest.model import Manifest
from ctspine_builder.pairing import DEFAULT_TOLERANCE_MM, check_labels, geometry_summary, voxel_mapping

logger = logging.getLogger(__name__)

# Per-case checks, in the order the table shows them.
CHECKS = ("files", "sums", "hashes", "geometry", "labels", "phi", "licence")
# The key under which checks of files that belong to no case are reported.
DATASET = "dataset"

SUMS_FILE = "SHA256SUMS"
BUILD_FILE = "build.json"
CARD_FILE = "README.md"
LICENSE_DIR = "LICENSES"
_CASE_FILE = re.compile(r"^data/(?P<split>[^/]+)/(?P<kind>images|masks)/(?P<case>.+)\.nii\.gz$")
_SIDECAR_FILE = re.compile(r"^sidecars/(?P<case>.+)\.json$")
_SUMS_LINE = re.compile(r"^(?P<hash>[0-9a-f]{64}) [ *](?P<path>.+)$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


@dataclass
class CheckResult:
    """Outcome of one check: passed or not, and one message per problem found."""

    messages: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when the check found no problem."""
        return not self.messages


@dataclass
class CaseReport:
    """Results of every check for one case (or for the dataset-level files)."""

    case_id: str
    split: str
    checks: dict[str, CheckResult] = field(default_factory=lambda: {name: CheckResult() for name in CHECKS})

    @property
    def ok(self) -> bool:
        """True when every check passed."""
        return all(check.ok for check in self.checks.values())

    def fail(self, check: str, message: str) -> None:
        """Record a problem under ``check``."""
        self.checks[check].messages.append(message)


@dataclass
class VerifyReport:
    """Results of `verify_dataset`: one CaseReport per case plus one for the dataset-level files."""

    root: Path
    cases: list[CaseReport]
    dataset: CaseReport
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when every case and the dataset-level files passed every check."""
        return self.dataset.ok and all(case.ok for case in self.cases)

    @property
    def failed_cases(self) -> list[str]:
        """Ids of the cases with at least one failed check."""
        return [case.case_id for case in self.cases if not case.ok]

    def to_dict(self) -> dict:
        """Return the report as JSON-ready data."""

        def checks(report: CaseReport) -> dict:
            return {name: {"ok": result.ok, "messages": result.messages} for name, result in report.checks.items()}

        return {
            "root": str(self.root),
            "ok": self.ok,
            "summary": {"cases": len(self.cases), "failed_cases": len(self.failed_cases), "dataset_ok": self.dataset.ok},
            "notes": self.notes,
            "dataset": checks(self.dataset),
            "cases": [{"case_id": c.case_id, "split": c.split, "ok": c.ok, "checks": checks(c)} for c in self.cases],
        }

    def write_json(self, path: str | Path) -> None:
        """Write the report as JSON, atomically."""
        text = json.dumps(self.to_dict(), indent=2, sort_keys=False) + "\n"
        write_bytes_atomic(path, text.encode("utf-8"))


@dataclass
class ExpectedCase:
    """Expected state of one case, merged from the manifest and build.json."""

    case_id: str
    split: str
    has_mask: bool | None
    pinned_image: str | None = None
    pinned_mask: str | None = None
    recorded_image: str | None = None
    recorded_mask: str | None = None
    sources: tuple[str, ...] = ()
    sidecar: str | None = None

    @property
    def image_file(self) -> str:
        return f"data/{self.split}/images/{self.case_id}.nii.gz"

    @property
    def mask_file(self) -> str:
        return f"data/{self.split}/masks/{self.case_id}.nii.gz"


def verify_dataset(
    root: str | Path,
    manifest: Manifest | str | Path | None = None,
    *,
    deny_values: Iterable[str] = (),
    tolerance_mm: float = DEFAULT_TOLERANCE_MM,
) -> VerifyReport:
    """Check a dataset folder and return a report with per-case results.

    Expected cases come from ``manifest`` when given (a Manifest or a path),
    else from build.json and data/*/metadata.jsonl. ``deny_values`` are
    identifying values to search for in every output, besides the date, time
    and UID patterns. Raises VerificationError when ``root`` is not a folder.
    """
    root = Path(root)
    if not root.is_dir():
        raise VerificationError("dataset folder not found", path=root, hint="Pass the folder that `ctspine build` wrote")
    if manifest is not None and not isinstance(manifest, Manifest):
        from ctspine_builder.manifest.loader import load_manifest

        manifest = load_manifest(manifest)

    dataset = CaseReport(DATASET, "")
    build = _read_build(root, dataset)
    metadata = _read_metadata(root, dataset)
    expected = _expected_cases(manifest, build, metadata, dataset)
    reports = {case.case_id: CaseReport(case.case_id, case.split) for case in expected}
    content_hashes = _ContentHashes(root)
    report = VerifyReport(root, list(reports.values()), dataset)
    # The identifier scan runs first: with deny values it decompresses every
    # file anyway and hands its content hashes on to the hash checks.
    _check_phi(root, [case.case_id for case in expected], deny_values, reports, dataset, report.notes,
               content_hashes.known)

    for name in (BUILD_FILE, CARD_FILE, SUMS_FILE):
        if not (root / name).is_file():
            dataset.fail("files", f"{name} is missing")
    _check_sums(root, expected, reports, dataset, content_hashes)
    _check_unexpected_case_files(root, reports, dataset)
    for case in expected:
        _check_case(root, case, reports[case.case_id], metadata, content_hashes, tolerance_mm)
        _check_licences(root, case, reports[case.case_id], manifest)

    logger.info("verified %s: %d cases, %d failed", root, len(expected), len(report.failed_cases))
    return report


def deny_values_from_dicom(folder: str | Path) -> set[str]:
    """Collect the identifying values of every DICOM file under ``folder``, for use as ``deny_values``.

    Non-DICOM files are skipped. Raises VerificationError when the folder does not exist.
    """
    from ctspine_builder.dicom.discover import read_header
    from ctspine_builder.dicom.sidecar import collect_deny_values

    folder = Path(folder)
    if not folder.is_dir():
        raise VerificationError("DICOM folder not found", path=folder, hint="Pass the folder of the source series")
    headers = (read_header(path) for path in sorted(folder.rglob("*")) if path.is_file())
    values = collect_deny_values(header for header in headers if header is not None)
    logger.info("read %d identifying values from the DICOM files under %s", len(values), folder)
    return values


def _read_build(root: Path, dataset: CaseReport) -> dict[str, dict]:
    """Return build.json's case entries by case id; problems go to the dataset report."""
    path = root / BUILD_FILE
    if not path.is_file():
        return {}
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
        cases = document["cases"]
        return {entry["case_id"]: entry for entry in cases}
    except (ValueError, KeyError, TypeError) as error:
        dataset.fail("files", f"{BUILD_FILE} is not valid build information ({type(error).__name__}: {error})")
        return {}


def _read_metadata(root: Path, dataset: CaseReport) -> dict[str, dict]:
    """Return the metadata.jsonl rows of every split by case id, each with the split folder it was found in."""
    rows: dict[str, dict] = {}
    for path in sorted((root / "data").glob("*/metadata.jsonl")):
        relative = path.relative_to(root).as_posix()
        text = _read_text(path, relative, dataset, "files")
        for number, line in enumerate((text or "").splitlines(), start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                case_id = row["case_id"]
            except (ValueError, KeyError, TypeError) as error:
                dataset.fail("files", f"{relative} line {number} is not a valid metadata row ({type(error).__name__})")
                continue
            if case_id in rows:
                dataset.fail("files", f"{relative} line {number}: case {case_id} is listed more than once")
            rows[case_id] = {**row, "_folder": path.parent.name, "_file": relative}
    return rows


def _read_text(path: Path, relative: str, report: CaseReport, check: str) -> str | None:
    """Return a UTF-8 text file's content, or record a failure under ``check`` and return None."""
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        report.fail(check, f"{relative} cannot be read as UTF-8 text ({type(error).__name__})")
        return None


def _expected_cases(manifest: Manifest | None, build: dict, metadata: dict, dataset: CaseReport) -> list[ExpectedCase]:
    """Merge the manifest, build.json and metadata into one ExpectedCase per case."""
    if manifest is not None:
        cases = []
        for record in manifest.cases:
            entry = build.get(record.case_id, {})
            sources = (record.image.source,) + ((record.mask.source,) if record.mask else ())
            cases.append(_expected(record.case_id, record.split, record.mask is not None, entry, sources,
                                   record.image_sha256, record.mask_sha256))
        known = {record.case_id for record in manifest.cases}
        for case_id in sorted((set(build) | set(metadata)) - known):
            dataset.fail("files", f"case {case_id} is in the dataset but not in the manifest")
        return cases

    cases = []
    for case_id in sorted(set(build) | set(metadata)):
        entry = build.get(case_id, {})
        row = metadata.get(case_id, {})
        split = entry.get("split") or row.get("split") or row.get("_folder", "")
        if "has_mask" in entry:
            has_mask = entry["has_mask"]
        elif row:
            has_mask = row.get("mask_file_name") is not None
        else:
            has_mask = None
        sources = tuple(source for source in (entry.get("image_source"), entry.get("mask_source")) if source)
        cases.append(_expected(case_id, split, has_mask, entry, sources, None, None))
    return cases


def _expected(case_id, split, has_mask, entry: dict, sources, pinned_image, pinned_mask) -> ExpectedCase:
    return ExpectedCase(
        case_id=case_id,
        split=split,
        has_mask=has_mask,
        pinned_image=pinned_image,
        pinned_mask=pinned_mask,
        recorded_image=entry.get("image_content_sha256"),
        recorded_mask=entry.get("mask_content_sha256"),
        sources=tuple(dict.fromkeys(sources)),
        sidecar=entry.get("sidecar_file") or None,
    )


class _ContentHashes:
    """Cache of the SHA-256 of decompressed file content, so each file is hashed once per run."""

    def __init__(self, root: Path) -> None:
        self.root = root
        # Hashes by dataset-relative path; the identifier scan fills it in first.
        self.known: dict[str, str | None] = {}

    def get(self, relative: str) -> str | None:
        """Return the content hash, or None when the file cannot be read or decompressed."""
        if relative not in self.known:
            try:
                self.known[relative] = sha256_content(self.root / relative)
            except READ_ERRORS as error:
                logger.warning("%s cannot be decompressed: %s", relative, error)
                self.known[relative] = None
        return self.known[relative]


def case_of(relative: str) -> str | None:
    """Return the case id that a dataset-relative path belongs to, or None for dataset-level files."""
    match = _CASE_FILE.match(relative) or _SIDECAR_FILE.match(relative)
    return match.group("case") if match else None


def _owner(relative: str, reports: dict[str, CaseReport], dataset: CaseReport) -> CaseReport:
    case_id = case_of(relative)
    return reports.get(case_id, dataset) if case_id else dataset


def _listed_files(root: Path) -> list[str]:
    """Return every file the build publishes: all but SHA256SUMS, partial files and hidden entries.

    Hidden entries (the build's .staging folder) are left out, as the SHA256SUMS writer leaves them out.
    """
    files = []
    for path in sorted(root.rglob("*")):
        relative = path.relative_to(root).as_posix()
        if not path.is_file() or relative == SUMS_FILE or relative.endswith(PARTIAL_SUFFIX):
            continue
        if any(part.startswith(".") for part in relative.split("/")):
            continue
        files.append(relative)
    return files


def _check_sums(root: Path, expected: list[ExpectedCase], reports: dict, dataset: CaseReport, hashes: _ContentHashes) -> None:
    """Compare SHA256SUMS with the files: missing, extra and changed files."""
    path = root / SUMS_FILE
    if not path.is_file():
        return
    listed: dict[str, str] = {}
    text = _read_text(path, SUMS_FILE, dataset, "sums")
    for number, line in enumerate((text or "").splitlines(), start=1):
        match = _SUMS_LINE.match(line)
        if not match:
            dataset.fail("sums", f"{SUMS_FILE} line {number} is not '<sha256>  <path>'")
            continue
        relative = match.group("path")
        if relative.startswith("/") or ".." in relative.split("/"):
            dataset.fail("sums", f"{SUMS_FILE} line {number} names a path outside the dataset folder")
            continue
        listed[relative] = match.group("hash")

    content_expected = {}
    for case in expected:
        content_expected[case.image_file] = case.pinned_image or case.recorded_image
        content_expected[case.mask_file] = case.pinned_mask or case.recorded_mask

    for relative, digest in listed.items():
        report = _owner(relative, reports, dataset)
        if not (root / relative).is_file():
            report.fail("sums", f"{relative} is listed in {SUMS_FILE} but missing")
        elif sha256_file(root / relative) != digest:
            report.fail("sums", _changed_message(relative, content_expected.get(relative), hashes))
    for relative in _listed_files(root):
        if relative not in listed:
            _owner(relative, reports, dataset).fail("sums", f"{relative} is not listed in {SUMS_FILE} (extra file)")


def _changed_message(relative: str, expected_content: str | None, hashes: _ContentHashes) -> str:
    """Describe a file whose bytes differ from SHA256SUMS, saying when only the compression changed."""
    message = f"{relative} does not match its SHA-256 in {SUMS_FILE}"
    if expected_content and hashes.get(relative) == expected_content:
        message += (
            "; its decompressed content is intact and matches the recorded content hash, so only the gzip "
            "compression differs (a re-compressed copy)"
        )
    return message


def _check_unexpected_case_files(root: Path, reports: dict, dataset: CaseReport) -> None:
    """Report case files of case ids that are not expected at all."""
    for relative in _listed_files(root):
        case_id = case_of(relative)
        if case_id and case_id not in reports:
            dataset.fail("files", f"{relative} belongs to case {case_id}, which is not an expected case")


def _check_case(root: Path, case: ExpectedCase, report: CaseReport, metadata: dict, hashes: _ContentHashes,
                tolerance_mm: float) -> None:
    """Run the files, hashes, geometry and labels checks of one case."""
    image_ok = (root / case.image_file).is_file()
    if not image_ok:
        report.fail("files", f"{case.image_file} is missing")
    mask_ok = case.has_mask is not False and (root / case.mask_file).is_file()
    if case.has_mask and not mask_ok:
        report.fail("files", f"{case.mask_file} is missing")
    if case.has_mask is False and (root / case.mask_file).is_file():
        report.fail("files", f"{case.mask_file} exists but the case has no mask")
    if case.sidecar and not (root / case.sidecar).is_file():
        report.fail("files", f"{case.sidecar} is missing")
    _check_metadata_row(case, report, metadata.get(case.case_id))

    if image_ok:
        _check_hash(report, case.image_file, hashes, case.pinned_image, case.recorded_image)
    if mask_ok:
        _check_hash(report, case.mask_file, hashes, case.pinned_mask, case.recorded_mask)
    if image_ok and mask_ok:
        _check_geometry_and_labels(root, case, report, tolerance_mm)


def _check_metadata_row(case: ExpectedCase, report: CaseReport, row: dict | None) -> None:
    """Check the case's metadata.jsonl row: present, in its split's file, naming the right files."""
    if row is None:
        report.fail("files", f"case is missing from data/{case.split}/metadata.jsonl")
        return
    if row["_folder"] != case.split or row.get("split") != case.split:
        report.fail("files", f"{row['_file']} lists the case with split {row.get('split')!r}, expected {case.split!r}")
    if row.get("image_file_name") != f"images/{case.case_id}.nii.gz":
        report.fail("files", f"{row['_file']}: image_file_name is {row.get('image_file_name')!r}, "
                             f"expected 'images/{case.case_id}.nii.gz'")
    mask_name = f"masks/{case.case_id}.nii.gz" if case.has_mask else None
    if case.has_mask is not None and row.get("mask_file_name") != mask_name:
        report.fail("files", f"{row['_file']}: mask_file_name is {row.get('mask_file_name')!r}, expected {mask_name!r}")


def _check_hash(report: CaseReport, relative: str, hashes: _ContentHashes, pinned: str | None, recorded: str | None) -> None:
    """Compare a file's decompressed content hash with the manifest's pin and build.json's record."""
    actual = hashes.get(relative)
    if actual is None:
        report.fail("hashes", f"{relative} cannot be read or decompressed; the file is damaged or truncated")
        return
    for origin, value in (("pinned in the manifest", pinned), (f"recorded in {BUILD_FILE}", recorded)):
        if value is None:
            continue
        if not _SHA256.match(value):
            report.fail("hashes", f"{relative}: the content hash {origin} is not a SHA-256 hex digest")
        elif value != actual:
            report.fail("hashes", f"{relative}: decompressed content SHA-256 {actual} differs from {value} {origin}")


def _check_geometry_and_labels(root: Path, case: ExpectedCase, report: CaseReport, tolerance_mm: float) -> None:
    """Check that the mask is uint8 on the image's exact grid, with labels in 0..25."""
    try:
        image = nib.load(str(root / case.image_file))
        mask = nib.load(str(root / case.mask_file))
    except (nib.filebasedimages.ImageFileError, *READ_ERRORS) as error:
        report.fail("geometry", f"image or mask cannot be read as NIfTI ({type(error).__name__}: {error})")
        return

    for relative, loaded in ((case.image_file, image), (case.mask_file, mask)):
        qform_code, sform_code = int(loaded.header["qform_code"]), int(loaded.header["sform_code"])
        if (qform_code, sform_code) != (1, 1):
            report.fail("geometry", f"{relative}: qform_code {qform_code} and sform_code {sform_code}, expected 1 and 1")
    if len(mask.shape) != 3 or len(image.shape) != 3:
        report.fail("geometry", f"image shape {image.shape} and mask shape {mask.shape} must both be 3-D")
        return
    try:
        axes, flips = voxel_mapping(image, mask, tolerance_mm=tolerance_mm, case_id=case.case_id, path=case.mask_file)
        if axes != (0, 1, 2) or any(flips):
            report.fail("geometry", f"{case.mask_file} is on a permuted or flipped grid; image: "
                                    f"{geometry_summary(image)}; mask: {geometry_summary(mask)}")
    except PairingError as error:
        report.fail("geometry", error.message)

    if mask.get_data_dtype() != np.uint8:
        report.fail("labels", f"{case.mask_file} stores {mask.get_data_dtype()}, expected uint8")
    try:
        data = np.asanyarray(mask.dataobj)
        check_labels(data, case_id=case.case_id, path=case.mask_file)
    except PairingError as error:
        report.fail("labels", error.message)
    except READ_ERRORS as error:
        report.fail("labels", f"{case.mask_file}: voxel data cannot be read ({type(error).__name__}: {error})")


def _check_licences(root: Path, case: ExpectedCase, report: CaseReport, manifest: Manifest | None) -> None:
    """Check that LICENSES/<source>.md exists for each source of the case and names its licence."""
    if not case.sources:
        report.fail("licence", f"no source is recorded for the case in {BUILD_FILE} or the manifest")
    for source_id in case.sources:
        path = root / LICENSE_DIR / f"{source_id}.md"
        if not path.is_file():
            report.fail("licence", f"{LICENSE_DIR}/{source_id}.md is missing")
            continue
        record = manifest.sources.get(source_id) if manifest else None
        text = _read_text(path, f"{LICENSE_DIR}/{source_id}.md", report, "licence")
        if text is not None and record is not None and record.license not in text:
            report.fail("licence", f"{LICENSE_DIR}/{source_id}.md does not name the licence {record.license}")


def _check_phi(root: Path, case_ids: list[str], deny_values: Iterable[str], reports: dict, dataset: CaseReport,
               notes: list[str], content_hashes: dict[str, str | None]) -> None:
    """Scan every output for identifiers and file each finding under its case or the dataset."""
    deny = prepare_deny_values(deny_values, case_ids)
    if deny.skipped_short:
        notes.append(f"{deny.skipped_short} deny values shorter than 4 characters were not searched")
    for finding in scan_tree(root, deny, case_ids, content_hashes=content_hashes):
        _owner(finding.path, reports, dataset).fail("phi", finding.format())


__all__ = ["CHECKS", "CheckResult", "CaseReport", "VerifyReport", "verify_dataset", "case_of"]
