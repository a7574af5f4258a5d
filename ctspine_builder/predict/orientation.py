"""Predict stage: the slice orientation normalisation the CTSpine1K authors used.

The authors' preparation script called nnU-Net v1's
``dataset_conversion/Task056_Verse_normalize_orientation.py`` (credited there
to a gist by GitHub user nlessmann): ``normalize_slice_orientation`` turns a
volume so that its direction cosines become the identity before nnU-Net reads
it, and ``restore_original_slice_orientation`` turns the label map back.
Those functions are called here unchanged; this module only builds the
SimpleITK-style header they expect from a NIfTI affine.
"""
from __future__ import annotations

import itertools
import logging

import numpy as np

from ctspine_builder.errors import ConversionError

logger = logging.getLogger(__name__)

# NIfTI affines are in RAS+ world coordinates; SimpleITK (and so nnU-Net)
# uses LPS+, which flips the first two world axes.
RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0])


def itk_header(affine: np.ndarray) -> dict:
    """Return the ``spacing``/``origin``/``direction`` header SimpleITK would report.

    The voxel axes stay in NIfTI (x, y, z) order, as the nnU-Net helpers
    expect after their ``reverse_axes``.
    """
    linear = np.asarray(affine, dtype=np.float64)[:3, :3]
    spacing = np.linalg.norm(linear, axis=0)
    if np.any(spacing <= 0):
        raise ConversionError(f"image affine has a zero voxel size {tuple(spacing)}")
    direction = RAS_TO_LPS @ (linear / spacing)
    origin = RAS_TO_LPS @ np.asarray(affine, dtype=np.float64)[:3, 3]
    return {"spacing": tuple(float(s) for s in spacing), "origin": tuple(float(o) for o in origin), "direction": tuple(direction.flatten())}


def _check_axis_aligned(direction: tuple) -> None:
    rounded = np.round(np.asarray(direction).reshape(3, 3))
    is_signed_permutation = np.all(np.abs(rounded).sum(axis=0) == 1) and np.all(np.abs(rounded).sum(axis=1) == 1)
    if not is_signed_permutation:
        raise ConversionError(
            "image axes are oblique by 45 degrees or more, which the Task056 orientation normalisation cannot handle",
            hint="Resample the image to a grid closer to the scanner axes",
        )


def normalize_orientation(data: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, dict]:
    """Return the volume turned to identity direction and the header to undo it.

    The returned header's ``spacing`` is the voxel size in the turned (x, y, z)
    order.
    """
    from nnunet.dataset_conversion.Task056_Verse_normalize_orientation import normalize_slice_orientation

    header = itk_header(affine)
    _check_axis_aligned(header["direction"])
    turned, header = normalize_slice_orientation(data, header)
    return turned, header


def restore_orientation(labels: np.ndarray, header: dict) -> np.ndarray:
    """Turn a label map from the normalised orientation back to the input's voxel order."""
    from nnunet.dataset_conversion.Task056_Verse_normalize_orientation import restore_original_slice_orientation

    restored, _ = restore_original_slice_orientation(labels, header)
    return np.ascontiguousarray(restored)


def signed_permutations() -> list[np.ndarray]:
    """Return the 48 axis-aligned 3x3 rotation/reflection matrices (for tests and checks)."""
    matrices = []
    for order in itertools.permutations(range(3)):
        for signs in itertools.product((1.0, -1.0), repeat=3):
            matrix = np.zeros((3, 3))
            for column, row in enumerate(order):
                matrix[row, column] = signs[column]
            matrices.append(matrix)
    return matrices
