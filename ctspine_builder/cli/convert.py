"""`ctspine convert`: convert one DICOM series to NIfTI, the same code the build runs."""
from __future__ import annotations

import logging
import os
from pathlib import Path

import click

from ctspine_builder.cli.group import main

logger = logging.getLogger(__name__)

# Two decode processes cut the wall time of a 120-slice JPEG 2000 series by
# about a third on 2 cores (scripts/bench_convert.py); more than 4 is untested.
DEFAULT_WORKERS = min(4, os.cpu_count() or 1)


def default_sidecar_path(out_path: Path) -> Path:
    """Return OUT.json for OUT.nii.gz or OUT.nii: the sidecar beside the image."""
    name = out_path.name
    for suffix in (".nii.gz", ".nii"):
        if name.endswith(suffix):
            return out_path.with_name(name[: -len(suffix)] + ".json")
    return out_path.with_name(name + ".json")


def _nifti_path(ctx: click.Context, param: click.Parameter, value: Path) -> Path:
    """Reject an output name that does not end in .nii.gz or .nii, since the output is always NIfTI."""
    if not value.name.endswith((".nii.gz", ".nii")):
        raise click.BadParameter(
            f"{value} does not end in .nii.gz or .nii; the output is NIfTI, gzip-compressed for .nii.gz",
            ctx=ctx, param=param,
        )
    return value


@main.command()
@click.argument("dicom_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.argument("out", type=click.Path(dir_okay=False, path_type=Path), callback=_nifti_path)
@click.option("--series", "series_uid", metavar="UID", default=None,
              help="SeriesInstanceUID to convert. Default: the only image series in DICOM_DIR; "
                   "with several, the error lists them.")
@click.option("--geometry", type=click.Choice(["strict", "simpleitk"]), default="strict", show_default=True,
              help="strict: sort along the slice normal and reject tilt, missing slices or uneven spacing "
                   "(tolerance 1% of the spacing or 0.01 mm). simpleitk: the grid SimpleITK's ImageSeriesReader "
                   "gives, on which the CTSpine1K masks were drawn.")
@click.option("--sidecar/--no-sidecar", default=True, show_default=True,
              help="Write the allow-listed acquisition fields to OUT.json beside the image.")
@click.option("--workers", type=click.IntRange(min=1), default=DEFAULT_WORKERS,
              help="Processes that decode slices in parallel. Default: the number of CPUs, at most 4.")
def convert(dicom_dir: Path, out: Path, series_uid: str | None, geometry: str, sidecar: bool, workers: int) -> None:
    """Convert the DICOM series in DICOM_DIR to the NIfTI file OUT (.nii.gz or .nii).

    DICOM_DIR is searched recursively (NBIA PatientID/study/series folders
    work); non-DICOM files and localizer images are skipped. Voxels are HU
    (int16 when exact, else float32); spacing is in mm. OUT is written under
    a temporary name and renamed when complete.
    """
    from ctspine_builder.dicom.convert import convert_series

    sidecar_path = default_sidecar_path(out) if sidecar else None
    result = convert_series(dicom_dir, out, series_uid=series_uid, geometry=geometry, sidecar_path=sidecar_path,
                            workers=workers)
    shape = " x ".join(str(size) for size in result.shape)
    click.echo(f"Wrote {result.path}: {shape} voxels, {result.dtype}, {result.slice_count} slices, "
               f"slice spacing {result.sidecar['SpacingBetweenSlices']} mm")
    if sidecar_path is not None:
        click.echo(f"Wrote {sidecar_path}")
