"""Pair stage command: `ctspine pair IMAGE MASK OUT`."""
from __future__ import annotations

from pathlib import Path

import click

from ctspine_builder.cli.group import main
from ctspine_builder.pairing import DEFAULT_TOLERANCE_MM, pair_mask


@main.command()
@click.argument("image", type=click.Path(path_type=Path))
@click.argument("mask", type=click.Path(path_type=Path))
@click.argument("out", type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--tolerance-mm",
    type=click.FloatRange(min=0.0),
    default=DEFAULT_TOLERANCE_MM,
    show_default=True,
    help="Largest distance in mm allowed between a mask voxel centre and the image voxel it lands on.",
)
@click.option("--case-id", default=None, help="Case id to name in messages (default: none).")
def pair(image: Path, mask: Path, out: Path, tolerance_mm: float, case_id: str | None) -> None:
    """Place MASK on the grid of IMAGE and write it to OUT as uint8.

    The mask is compared with the image in world coordinates. A mask on
    another axis order or flip of the same grid is reoriented; any other
    difference is an error naming both geometries. Labels must lie in 0..25.
    """
    result = pair_mask(image, mask, out, case_id=case_id, tolerance_mm=tolerance_mm)
    action = "reoriented onto" if result.reoriented else "already on"
    labels = ", ".join(f"{label}: {count}" for label, count in sorted(result.label_counts_out.items()) if label)
    click.echo(f"Mask {action} the image grid; wrote {result.path}")
    click.echo(f"Voxels per label: {labels or 'none (background only)'}")
