"""Convert stage, geometry step: order the slices and build the NIfTI affine.

DICOM positions are in LPS patient coordinates (mm); NIfTI world
coordinates are RAS, so the affine is LPS_TO_RAS @ (LPS affine). Voxel index
(i, j, k) is (column, row, slice): i runs along the row direction cosine
with the column spacing PixelSpacing[1], j along the column cosine with the
row spacing PixelSpacing[0], and k along the slice order.

Two modes:

- ``strict`` sorts by position along the slice normal and rejects what a
  regular grid cannot represent (inconsistent orientation, gantry tilt,
  missing slices, uneven spacing, conflicting slices at one position).
- ``simpleitk`` reproduces SimpleITK's ImageSeriesReader after
  GetGDCMSeriesFileNames (ITK 5.4, GDCM 3): GDCM sorts by position along the
  first file's normal and falls back to file-name order when two positions
  are equal; ITK takes the origin from the first file, the slice spacing as
  |last position - first position| / (slices - 1), and the direction from the
  first file's cosines and their cross product (ForceOrthogonalDirection, on
  by default in SimpleITK), so a tilted series keeps its tilted normal with
  no shear.
"""
from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ctspine_builder.dicom.discover import SliceHeader
from ctspine_builder.errors import ConversionError

logger = logging.getLogger(__name__)

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])

# Tolerances of the strict mode. Header values are decimal strings of at most
# 16 characters, so real series show rounding far below these limits.
ORIENTATION_TOLERANCE = 1e-4  # max difference of any direction cosine between slices
SAME_POSITION_MM = 0.01  # two slices closer than this along every axis share a position
SPACING_TOLERANCE_MM = 0.01  # a gap may differ from the median gap by this much ...
SPACING_TOLERANCE_RELATIVE = 0.01  # ... or by this fraction of it, whichever is larger
STACK_OFFSET_MM = 0.02  # max distance of a slice from the line along the normal through the first

GEOMETRY_MODES = ("strict", "simpleitk")


@dataclass
class Grid:
    """Slice order and world geometry of the output volume."""

    order: list[int]  # indices into the input slice list, in output order
    affine: np.ndarray  # 4x4 voxel-to-RAS affine in mm
    slice_spacing: float  # mm between output slices


def affine_from_lps(row: np.ndarray, column: np.ndarray, normal: np.ndarray,
                    spacing: tuple[float, float, float], origin: np.ndarray) -> np.ndarray:
    """Return the voxel-to-RAS affine for an LPS grid with the given axes and origin."""
    lps = np.eye(4)
    lps[:3, 0] = row * spacing[0]
    lps[:3, 1] = column * spacing[1]
    lps[:3, 2] = normal * spacing[2]
    lps[:3, 3] = origin
    return LPS_TO_RAS @ lps


def normal_distances(slices: Sequence[SliceHeader], normal: np.ndarray) -> np.ndarray:
    """Return each slice's position along ``normal`` in mm."""
    return np.array([float(np.dot(normal, header.position)) for header in slices])


def check_orientation(slices: Sequence[SliceHeader], *, case_id: str | None = None) -> None:
    """Raise ConversionError unless every slice has the first slice's ImageOrientationPatient."""
    first = slices[0].orientation
    for header in slices[1:]:
        difference = float(np.max(np.abs(header.orientation - first)))
        if difference > ORIENTATION_TOLERANCE:
            raise ConversionError(
                f"inconsistent ImageOrientationPatient: {_cosines(header.orientation)} differs from "
                f"{_cosines(first)} by up to {difference:.4g}", case_id=case_id, path=header.path,
                hint="The series mixes slice orientations; convert it with --geometry simpleitk "
                     "or remove the odd slices")


def group_positions(slices: Sequence[SliceHeader]) -> list[list[int]]:
    """Return slice indices sorted along the normal, grouped where positions coincide.

    Ties and groups keep the input order, which discovery makes the sorted
    file path order.
    """
    normal = slices[0].normal
    distances = normal_distances(slices, normal)
    order = sorted(range(len(slices)), key=lambda index: (distances[index], index))
    groups: list[list[int]] = []
    for index in order:
        if groups:
            anchor = slices[groups[-1][0]].position
            if float(np.max(np.abs(slices[index].position - anchor))) <= SAME_POSITION_MM:
                groups[-1].append(index)
                continue
        groups.append([index])
    return groups


def strict_grid(slices: Sequence[SliceHeader], order: list[int], *, case_id: str | None = None) -> Grid:
    """Return the grid of slices already sorted and free of duplicates, or raise.

    Rejects gantry tilt (positions off the line along the normal), missing
    slices and uneven spacing, naming the positions in mm along the normal.
    """
    ordered = [slices[index] for index in order]
    first = ordered[0]
    row, column, normal = first.orientation[:3], first.orientation[3:], first.normal
    distances = normal_distances(ordered, normal)
    _check_stacking(ordered, normal, case_id=case_id)

    if len(ordered) == 1:
        spacing = _single_slice_spacing(first)
    else:
        gaps = np.diff(distances)
        _check_gaps(ordered, distances, gaps, case_id=case_id)
        spacing = float((distances[-1] - distances[0]) / (len(ordered) - 1))

    affine = affine_from_lps(row, column, normal, (first.pixel_spacing[1], first.pixel_spacing[0], spacing),
                             first.position)
    return Grid(order=list(order), affine=affine, slice_spacing=spacing)


def _check_stacking(ordered: Sequence[SliceHeader], normal: np.ndarray, *, case_id: str | None) -> None:
    origin = ordered[0].position
    for header in ordered[1:]:
        step = header.position - origin
        along = float(np.dot(step, normal))
        offset = float(np.linalg.norm(step - along * normal))
        if offset > STACK_OFFSET_MM:
            tilt = float(np.degrees(np.arctan2(offset, abs(along))))
            raise ConversionError(
                f"gantry tilt or sheared stack: the slice at {along:.3f} mm along the normal lies {offset:.3f} mm "
                f"off the line through the first slice (about {tilt:.2f} degrees; at most {STACK_OFFSET_MM} mm "
                f"allowed)", case_id=case_id, path=header.path,
                hint="Use --geometry simpleitk to keep the tilted grid as SimpleITK reads it")


def _check_gaps(ordered: Sequence[SliceHeader], distances: np.ndarray, gaps: np.ndarray,
                *, case_id: str | None) -> None:
    expected = float(np.median(gaps))
    tolerance = max(SPACING_TOLERANCE_MM, SPACING_TOLERANCE_RELATIVE * expected)
    bad = [index for index, gap in enumerate(gaps) if abs(gap - expected) > tolerance]
    if not bad:
        return
    descriptions = []
    for index in bad[:5]:
        gap = float(gaps[index])
        missing = round(gap / expected) - 1 if expected > 0 else 0
        kind = f"{missing} missing slice(s)" if missing >= 1 and abs(gap - (missing + 1) * expected) <= tolerance \
            else "uneven spacing"
        descriptions.append(f"{kind}: gap of {gap:.3f} mm between {distances[index]:.3f} and "
                            f"{distances[index + 1]:.3f} mm")
    more = f" and {len(bad) - 5} more" if len(bad) > 5 else ""
    raise ConversionError(
        f"slice positions along the normal are not evenly spaced (expected {expected:.3f} mm "
        f"+/- {tolerance:.3f} mm): " + "; ".join(descriptions) + more,
        case_id=case_id, path=ordered[bad[0] + 1].path,
        hint="Download the series again if slices are missing, or use --geometry simpleitk to accept "
             "SimpleITK's average spacing")


def _single_slice_spacing(header: SliceHeader) -> float:
    for keyword in ("SpacingBetweenSlices", "SliceThickness"):
        value = header.dataset.get(keyword)
        if value not in (None, "") and float(value) > 0:
            return float(value)
    return 1.0


def simpleitk_grid(slices: Sequence[SliceHeader], paths: Sequence[str]) -> Grid:
    """Return the grid SimpleITK's ImageSeriesReader gives for these files.

    ``paths`` are the file names GDCM would compare when positions tie.
    """
    normal = slices[0].normal
    distances = normal_distances(slices, normal)
    unique = len(set(distances.tolist())) == len(distances)
    if unique and distances.min() != distances.max():
        order = sorted(range(len(slices)), key=lambda index: distances[index])
    else:
        # GDCM gives up sorting by position when two are exactly equal.
        logger.warning("equal slice positions: slices are ordered by file name, as GDCM does")
        order = sorted(range(len(slices)), key=lambda index: paths[index])

    first, last = slices[order[0]], slices[order[-1]]
    span = float(np.linalg.norm(last.position - first.position))
    spacing = span / (len(order) - 1) if len(order) > 1 and span > 0 else 1.0
    # NOTE: for a single slice ITK takes the file's own z spacing, which this uses 1.0 for.
    row, column = first.orientation[:3], first.orientation[3:]
    affine = affine_from_lps(row, column, first.normal, (first.pixel_spacing[1], first.pixel_spacing[0], spacing),
                             first.position)
    return Grid(order=order, affine=affine, slice_spacing=spacing)


def _cosines(values: np.ndarray) -> str:
    return "[" + ", ".join(f"{value:.5g}" for value in values) + "]"
