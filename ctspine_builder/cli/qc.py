"""`ctspine qc`: pictures of every case with its mask, for a quick look at a built dataset."""
from __future__ import annotations

import sys
from pathlib import Path

import click

from ctspine_builder.cli.group import main
from ctspine_builder.qc import WINDOWS, run_qc


@main.command()
@click.argument("dataset_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Folder for the PNG per case (<split>/<case_id>.png) and index.html.")
@click.option("--window", type=click.Choice(sorted(WINDOWS)), default="bone", show_default=True,
              help="CT window in HU: bone = W 1500 L 300, soft = W 400 L 40.")
@click.option("--case", "case_ids", multiple=True, help="Draw only this case id (repeatable). Default: every case.")
def qc(dataset_dir: Path, out_dir: Path, window: str, case_ids: tuple[str, ...]) -> None:
    """Draw a sagittal and a coronal slice of each case with its mask overlaid.

    The slices pass through the mask's centre of mass (the middle of the
    volume for a case without labels), so the spine is in view.

    One colour per vertebra with a legend, so a flipped or shifted mask shows
    at a glance. Open OUT/index.html for the gallery. Exits 1 when any case
    could not be drawn.
    """
    result = run_qc(dataset_dir, out_dir, window=window, case_ids=list(case_ids) or None)
    click.echo(f"Wrote {len(result.pictures)} QC pictures; open {result.index}")
    for case_id, message in sorted(result.failures.items()):
        click.secho(f"case {case_id}: {message}", fg="red", err=True)
    if result.failures:
        sys.exit(1)
