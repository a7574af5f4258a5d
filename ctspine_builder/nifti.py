"""NIfTI output for every stage: clean headers, reproducible bytes, atomic writes.

Every NIfTI file the tool writes goes through `save_nifti`, which is where the
identifier policy for headers is enforced: descrip holds fixed tool text,
aux_file / intent_name / db_name are empty, and no header extensions are kept.
"""
from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np

from ctspine_builder import TOOL_NAME, __version__
from ctspine_builder.fileio import atomic_path, gzip_bytes

# NIfTI xform code 1 (NIFTI_XFORM_SCANNER_ANAT): scanner-based anatomical coordinates.
XFORM_SCANNER = 1

DESCRIP = f"{TOOL_NAME} {__version__}"


def make_image(data: np.ndarray, affine: np.ndarray) -> nib.Nifti1Image:
    """Return a Nifti1Image with qform = sform = ``affine`` (code 1), units mm.

    The header carries only geometry, data type and fixed tool text.
    """
    image = nib.Nifti1Image(data, affine)
    header = image.header
    header.set_qform(affine, code=XFORM_SCANNER)
    header.set_sform(affine, code=XFORM_SCANNER)
    header.set_xyzt_units(xyz="mm")
    header["descrip"] = DESCRIP.encode("ascii")
    header["aux_file"] = b""
    header["intent_name"] = b""
    header["db_name"] = b""
    image.header.extensions.clear()
    return image


def nifti_bytes(image: nib.Nifti1Image, compress: bool = True) -> bytes:
    """Serialise ``image`` to .nii bytes, gzip-compressed reproducibly by default."""
    image.header.extensions.clear()
    raw = image.to_bytes()
    return gzip_bytes(raw) if compress else raw


def save_nifti(data: np.ndarray, affine: np.ndarray, path: str | Path) -> nib.Nifti1Image:
    """Write ``data`` on ``affine`` to ``path`` atomically and return the image.

    The file is gzip-compressed when ``path`` ends in ``.gz``. The same data
    and affine always give the same bytes.
    """
    path = Path(path)
    image = make_image(data, affine)
    payload = nifti_bytes(image, compress=path.name.endswith(".gz"))
    with atomic_path(path) as tmp:
        tmp.write_bytes(payload)
    return image
