"""Convert stage: one DICOM series or source NIfTI to a clean case NIfTI and sidecar.

`convert_series` finds the series (discover), orders the slices and builds
the affine (geometry), decodes and rescales to HU (decode), and writes the
image through `ctspine_builder.nifti.save_nifti`, so the header carries no
identifier. `convert_nifti` does the same for a NIfTI source. Both return
the identifying values read from the input, for the build's scan of outputs.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ctspine_builder.dicom.decode import VolumeBuilder, check_decodable, decode_all, rescale_parameters, to_hu
from ctspine_builder.dicom.discover import SliceHeader, discover_series, select_series
from ctspine_builder.dicom.geometry import (
    GEOMETRY_MODES,
    check_orientation,
    group_positions,
    simpleitk_grid,
    strict_grid,
)
from ctspine_builder.dicom.sidecar import build_sidecar, collect_deny_values, write_sidecar
from ctspine_builder.errors import ConversionError
from ctspine_builder.nifti import save_nifti

logger = logging.getLogger(__name__)


@dataclass
class ConversionResult:
    """What a conversion wrote and what it read.

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
    deny_values = collect_deny_values(header.dataset for header in slices)
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
    flat = [index for group in groups for index in group]
    decoded = dict(zip(flat, decode_all([slices[index].path for index in flat], workers=workers, case_id=case_id)))
    for group in groups:
        _check_duplicates(slices, group, decoded, case_id=case_id)

    grid = strict_grid(slices, [group[0] for group in groups], case_id=case_id)
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
