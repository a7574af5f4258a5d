"""Fetch stage: checks that a fetched file really is a complete NIfTI before it is used.

It catches the ways a download goes wrong without an HTTP error. These are
an HTML page saved under the NIfTI's name (Google Drive's virus-scan page for
large files), a gzip stream cut short, and a gzip file that is not NIfTI.
"""
from __future__ import annotations

import struct
import zlib
from pathlib import Path

from isal import igzip

from ctspine_builder.errors import FetchError
from ctspine_builder.fetch.download import looks_like_html

# sizeof_hdr, the first int32 of a NIfTI header: 348 for NIfTI-1, 540 for NIfTI-2.
NIFTI_HEADER_SIZES = (348, 540)
READ_CHUNK_BYTES = 1 << 20

DRIVE_HTML_HINT = (
    "This is what Google Drive saves for large files (its virus-scan page). Download the file again "
    "with the page's confirm link or a tool that handles it, such as gdown, or use the Hugging Face copy "
    "(source kind masks-hf)."
)


def _header_size(first_bytes: bytes) -> int | None:
    if len(first_bytes) < 4:
        return None
    little, big = struct.unpack("<i", first_bytes[:4])[0], struct.unpack(">i", first_bytes[:4])[0]
    for value in (little, big):
        if value in NIFTI_HEADER_SIZES:
            return value
    return None


def check_nifti_file(path: Path, *, case_id: str | None, file_role: str, html_hint: str = DRIVE_HTML_HINT) -> None:
    """Raise FetchError unless ``path`` is a complete NIfTI (.nii or gzip-compressed).

    A gzip file is decompressed to its end, so a truncated or corrupt stream
    is found here rather than in the converter. ``file_role`` names the file in
    messages (for example "mask" or "image").
    """
    with open(path, "rb") as handle:
        head = handle.read(512)
    if looks_like_html(head):
        raise FetchError(f"{file_role} file is an HTML page, not NIfTI", case_id=case_id, path=path, hint=html_hint)

    if head[:2] != b"\x1f\x8b":
        if _header_size(head) is None:
            raise FetchError(
                f"{file_role} file is not NIfTI (no NIfTI header and not gzip)",
                case_id=case_id, path=path, hint="Replace it with the original .nii.gz file.",
            )
        return

    first = b""
    try:
        with igzip.open(path, "rb") as stream:
            first = stream.read(4)
            while stream.read(READ_CHUNK_BYTES):
                pass
    except (EOFError, OSError, zlib.error) as error:
        raise FetchError(
            f"{file_role} file is a truncated or corrupt gzip ({error})",
            case_id=case_id, path=path,
            hint="The download was cut short or damaged; delete the file and download it again.",
        ) from error
    if _header_size(first) is None:
        raise FetchError(
            f"{file_role} file is gzip but does not contain a NIfTI header",
            case_id=case_id, path=path, hint="Replace it with the original .nii.gz file.",
        )
