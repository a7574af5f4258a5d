"""Visual QC stage: one PNG per case (sagittal and coronal CT slices with the mask overlaid) and an HTML gallery.

Each image is reoriented to RAS with nibabel's as_closest_canonical, so the
pictures look the same whatever the file's voxel order. Sagittal views put
the head up and anterior on the left. Coronal views put the head up and
follow the radiological convention, with the patient's right on the image's left.
Pixel aspect ratios come from the voxel spacing. Slices pass through the
mask's centre of mass when the case has labels, and through the middle of
the volume otherwise, so the spine is in view even when it is not centred.
"""
from __future__ import annotations

import html
import logging
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from nibabel.filebasedimages import ImageFileError

from ctspine_builder.errors import CtspineError, PackagingError
from ctspine_builder.fileio import write_bytes_atomic
from ctspine_builder.package.export import LABEL_NAMES, ExportCase, read_cases

logger = logging.getLogger(__name__)

# CT display windows as (width, level) in HU. Bone is the default because the
# masks label vertebrae; soft tissue helps to judge the field of view.
WINDOWS = {"bone": (1500.0, 300.0), "soft": (400.0, 40.0)}
OVERLAY_ALPHA = 0.45
# Space kept on each side of the labelled region, in mm. A full CT is often
# 500 mm wide while the spine is 50 mm: without cropping, the vertebrae of a
# short scan shrink to a few pixels.
CROP_MARGIN_MM = 80.0
AFFINE_TOLERANCE_MM = 1e-3


@dataclass
class QcResult:
    """The PNG written per case id, and the error message of each case that failed."""

    pictures: dict[str, Path] = field(default_factory=dict)
    labels: dict[str, list[int]] = field(default_factory=dict)
    failures: dict[str, str] = field(default_factory=dict)
    index: Path | None = None


def label_colours() -> np.ndarray:
    """Return an RGBA colour per label 0..25 (label 0 transparent), distinct for neighbours."""
    from matplotlib import colormaps

    # tab20 comes in dark/light pairs of one hue: taking the dark ones first
    # and then the light ones gives neighbouring vertebrae different hues.
    # Its grey pair (14, 15) is left out because it vanishes on CT.
    tab20, set1 = colormaps["tab20"], colormaps["Set1"]
    palette = [tab20(i) for i in (0, 2, 4, 6, 8, 10, 12, 16, 18, 1, 3, 5, 7, 9, 11, 13, 17, 19)]
    palette += [set1(i) for i in range(7)]
    colours = np.zeros((len(LABEL_NAMES), 4))
    colours[1:] = palette
    colours[1:, 3] = 1.0
    return colours


def load_ras(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Return (data, voxel sizes in mm, affine) of a NIfTI file reoriented to RAS."""
    import nibabel as nib

    image = nib.as_closest_canonical(nib.load(str(path)))
    return np.asanyarray(image.dataobj), np.asarray(image.header.get_zooms()[:3], dtype=float), image.affine


def slice_centre(mask: np.ndarray | None, shape: tuple[int, ...]) -> tuple[int, int]:
    """Return the (x, y) voxel indices of the sagittal and coronal slices."""
    if mask is not None and np.any(mask > 0):
        x, y, _ = np.argwhere(mask > 0).mean(axis=0)
        return int(round(x)), int(round(y))
    return shape[0] // 2, shape[1] // 2


def sagittal(volume: np.ndarray, x: int) -> np.ndarray:
    """Return the sagittal slice at x as rows = superior to inferior, columns = anterior to posterior."""
    plane = volume[x, :, :].T  # rows z (inferior first), columns y (posterior first)
    return plane[::-1, ::-1]


def coronal(volume: np.ndarray, y: int) -> np.ndarray:
    """Return the coronal slice at y as rows = superior to inferior, columns = patient's right to left."""
    plane = volume[:, y, :].T  # rows z (inferior first), columns x (patient's left first in RAS)
    return plane[::-1, ::-1]


def column_range(mask_plane: np.ndarray | None, column_mm: float) -> slice:
    """Return the columns to show: the labelled columns plus a margin, or all columns."""
    if mask_plane is None or not np.any(mask_plane > 0):
        return slice(None)
    columns = np.flatnonzero(np.any(mask_plane > 0, axis=0))
    margin = int(np.ceil(CROP_MARGIN_MM / column_mm))
    return slice(max(columns[0] - margin, 0), columns[-1] + margin + 1)


def overlay(mask_plane: np.ndarray, colours: np.ndarray) -> np.ndarray:
    """Return an RGBA picture of the labels in a mask slice."""
    rgba = colours[np.clip(mask_plane.astype(np.int64), 0, len(colours) - 1)].copy()
    rgba[..., 3] = np.where(mask_plane > 0, OVERLAY_ALPHA, 0.0)
    return rgba


@dataclass
class Panel:
    """One view of a case: its slices as displayed, pixel aspect (height / width in mm) and side labels."""

    name: str
    index: int
    image: np.ndarray
    mask: np.ndarray | None
    aspect: float
    left: str
    right: str


def make_panels(image: np.ndarray, mask: np.ndarray | None, spacing: np.ndarray) -> list[Panel]:
    """Return the sagittal and coronal panels of RAS volumes with voxel ``spacing`` in mm."""
    x, y = slice_centre(mask, image.shape)
    views = [("sagittal", sagittal, x, spacing[1], "A", "P"), ("coronal", coronal, y, spacing[0], "R", "L")]
    panels = []
    for name, cut, index, column_mm, left, right in views:
        mask_plane = cut(mask, index) if mask is not None else None
        columns = column_range(mask_plane, column_mm)
        image_plane = cut(image, index)[:, columns].astype(np.float32)
        mask_plane = mask_plane[:, columns] if mask_plane is not None else None
        panels.append(Panel(name, index, image_plane, mask_plane, float(spacing[2] / column_mm), left, right))
    return panels


def render_case(case: ExportCase, out_png: Path, window: str = "bone") -> list[int]:
    """Write the QC picture of one case; return the labels present in its mask."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    image, spacing, affine = load_ras(case.image)
    mask = None
    if case.mask is not None:
        mask, _, mask_affine = load_ras(case.mask)
        if mask.shape != image.shape:
            raise PackagingError(f"mask shape {mask.shape} differs from image shape {image.shape}", case_id=case.case_id, path=case.mask)
        if not np.allclose(mask_affine, affine, atol=AFFINE_TOLERANCE_MM):
            raise PackagingError("mask affine differs from the image affine", case_id=case.case_id, path=case.mask,
                                 hint="Pair the mask with `ctspine pair` or rebuild the case.")
    labels = sorted(int(value) for value in np.unique(mask) if value > 0) if mask is not None else []

    panels = make_panels(image, mask, spacing)
    tallest = max(panel.image.shape[0] * panel.aspect / panel.image.shape[1] for panel in panels)
    figure, axes = plt.subplots(1, 2, figsize=(10, float(np.clip(4.2 * tallest + 1.6, 3.0, 12.0))))
    try:
        _draw(figure, axes, panels, labels, case, window, out_png)
    finally:
        plt.close(figure)
    return labels


def _draw(figure, axes, panels: list[Panel], labels: list[int], case: ExportCase, window: str, out_png: Path) -> None:
    from matplotlib.patches import Patch

    width, level = WINDOWS[window]
    colours = label_colours()
    for axis, panel in zip(axes, panels):
        axis.imshow(panel.image, cmap="gray", vmin=level - width / 2, vmax=level + width / 2, aspect=panel.aspect, interpolation="nearest")
        if panel.mask is not None:
            axis.imshow(overlay(panel.mask, colours), aspect=panel.aspect, interpolation="nearest")
        axis.set_title(f"{panel.name} (voxel {panel.index})")
        axis.set_xlabel(f"{panel.left} \u2190 \u2192 {panel.right}")
        axis.set_ylabel("superior (top) / inferior")
        axis.set_xticks([])
        axis.set_yticks([])
    handles = [Patch(color=colours[label], label=LABEL_NAMES[label]) for label in labels]
    if handles:
        figure.legend(handles=handles, loc="center right", title="labels", fontsize=8)
    figure.suptitle(f"{case.case_id}  ({case.split}, {case.subset})  window {window}: W {width:g} L {level:g} HU")
    figure.subplots_adjust(left=0.04, right=0.86 if handles else 0.98, wspace=0.15)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_png.with_name(f".{out_png.name}.partial")
    figure.savefig(tmp, format="png", dpi=100, metadata={"Software": None})
    tmp.replace(out_png)


def write_index(out_dir: Path, cases: list[ExportCase], result: QcResult, window: str) -> Path:
    """Write index.html: one figure per case with its split and labels, failures listed first."""
    width, level = WINDOWS[window]
    rows = [
        "<!DOCTYPE html>", "<html><head><meta charset=\"utf-8\"><title>CTSpine1K visual QC</title>",
        "<style>body{font-family:sans-serif} figure{display:inline-block;margin:8px;width:520px}"
        " img{width:100%} .fail{color:#b00}</style></head><body>",
        f"<h1>Visual QC: {len(result.pictures)} cases</h1>",
        f"<p>CT window {window}: W {width:g} L {level:g} HU. Sagittal: head up, anterior left. "
        "Coronal: head up, patient's right on the left. Each colour is one vertebra.</p>",
    ]
    for case_id, message in sorted(result.failures.items()):
        rows.append(f"<p class=\"fail\">{html.escape(case_id)}: {html.escape(message)}</p>")
    for case in cases:
        if case.case_id not in result.pictures:
            continue
        names = ", ".join(LABEL_NAMES[label] for label in result.labels[case.case_id]) or "no labels"
        src = html.escape(result.pictures[case.case_id].relative_to(out_dir).as_posix())
        rows.append(
            f"<figure><a href=\"{src}\"><img src=\"{src}\" loading=\"lazy\" alt=\"{html.escape(case.case_id)}\"></a>"
            f"<figcaption>{html.escape(case.case_id)} ({html.escape(case.split)}): {html.escape(names)}</figcaption></figure>"
        )
    rows.append("</body></html>\n")
    index = out_dir / "index.html"
    write_bytes_atomic(index, "\n".join(rows).encode("utf-8"))
    return index


def run_qc(root: Path, out_dir: Path, window: str = "bone", case_ids: list[str] | None = None) -> QcResult:
    """Write a QC picture per case of the dataset at ``root`` and an index.html into ``out_dir``.

    A case that cannot be drawn is recorded in the result's failures and
    the others go on.
    """
    if window not in WINDOWS:
        raise PackagingError(f"unknown window {window!r}: expected one of {', '.join(WINDOWS)}")
    cases = read_cases(root)
    if case_ids:
        unknown = sorted(set(case_ids) - {case.case_id for case in cases})
        if unknown:
            raise PackagingError(f"case ids not in the dataset: {', '.join(unknown)}", path=root)
        cases = [case for case in cases if case.case_id in case_ids]
    result = QcResult()
    for case in cases:
        out_png = out_dir / case.split / f"{case.case_id}.png"
        try:
            result.labels[case.case_id] = render_case(case, out_png, window)
            result.pictures[case.case_id] = out_png
            logger.info("QC picture of %s written to %s", case.case_id, out_png)
        except (CtspineError, ImageFileError, OSError, EOFError, ValueError, zlib.error) as error:
            message = error.format() if isinstance(error, CtspineError) else f"{type(error).__name__}: {error}"
            logger.error("QC of case %s failed: %s", case.case_id, message)
            result.failures[case.case_id] = message
    result.index = write_index(out_dir, cases, result, window)
    return result
