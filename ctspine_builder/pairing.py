"""Pair stage: check a vertebra mask against its image in world coordinates and place it on the image grid."""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

from ctspine_builder.errors import PairingError
from ctspine_builder.nifti import save_nifti

logger = logging.getLogger(__name__)

# CTSpine1K labels: 0 background, C1..C7 = 1..7, T1..T12 = 8..19, L1..L6 = 20..25.
MAX_LABEL = 25

# Default world-coordinate tolerance. A NIfTI sform is stored as float32, which
# keeps about 7 significant digits: at 1,000 mm from the origin that is an
# error of about 1e-4 mm per corner, so 1e-3 mm accepts any float32 copy of the
# same grid. Masks saved by tools that rebuild the affine from rounded spacing
# or from the quaternion (qform) can differ by 1e-3..1e-2 mm (an estimate), so
# pass a larger tolerance for those. A real grid mismatch (another slice, another spacing)
# is at least a fraction of a voxel, hundreds of times larger.
DEFAULT_TOLERANCE_MM = 1e-3

# Voxels counted per np.bincount call in `label_counts` (4 Mi voxels: 32 MiB of intp).
BINCOUNT_BLOCK = 1 << 22

# How many unexpected label values an error message lists before it counts the rest.
MAX_LISTED_VALUES = 10


@dataclass
class PairingResult:
    """Result of `pair_mask`: output path, reorientation flag, and voxel counts per label before and after."""

    path: Path
    reoriented: bool
    label_counts_in: dict[int, int]
    label_counts_out: dict[int, int]


def geometry_summary(image: nib.spatialimages.SpatialImage) -> str:
    """Describe an image grid: shape, spacing, origin (RAS+, mm) and orientation codes."""
    affine = image.affine
    shape = "x".join(str(size) for size in image.shape)
    spacing = "x".join(f"{value:.6g}" for value in np.linalg.norm(affine[:3, :3], axis=0))
    origin = ", ".join(f"{value:.4f}" for value in affine[:3, 3])
    codes = "".join(nib.aff2axcodes(affine))
    text = f"shape {shape}, spacing {spacing} mm, origin ({origin}) mm RAS+, orientation {codes}"
    if not _is_axis_aligned(affine):
        text += " (oblique)"
    return text


def label_counts(data: np.ndarray) -> dict[int, int]:
    """Return the voxel count of each label value present in an integer mask array."""
    values, counts = _unique_counts(data)
    return {int(value): int(count) for value, count in zip(values, counts)}


def _unique_counts(data: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Return the sorted distinct values of ``data`` and their counts.

    Integer masks with values in 0..255 are counted with bincount, which is
    several times faster than np.unique's sort on a whole CT-sized mask.
    """
    if data.size and np.issubdtype(data.dtype, np.integer):
        low, high = int(data.min()), int(data.max())
        if low >= 0 and high <= 255:
            # bincount casts to intp, so count in blocks to keep that copy small.
            flat = data.ravel(order="K")  # no copy for the Fortran-ordered arrays nibabel returns
            counts = np.zeros(high + 1, dtype=np.int64)
            for start in range(0, flat.size, BINCOUNT_BLOCK):
                counts += np.bincount(flat[start : start + BINCOUNT_BLOCK], minlength=high + 1)
            values = np.flatnonzero(counts)
            return values.astype(data.dtype), counts[values]
    return np.unique(data, return_counts=True)


def check_labels(data: np.ndarray, *, case_id: str | None = None, path: str | Path | None = None) -> np.ndarray:
    """Check that a mask contains whole-number labels in 0..25 and return it as uint8.

    Raises PairingError listing the unexpected values: non-integer values
    (for example 1.5 or NaN in a float mask) and values outside 0..25.
    """
    values, _ = _unique_counts(data)
    if np.issubdtype(values.dtype, np.floating):
        fractional = values[~np.isfinite(values) | (values != np.round(values))]
        if fractional.size:
            raise PairingError(
                f"mask contains non-integer label values {_list_values(fractional)}, but labels must be whole numbers 0..{MAX_LABEL}",
                case_id=case_id,
                path=path,
                hint="Check that the file is a label mask and not an image or a probability map",
            )
    outside = values[(values < 0) | (values > MAX_LABEL)]
    if outside.size:
        raise PairingError(
            f"mask contains unexpected label values {_list_values(outside)}, but allowed labels are 0..{MAX_LABEL} "
            "(0 background, C1..C7 = 1..7, T1..T12 = 8..19, L1..L6 = 20..25)",
            case_id=case_id,
            path=path,
            hint=_outside_labels_hint(values),
        )
    return data.astype(np.uint8, copy=False)


# A label mask has at most 26 distinct values; a CT image has hundreds, many
# of them negative (air is about -1000 HU).
_IMAGE_LIKE_UNIQUE_VALUES = 64


def _outside_labels_hint(values: np.ndarray) -> str:
    """Return the fix for out-of-range labels, spotting a CT image passed as the mask."""
    if values.size > _IMAGE_LIKE_UNIQUE_VALUES and values.min() < 0:
        return ("This file looks like a CT image, not a label mask: check the order of the arguments "
                "(IMAGE first, then MASK)")
    return "Relabel the mask to the CTSpine1K scheme"


def pair_mask(
    image_path: str | Path,
    mask_path: str | Path,
    out_path: str | Path,
    *,
    case_id: str | None = None,
    tolerance_mm: float = DEFAULT_TOLERANCE_MM,
) -> PairingResult:
    """Place a mask on its image's grid and write it as uint8 on the image's affine.

    A mask whose grid is an axis permutation or flip of the image's grid is
    reoriented. Any other difference in shape, spacing, origin or direction
    beyond ``tolerance_mm`` raises PairingError naming both geometries.
    """
    image = _load(image_path, "image", case_id)
    mask = _load(mask_path, "mask", case_id)
    mask_data = _mask_array(mask, case_id=case_id, path=mask_path)
    mask_data = check_labels(mask_data, case_id=case_id, path=mask_path)
    counts_in = label_counts(mask_data)

    axes, flips = voxel_mapping(image, mask, tolerance_mm=tolerance_mm, case_id=case_id, path=mask_path)
    reoriented = axes != (0, 1, 2) or any(flips)
    out_data = mask_data.transpose(axes)
    for axis, flipped in enumerate(flips):
        if flipped:
            out_data = np.flip(out_data, axis=axis)
    out_data = np.ascontiguousarray(out_data, dtype=np.uint8)
    counts_out = label_counts(out_data)

    save_nifti(out_data, image.affine, out_path)
    logger.info("paired mask%s: reoriented=%s, labels %s", _case_suffix(case_id), reoriented, sorted(counts_out))
    return PairingResult(Path(out_path), reoriented, counts_in, counts_out)


def voxel_mapping(
    image: nib.spatialimages.SpatialImage,
    mask: nib.spatialimages.SpatialImage,
    *,
    tolerance_mm: float = DEFAULT_TOLERANCE_MM,
    case_id: str | None = None,
    path: str | Path | None = None,
) -> tuple[tuple[int, int, int], tuple[bool, bool, bool]]:
    """Return how mask axes map onto image axes: (mask axis per image axis, flip per image axis).

    The mask voxel-to-image voxel transform inv(image affine) @ mask affine
    must be a signed permutation whose translation is 0 for kept axes and
    size - 1 for flipped ones. The 8 corners of the mask grid must then land
    on the same world points within ``tolerance_mm``. The position error is an
    affine function of the voxel index, so its maximum over the grid is at a
    corner, and checking the corners bounds every voxel.
    """
    image_shape = tuple(image.shape[:3])
    mask_shape = tuple(mask.shape[:3])
    try:
        voxel_transform = np.linalg.inv(image.affine) @ mask.affine
    except np.linalg.LinAlgError:
        raise PairingError(
            "image affine is singular (a zero spacing or two parallel axes), so no voxel maps to world coordinates",
            case_id=case_id,
            hint="Reconvert the image; its header geometry is damaged",
        ) from None
    if not np.all(np.isfinite(voxel_transform)):
        _raise_mismatch(image, mask, "the mask affine contains NaN or infinite values", case_id, path)
    permutation = _signed_permutation(voxel_transform[:3, :3])
    if permutation is None:
        _raise_mismatch(image, mask, "the mask's voxel axes are not a permutation or flip of the image's axes", case_id, path)

    axes = tuple(int(np.flatnonzero(row)[0]) for row in permutation)
    flips = tuple(bool(permutation[k, axes[k]] < 0) for k in range(3))
    permuted_shape = tuple(mask_shape[axis] for axis in axes)
    if permuted_shape != image_shape:
        _raise_mismatch(image, mask, "the grids have different shapes", case_id, path)

    exact = np.eye(4)
    exact[:3, :3] = permutation
    exact[:3, 3] = [image_shape[k] - 1 if flips[k] else 0 for k in range(3)]
    error_mm = _max_corner_error(image.affine, mask.affine, exact, mask_shape)
    if error_mm > tolerance_mm:
        reason = f"voxel centres differ by up to {error_mm:.4g} mm in world coordinates (tolerance {tolerance_mm:g} mm)"
        _raise_mismatch(image, mask, reason, case_id, path)
    return axes, flips  # type: ignore[return-value]


def _signed_permutation(matrix: np.ndarray) -> np.ndarray | None:
    """Round a 3x3 voxel-to-voxel matrix to a signed permutation, or return None if no signed permutation is near it."""
    rounded = np.round(matrix).astype(int)
    if not np.all(np.isin(rounded, (-1, 0, 1))):
        return None
    if not (np.all(np.abs(rounded).sum(axis=0) == 1) and np.all(np.abs(rounded).sum(axis=1) == 1)):
        return None
    # A small rotation or another spacing still rounds to a permutation; the
    # corner check in `voxel_mapping` then reports the deviation in millimetres.
    return rounded


def _max_corner_error(image_affine: np.ndarray, mask_affine: np.ndarray, exact: np.ndarray, mask_shape: tuple) -> float:
    """Return the largest world distance (mm) between a mask corner and its mapped image voxel."""
    corners = np.array(
        [[i, j, k, 1.0] for i in (0, mask_shape[0] - 1) for j in (0, mask_shape[1] - 1) for k in (0, mask_shape[2] - 1)]
    ).T
    via_mask = mask_affine @ corners
    via_image = image_affine @ (exact @ corners)
    return float(np.max(np.linalg.norm(via_mask[:3] - via_image[:3], axis=0)))


def _raise_mismatch(image, mask, reason: str, case_id: str | None, path) -> None:
    raise PairingError(
        f"mask does not fit the image grid: {reason}. Image: {geometry_summary(image)}. Mask: {geometry_summary(mask)}",
        case_id=case_id,
        path=path,
        hint="Check that the mask was drawn on this image's series and on the grid that its converter wrote "
        "(see `ctspine convert --geometry`)",
    )


def _load(path: str | Path, role: str, case_id: str | None) -> nib.spatialimages.SpatialImage:
    """Load a NIfTI image, turning a missing or unreadable file into PairingError."""
    try:
        return nib.load(str(path))
    except FileNotFoundError:
        raise PairingError(f"{role} file not found", case_id=case_id, path=path) from None
    except (nib.filebasedimages.ImageFileError, OSError, EOFError, ValueError) as error:
        raise PairingError(
            f"{role} file is not a readable NIfTI image ({type(error).__name__})",
            case_id=case_id,
            path=path,
            hint="Check that the file is a complete .nii or .nii.gz file",
        ) from None


def _mask_array(mask: nib.spatialimages.SpatialImage, *, case_id: str | None, path) -> np.ndarray:
    """Return the mask voxels as a 3-D array, dropping trailing axes of size 1."""
    data = np.asanyarray(mask.dataobj)
    while data.ndim > 3 and data.shape[-1] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise PairingError(
            f"mask has {data.ndim} dimensions (shape {'x'.join(map(str, mask.shape))}); a label mask must be 3-D",
            case_id=case_id,
            path=path,
            hint="Save one 3-D label volume per case",
        )
    return data


def _is_axis_aligned(affine: np.ndarray) -> bool:
    directions = affine[:3, :3] / np.linalg.norm(affine[:3, :3], axis=0)
    return bool(np.allclose(np.abs(directions).max(axis=0), 1.0, atol=1e-6))


def _list_values(values: np.ndarray) -> str:
    listed = ", ".join(f"{value:g}" if isinstance(value, float) else str(value) for value in values[:MAX_LISTED_VALUES].tolist())
    more = values.size - MAX_LISTED_VALUES
    return f"[{listed}]" + (f" and {more} more" if more > 0 else "")


def _case_suffix(case_id: str | None) -> str:
    return f" for case {case_id}" if case_id else ""
