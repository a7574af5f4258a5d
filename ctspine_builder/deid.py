"""De-identification check for the verify stage: scan every output file for identifiers.

Findings name the file, the kind of identifier and where it sits, never the
value itself, because the value is the identifier that must not spread.
"""
from __future__ import annotations

import functools
import hashlib
import io
import json
import logging
import re
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
from isal.igzip_lib import IsalError

from ctspine_builder.fileio import PARTIAL_SUFFIX, is_gzip
from ctspine_builder.nifti import DESCRIP

logger = logging.getLogger(__name__)

# Deny values shorter than this are not searched: a 1..3 character value
# ("M", "CT", "120") occurs by chance in almost any file.
MIN_DENY_LENGTH = 4

# Values that identify no one but that DICOM headers hold as placeholders
# (PatientName "PHANTOM", "ANONYMOUS") or whole descriptions that are words
# the tool writes itself (a series described "SUPINE" against the position
# recorded in build.json, split names in the card). Searching them would
# fail clean builds, so a deny value equal to one of them, ignoring case,
# is skipped. Longer values that merely contain such a word are searched.
PLACEHOLDER_VALUES = frozenset({
    "anon", "anonymous", "anonymized", "anonymised", "deidentified", "de-identified",
    "removed", "unknown", "none", "null", "test", "phantom", "demo",
    "prone", "supine", "trainset", "test_public", "test_private",
})

# Kinds of finding.
DENY_VALUE = "deny value"
DATE = "date pattern"
TIME = "time pattern"
UID = "UID"
HEADER_FIELD = "header field"
EXTENSION = "extension"
SIDECAR_KEY = "sidecar key"
UNREADABLE = "unreadable file"

# Keys that a sidecar may contain: acquisition fields that identify neither the
# patient nor the site, plus the converter's name and version. The sidecar
# writer in ctspine_builder.dicom.sidecar imports this set, so writing and
# checking agree.
SIDECAR_ALLOWED_KEYS = frozenset(
    {
        "CaseId",
        "ConversionSoftware",
        "ConversionSoftwareVersion",
        "Modality",
        "Manufacturer",
        "ManufacturerModelName",
        "KVP",
        "XRayTubeCurrent",
        "ExposureTime",
        "Exposure",
        "ConvolutionKernel",
        "SliceThickness",
        "SpacingBetweenSlices",
        "PixelSpacing",
        "PatientPosition",
        "GantryDetectorTilt",
        "ReconstructionDiameter",
        "RescaleSlope",
        "RescaleIntercept",
        "ImageType",
        "BodyPartExamined",
        "Geometry",
    }
)

# Text files: every pattern applies. Other files are binary: only deny values apply.
TEXT_SUFFIXES = frozenset({".json", ".jsonl", ".md", ".txt", ".csv", ".tsv", ".yaml", ".yml", ".log", ".cff"})
TEXT_NAMES = frozenset({"SHA256SUMS", "LICENSE", "NOTICE", "README", "CITATION"})
# Files of other names up to this size are treated as text when they decode as UTF-8.
MAX_SNIFF_BYTES = 1 << 20

# NIfTI-1 string fields, which must be empty or (descrip only) the tool's fixed text.
NIFTI_TEXT_FIELDS = ("descrip", "aux_file", "intent_name", "db_name")

# Digits are bounded by anything that is not a letter or digit, so the digits
# inside a hex digest or a word never match. An underscore or a dash is a boundary.
_LEFT = r"(?<![0-9A-Za-z])"
_RIGHT = r"(?![0-9A-Za-z])"
_YEAR = r"(?:19|20)\d\d"
_MONTH = r"(?:0[1-9]|1[0-2])"
_DAY = r"(?:0[1-9]|[12]\d|3[01])"
PATTERNS: tuple[tuple[str, str, re.Pattern[str]], ...] = (
    (DATE, "YYYYMMDD", re.compile(f"{_LEFT}{_YEAR}{_MONTH}{_DAY}{_RIGHT}")),
    (DATE, "YYYY-MM-DD", re.compile(f"{_LEFT}{_YEAR}[-/.]{_MONTH}[-/.]{_DAY}{_RIGHT}")),
    (DATE, "DD-MM-YYYY", re.compile(f"{_LEFT}{_DAY}[-/.]{_MONTH}[-/.]{_YEAR}{_RIGHT}")),
    (DATE, "MM-DD-YYYY", re.compile(f"{_LEFT}{_MONTH}[-/.]{_DAY}[-/.]{_YEAR}{_RIGHT}")),
    # Dots are excluded around times too, so that a UID component never reads as a time.
    (TIME, "HHMMSS.ffffff", re.compile(r"(?<![0-9A-Za-z.])(?:[01]\d|2[0-3])[0-5]\d[0-5]\d\.\d{1,6}(?![0-9A-Za-z]|\.\d)")),
    # A DICOM UID is digits and dots; four or more components rule out version
    # numbers such as 2.3.1 and decimals.
    (UID, "digits and dots, 4 or more components", re.compile(r"(?<![0-9A-Za-z.])\d+(?:\.\d+){3,}(?![0-9A-Za-z]|\.\d)")),
)

SEARCH_CHUNK_BYTES = 8 << 20

# Errors that reading a damaged or truncated (gzip) file raises: isal and
# zlib report corrupt deflate data with their own exception types.
READ_ERRORS = (OSError, EOFError, ValueError, zlib.error, IsalError)


@dataclass(frozen=True)
class Finding:
    """One identifier found in an output: file, kind, location and a description that omits the value."""

    path: str
    kind: str
    location: str
    detail: str

    def format(self) -> str:
        """Return the finding as one line: file, kind, location, detail."""
        return f"{self.path}: {self.kind} at {self.location} ({self.detail})"


@dataclass(frozen=True)
class DenyList:
    """Deny values prepared for search: lower-cased UTF-8 bytes, each with its 1-based number in the input."""

    needles: tuple[tuple[int, bytes], ...]
    skipped_short: int
    skipped_case_id: int

    @property
    def max_length(self) -> int:
        """Length in bytes of the longest needle, or 0."""
        return max((len(needle) for _, needle in self.needles), default=0)

    @functools.cached_property
    def prefix_index(self) -> tuple[np.ndarray, dict[int, list[tuple[int, bytes]]]]:
        """Return a 2**24 boolean table of the needles' first 3 bytes, and the needles by that prefix."""
        table = np.zeros(1 << 24, dtype=bool)
        by_prefix: dict[int, list[tuple[int, bytes]]] = {}
        for number, needle in self.needles:
            key = needle[0] | needle[1] << 8 | needle[2] << 16
            table[key] = True
            by_prefix.setdefault(key, []).append((number, needle))
        return table, by_prefix


def prepare_deny_values(deny_values: Iterable[str], allowed_ids: Iterable[str] = ()) -> DenyList:
    """Prepare deny values for search, skipping short ones and those within a case id.

    A person name in DICOM form (``FAMILY^GIVEN``) also adds each component
    of at least MIN_DENY_LENGTH characters, since an output might join them
    differently. A value contained in an allowed case id is skipped, because
    the case id itself is allowed in every output.
    """
    allowed = [case_id.lower() for case_id in allowed_ids]
    needles: list[tuple[int, bytes]] = []
    seen: set[bytes] = set()
    skipped_short = skipped_case_id = 0
    for number, value in enumerate(deny_values, start=1):
        full = str(value).strip()
        if len(full) < MIN_DENY_LENGTH:
            skipped_short += 1
            continue
        candidates = [full]
        if "^" in full:
            candidates += [part.strip() for part in full.split("^") if len(part.strip()) >= MIN_DENY_LENGTH]
        for candidate in dict.fromkeys(candidates):
            text = candidate.lower()
            if text in PLACEHOLDER_VALUES:
                continue
            if any(text in case_id for case_id in allowed):
                skipped_case_id += 1
                continue
            needle = text.encode("utf-8")
            if needle not in seen:
                seen.add(needle)
                needles.append((number, needle))
    if skipped_short:
        logger.warning("%d deny values shorter than %d characters are not searched", skipped_short, MIN_DENY_LENGTH)
    if skipped_case_id:
        logger.info("%d deny values are part of a case id and are not searched", skipped_case_id)
    return DenyList(tuple(needles), skipped_short, skipped_case_id)


def scan_tree(
    root: str | Path,
    deny_values: Iterable[str] | DenyList,
    allowed_ids: Iterable[str],
    *,
    content_hashes: dict[str, str] | None = None,
) -> list[Finding]:
    """Scan every file under ``root``, and every file and folder name, for identifiers.

    Files still being written (ending in the partial suffix) are skipped.
    Paths in findings and keys of ``content_hashes`` are relative to ``root``.
    """
    root = Path(root)
    allowed = list(allowed_ids)
    deny = deny_values if isinstance(deny_values, DenyList) else prepare_deny_values(deny_values, allowed)
    findings: list[Finding] = []
    for path in sorted(root.rglob("*")):
        if path.name.endswith(PARTIAL_SUFFIX):
            continue
        relative = path.relative_to(root).as_posix()
        findings += _scan_name(relative, path.name, deny, allowed)
        if path.is_file():
            findings += scan_file(path, deny, allowed, display=relative, content_hashes=content_hashes)
    return findings


def scan_file(
    path: str | Path,
    deny_values: Iterable[str] | DenyList,
    allowed_ids: Iterable[str],
    *,
    display: str | None = None,
    content_hashes: dict[str, str] | None = None,
) -> list[Finding]:
    """Scan one file's bytes, decompressed if gzip, for identifiers.

    Deny values are searched in every byte, case-insensitively. Date, time and
    UID patterns apply to text files and to the text parts of a NIfTI file
    (its string header fields and extensions). NIfTI header fields and
    extensions, and sidecar keys, are checked against the identifier policy.

    When deny values make the scan read the whole file, the SHA-256 of the
    decompressed content is stored in ``content_hashes`` under the display
    name, so a caller that needs it does not decompress the file again.
    """
    path = Path(path)
    allowed = list(allowed_ids)
    deny = deny_values if isinstance(deny_values, DenyList) else prepare_deny_values(deny_values, allowed)
    name = display or str(path)
    try:
        digest = hashlib.sha256() if content_hashes is not None and deny.needles else None
        findings = _search_deny_values(path, deny, name, digest)
        if digest is not None:
            content_hashes[name] = digest.hexdigest()
        if _is_nifti(path):
            findings += _check_nifti_header(path, name, allowed)
        elif _is_text(path):
            text = _read_text(path)
            findings += scan_text(text, allowed, name)
            if _is_sidecar(path):
                findings += _check_sidecar_keys(text, name)
    except READ_ERRORS as error:
        findings = [Finding(name, UNREADABLE, "whole file", f"could not be read for the scan: {type(error).__name__}")]
    return findings


def scan_text(text: str, allowed_ids: Iterable[str], name: str, where: str = "") -> list[Finding]:
    """Search text for date, time and UID patterns, after blanking out allowed case ids."""
    text = _blank_allowed(text, allowed_ids)
    findings = []
    for kind, pattern_name, pattern in PATTERNS:
        for match in pattern.finditer(text):
            line = text.count("\n", 0, match.start()) + 1
            column = match.start() - (text.rfind("\n", 0, match.start()) + 1) + 1
            location = f"{where}line {line}, column {column}"
            findings.append(Finding(name, kind, location, f"text shaped like {pattern_name}"))
    return findings


def _scan_name(relative: str, file_name: str, deny: DenyList, allowed: list[str]) -> list[Finding]:
    """Check one file or folder name for deny values and patterns."""
    findings = []
    lowered = file_name.lower().encode("utf-8")
    for number, needle in deny.needles:
        if find_needle(lowered, needle) >= 0:
            findings.append(Finding(relative, DENY_VALUE, "file or folder name", f"deny-list value #{number}"))
    for finding in scan_text(file_name, allowed, relative):
        findings.append(Finding(relative, finding.kind, "file or folder name", finding.detail))
    return findings


def _search_deny_values(path: Path, deny: DenyList, name: str, digest=None) -> list[Finding]:
    """Search the decompressed bytes of a file for each deny value, case-insensitively.

    The search streams in chunks that overlap by the longest needle, so a
    value split across two chunks is still found. Output bytes are folded
    to lower case with bytes.lower, which changes ASCII letters only, so a
    non-ASCII letter in a value matches only where the output has it in
    lower case.

    False positives in voxel data: in raw int16 voxels, 3 or more printable
    ASCII bytes span a whole voxel whose high byte is printable, which means
    8,192 HU or more. uint8 masks never match, because labels 0..25 are
    control bytes. float32 voxels could spell a value by chance, so a
    finding names the byte offset for a check by hand.
    """
    if not deny.needles:
        return []
    findings = []
    reported: set[int] = set()
    overlap = deny.max_length - 1
    for offset, chunk in _iter_chunks(path, overlap, digest):
        lowered = chunk.lower()
        for position, number in _find_needles(lowered, deny):
            if number in reported:
                continue
            reported.add(number)
            location = f"byte {offset + position} of the {'decompressed ' if is_gzip(path) else ''}content"
            findings.append(Finding(name, DENY_VALUE, location, f"deny-list value #{number}"))
    return findings


def _find_needles(haystack: bytes, deny: DenyList) -> Iterator[tuple[int, int]]:
    """Yield (position, needle number) for each needle occurrence in ``haystack``, in position order.

    The cost does not grow with the number of needles: numpy looks up the
    3-byte window at every position in a table of the needles' prefixes,
    and only the few positions that hit are compared in full. A whole build
    passes thousands of deny values at once, where one bytes.find per needle
    would read each chunk thousands of times.
    """
    if len(haystack) < 3:
        return
    table, by_prefix = deny.prefix_index
    data = np.frombuffer(haystack, dtype=np.uint8).astype(np.uint32)
    keys = data[:-2] | data[1:-1] << 8 | data[2:] << 16
    for position in np.flatnonzero(table[keys]).tolist():
        for number, needle in by_prefix[int(keys[position])]:
            if haystack.startswith(needle, position) and _is_bounded(haystack, position, needle):
                yield position, number


def _is_bounded(haystack: bytes, position: int, needle: bytes) -> bool:
    """Return True unless an all-digit needle touches a letter or digit at ``position``."""
    if not needle.isdigit():
        return True
    before = haystack[position - 1 : position] if position else b""
    after = haystack[position + len(needle) : position + len(needle) + 1]
    return not before.isalnum() and not after.isalnum()


def find_needle(haystack: bytes, needle: bytes) -> int:
    """Return the first position of ``needle`` in ``haystack``, or -1.

    An all-digit needle (a numeric serial number or id) must not touch a
    letter or digit on either side, because short digit runs occur by chance
    inside hex digests and longer numbers. Other needles match anywhere.
    The edges of ``haystack`` count as boundaries.
    """
    position = haystack.find(needle)
    while position >= 0 and not _is_bounded(haystack, position, needle):
        position = haystack.find(needle, position + 1)
    return position


def _iter_chunks(path: Path, overlap: int, digest=None) -> Iterator[tuple[int, bytes]]:
    """Yield (offset, bytes) chunks of the decompressed file that overlap by ``overlap`` bytes.

    ``digest`` (a hashlib object), when given, is updated with every byte once.
    """
    from isal import igzip

    opener = igzip.open if is_gzip(path) else open
    with opener(path, "rb") as handle:
        tail = b""
        offset = 0
        while True:
            block = handle.read(SEARCH_CHUNK_BYTES)
            if not block:
                break
            if digest is not None:
                digest.update(block)
            yield offset - len(tail), tail + block
            offset += len(block)
            tail = block[-overlap:] if overlap > 0 else b""


def _check_nifti_header(path: Path, name: str, allowed: list[str]) -> list[Finding]:
    """Check NIfTI string fields and extensions, and apply the text patterns to both."""
    header = _read_nifti_header(path)
    findings = []
    for field in NIFTI_TEXT_FIELDS:
        raw = header[field].tobytes().split(b"\0", 1)[0]
        value = raw.decode("latin-1")
        if value and not (field == "descrip" and value == DESCRIP):
            expected = f"empty or '{DESCRIP}'" if field == "descrip" else "empty"
            findings.append(Finding(name, HEADER_FIELD, f"NIfTI header field {field}", f"not {expected}"))
        findings += scan_text(value, allowed, name, where=f"NIfTI header field {field}, ")
    for index, extension in enumerate(header.extensions):
        code = extension.get_code()
        findings.append(Finding(name, EXTENSION, f"NIfTI header extension {index}", f"extension code {code} present; outputs carry none"))
        content = extension.get_content()
        text = content.decode("latin-1") if isinstance(content, bytes) else str(content)
        findings += scan_text(text, allowed, name, where=f"NIfTI header extension {index}, ")
    return findings


def _read_nifti_header(path: Path) -> nib.Nifti1Header:
    """Read the NIfTI-1 header and its extensions without reading the voxels."""
    from isal import igzip

    opener = igzip.open if is_gzip(path) else open
    with opener(path, "rb") as handle:
        prefix = handle.read(348)
        header = nib.Nifti1Header(prefix, check=False)
        vox_offset = int(header["vox_offset"])
        prefix += handle.read(max(vox_offset - 348, 0))
    return nib.Nifti1Header.from_fileobj(io.BytesIO(prefix), check=False)


def _check_sidecar_keys(text: str, name: str) -> list[Finding]:
    """Check that a sidecar is a JSON object whose keys are all on the allow-list."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        return [Finding(name, SIDECAR_KEY, f"line {error.lineno}", "sidecar is not valid JSON")]
    if not isinstance(data, dict):
        return [Finding(name, SIDECAR_KEY, "top level", "sidecar is not a JSON object")]
    return [
        Finding(name, SIDECAR_KEY, f"key '{key}'", "key not on the sidecar allow-list")
        for key in sorted(data)
        if key not in SIDECAR_ALLOWED_KEYS
    ]


def _blank_allowed(text: str, allowed_ids: Iterable[str]) -> str:
    """Replace each allowed case id by spaces so that patterns skip it but positions stay.

    A case id counts only as a whole token: a longer UID that starts with a
    case id (its study UID, say) is not blanked, so the UID pattern still matches it.
    """
    pattern = _allowed_pattern(tuple(sorted(set(allowed_ids))))
    if pattern is None:
        return text
    return pattern.sub(lambda match: " " * len(match.group(0)), text)


@functools.lru_cache(maxsize=8)
def _allowed_pattern(allowed_ids: tuple[str, ...]) -> re.Pattern[str] | None:
    """Compile one alternation of the case ids, longest first, with the same boundaries as the UID pattern."""
    ids = sorted((case_id for case_id in allowed_ids if case_id), key=len, reverse=True)
    if not ids:
        return None
    alternation = "|".join(re.escape(case_id) for case_id in ids)
    return re.compile(rf"(?<![0-9A-Za-z.])(?:{alternation})(?![0-9A-Za-z]|\.\d)")


def _read_text(path: Path) -> str:
    from isal import igzip

    opener = igzip.open if is_gzip(path) else open
    with opener(path, "rb") as handle:
        return handle.read().decode("utf-8", errors="replace")


def _is_nifti(path: Path) -> bool:
    return path.name.endswith((".nii", ".nii.gz"))


def _is_text(path: Path) -> bool:
    """Return True for known text files, and for small files of any name that decode as UTF-8 with no NUL byte."""
    stem = path.name[:-3] if path.name.endswith(".gz") else path.name
    if Path(stem).suffix.lower() in TEXT_SUFFIXES or stem in TEXT_NAMES:
        return True
    if path.stat().st_size > MAX_SNIFF_BYTES or is_gzip(path):
        return False
    data = path.read_bytes()
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return b"\0" not in data


def _is_sidecar(path: Path) -> bool:
    return path.parent.name == "sidecars" and path.suffix == ".json"
