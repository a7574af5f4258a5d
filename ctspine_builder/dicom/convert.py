"""Convert stage: one DICOM series or source NIfTI to a clean case NIfTI and sidecar.

`convert_series` finds the series (discover), orders the slices and builds
the affine (geometry), decodes and rescales to HU (decode), and writes the
image through `ctspine_builder.nifti.save_nifti`, so the header carries no
identifier. `convert_nifti` does the same for a NIfTI source. Both return
the identifying values read from the input, for the build's scan of outputs.
"""
from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ctspine_builder import TOOL_NAME, __version__
from ctspine_builder.dicom.decode import (
    VolumeBuilder,
    check_decodable,
    decode_all,
    fits_int16,
    rescale_parameters,
    to_hu,
)
from ctspine_builder.dicom.discover import SliceHeader, discover_series, select_series
from ctspine_builder.dicom.geometry import (
    GEOMETRY_MODES,
    check_orientation,
    group_positions,
    simpleitk_grid,
    strict_grid,
)
from ctspine_builder.dicom.sidecar import MIN_DENY_LENGTH, build_sidecar, collect_deny_values, write_sidecar
from ctspine_builder.errors import ConversionError
from ctspine_builder.nifti import save_nifti

logger = logging.getLogger(__name__)


@dataclass
class ConversionResult:
    """Files written and values read by one conversion.

    ``deny_values`` are identifying values read from the input, kept only for
    the scan of outputs and never written anywhere.
    """

    path: Path
    shape: tuple[int, ...]
    affine: np.ndarray
    dtype: str
    sidecar: dict[str, Any]
    deny_values: set[str]
    slice_count: int


def convert_series(
    dicom_dir: str | Path,
    out_path: str | Path,
    *,
    series_uid: str | None = None,
    geometry: str = "strict",
    case_id: str | None = None,
    sidecar_path: str | Path | None = None,
    workers: int = 1,
) -> ConversionResult:
    """Convert one DICOM series under ``dicom_dir`` to the NIfTI file ``out_path``.

    ``geometry`` is "strict" (regular grid, sorted along the slice normal,
    irregular series rejected) or "simpleitk" (the grid SimpleITK's
    ImageSeriesReader gives). ``workers`` above 1 decodes in that many
    processes. Raises ConversionError, naming ``case_id`` when given.
    """
    if geometry not in GEOMETRY_MODES:
        raise ConversionError(f"unknown geometry mode {geometry!r}; use one of {', '.join(GEOMETRY_MODES)}",
                              case_id=case_id)
    out_path = Path(out_path)
    logger.info("converting %s (geometry %s)", dicom_dir, geometry)
    series = select_series(discover_series(dicom_dir, case_id=case_id), series_uid, dicom_dir, case_id=case_id)
    slices = series.slices
    _check_slices(slices, case_id=case_id)

    if geometry == "strict":
        slices, grid, stored = _strict_grid(slices, workers=workers, case_id=case_id)
    else:
        grid = simpleitk_grid(slices, [str(header.path) for header in slices])
        stored = decode_all([slices[index].path for index in grid.order], workers=workers, case_id=case_id)
    volume, slopes, intercepts = _stack_hu([slices[index] for index in grid.order], stored)

    # The volume is (slice, row, column) in C order; its transpose is the
    # (column, row, slice) voxel array in Fortran order, written without a copy.
    data = volume.transpose(2, 1, 0)
    save_nifti(data, grid.affine, out_path)

    first = slices[grid.order[0]]
    sidecar = build_sidecar(first.dataset, geometry=geometry, pixel_spacing=first.pixel_spacing,
                            slice_spacing=grid.slice_spacing, slopes=slopes, intercepts=intercepts, case_id=case_id)
    if sidecar_path is not None:
        write_sidecar(sidecar_path, sidecar)
    deny_values = collect_deny_values(header.dataset for header in series.slices)
    logger.info("wrote %s: %s %s, %d slices", out_path.name, "x".join(map(str, data.shape)), data.dtype,
                len(grid.order))
    return ConversionResult(path=out_path, shape=tuple(data.shape), affine=grid.affine, dtype=str(data.dtype),
                            sidecar=sidecar, deny_values=deny_values, slice_count=len(grid.order))


def _check_slices(slices: list[SliceHeader], *, case_id: str | None) -> None:
    """Reject multi-frame files, mixed slice sizes and undecodable transfer syntaxes."""
    first = slices[0].dataset
    for header in slices:
        dataset = header.dataset
        frames = int(dataset.get("NumberOfFrames", 1) or 1)
        if frames > 1:
            raise ConversionError(f"multi-frame image with {frames} frames; only one slice per file is supported",
                                  case_id=case_id, path=header.path)
        if (dataset.Rows, dataset.Columns) != (first.Rows, first.Columns):
            raise ConversionError(f"slice size {dataset.Rows}x{dataset.Columns} differs from "
                                  f"{first.Rows}x{first.Columns} of the other slices", case_id=case_id,
                                  path=header.path, hint="The series mixes image sizes; remove the odd files")
    syntaxes = {str(header.dataset.file_meta.TransferSyntaxUID): header.path for header in slices}
    for syntax, path in syntaxes.items():
        check_decodable(syntax, path, case_id=case_id)


def _strict_grid(slices: list[SliceHeader], *, workers: int, case_id: str | None):
    """Drop duplicate instances and check the grid.

    Returns the slices kept, the grid over them and the stored values of the
    slices in grid order.
    """
    slices = _drop_repeated_sop_uids(slices)
    check_orientation(slices, case_id=case_id)
    groups = group_positions(slices)
    # The grid is checked from the headers alone, so a series with a missing
    # slice fails before its pixels are decoded.
    grid = strict_grid(slices, [group[0] for group in groups], case_id=case_id)

    flat = [index for group in groups for index in group]
    decoded = dict(zip(flat, decode_all([slices[index].path for index in flat], workers=workers, case_id=case_id)))
    for group in groups:
        _check_duplicates(slices, group, decoded, case_id=case_id)
    return slices, grid, [decoded[index] for index in grid.order]


def _drop_repeated_sop_uids(slices: list[SliceHeader]) -> list[SliceHeader]:
    seen: set[str] = set()
    kept = []
    for header in slices:
        uid = header.sop_uid
        if uid and uid in seen:
            logger.info("dropped %s: repeats the SOPInstanceUID of another file", header.path.name)
            continue
        seen.add(uid)
        kept.append(header)
    return kept


def _check_duplicates(slices: list[SliceHeader], group: list[int], stored: dict[int, np.ndarray],
                      *, case_id: str | None) -> None:
    """Keep exact duplicates at one position; raise for slices that differ there."""
    kept = group[0]
    for other in group[1:]:
        same_hu = np.array_equal(to_hu(stored[kept], *rescale_parameters(slices[kept].dataset)),
                                 to_hu(stored[other], *rescale_parameters(slices[other].dataset)))
        if not same_hu:
            position = float(np.dot(slices[kept].normal, slices[kept].position))
            raise ConversionError(
                f"conflicting slices at {position:.3f} mm along the normal: {slices[kept].path.name} and "
                f"{slices[other].path.name} share a position but differ in HU values", case_id=case_id,
                path=slices[other].path, hint="Remove the wrong file, or download the series again")
        logger.info("dropped %s: same position and pixels as %s", slices[other].path.name, slices[kept].path.name)


def _stack_hu(ordered: list[SliceHeader], stored: list[np.ndarray]):
    """Return (volume, slopes, intercepts) for the slices in output order."""
    builder = VolumeBuilder(len(ordered), *stored[0].shape)
    slopes, intercepts = [], []
    for position, (header, pixels) in enumerate(zip(ordered, stored)):
        slope, intercept = rescale_parameters(header.dataset)
        builder.put(position, to_hu(pixels, slope, intercept))
        slopes.append(slope)
        intercepts.append(intercept)
    return builder.volume, slopes, intercepts


def convert_nifti(
    src_path: str | Path,
    out_path: str | Path,
    *,
    case_id: str | None = None,
    sidecar_path: str | Path | None = None,
) -> ConversionResult:
    """Rewrite a source NIfTI with a clean header: same voxel values, same affine.

    The affine is the one nibabel reports as best (sform, else qform).
    Values stay the same, in the smallest type that represents them exactly
    (int16 for most CT, whatever the source type or scaling was).
    ``deny_values`` contains the text of the source header and extensions.
    """
    import nibabel as nib

    src_path, out_path = Path(src_path), Path(out_path)
    logger.info("rewriting NIfTI %s", src_path)
    try:
        image = nib.load(src_path)
        data = _nifti_values(image)
    except (OSError, ValueError, EOFError, nib.filebasedimages.ImageFileError) as error:
        raise ConversionError(f"unreadable NIfTI file: {type(error).__name__}: {error}", case_id=case_id,
                              path=src_path, hint="The file is damaged or truncated; download it again") from error
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise ConversionError(f"expected a 3D image, got shape {data.shape}", case_id=case_id, path=src_path)

    affine = image.affine
    save_nifti(data, affine, out_path)
    zooms = [float(zoom) for zoom in image.header.get_zooms()[:3]]
    sidecar: dict[str, Any] = {
        "ConversionSoftware": TOOL_NAME,
        "ConversionSoftwareVersion": __version__,
        "Geometry": "source-nifti",
        "PixelSpacing": [round(zooms[1], 6), round(zooms[0], 6)],
        "SpacingBetweenSlices": round(zooms[2], 6),
    }
    if case_id:
        sidecar["CaseId"] = case_id
    if sidecar_path is not None:
        write_sidecar(sidecar_path, sidecar)
    return ConversionResult(path=out_path, shape=tuple(data.shape), affine=affine, dtype=str(data.dtype),
                            sidecar=sidecar, deny_values=nifti_deny_values(image.header),
                            slice_count=int(data.shape[2]))


def _nifti_values(image) -> np.ndarray:
    """Return the voxel values, scaled when the header sets scl_slope / scl_inter, in the smallest exact type.

    Float data whose values are all integers within int16 becomes int16, and
    float64 data that float32 represents exactly becomes float32, so the values
    stay identical while the file shrinks.
    """
    # nibabel moves scl_slope / scl_inter from the loaded header to the array proxy.
    slope = float(getattr(image.dataobj, "slope", 1.0))
    intercept = float(getattr(image.dataobj, "inter", 0.0))
    values = np.asanyarray(image.dataobj.get_unscaled())
    if slope != 1.0 or intercept != 0.0:
        values = to_hu(values, slope, intercept)
    if values.dtype.kind not in "fi" or values.dtype == np.int16:
        return values
    if fits_int16(values):
        return values.astype(np.int16)
    if values.dtype == np.float64 and np.array_equal(values.astype(np.float32), values):
        return values.astype(np.float32)
    return values


def nifti_deny_values(header) -> set[str]:
    """Return the text read from a NIfTI header's string fields and extensions."""
    values: set[str] = set()
    for field in ("descrip", "aux_file", "intent_name", "db_name"):
        if field in header:
            text = bytes(header[field]).split(b"\x00")[0].decode("latin-1").strip()
            if text:
                values.add(text)
    for extension in getattr(header, "extensions", []):
        content = extension.get_content()
        if isinstance(content, (bytes, bytearray)):
            values.update(run.decode("ascii").strip() for run in re.findall(rb"[\x20-\x7e]{4,}", bytes(content)))
    return {value for value in values if len(value) >= MIN_DENY_LENGTH}
