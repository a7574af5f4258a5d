"""`ctspine export`: nnU-Net raw data and MONAI datalists from a built dataset."""
from __future__ import annotations

from pathlib import Path

import click

from ctspine_builder.cli.group import main
from ctspine_builder.package.export import LINK_MODES, export_monai, export_nnunet

DATASET_DIR = click.Path(exists=True, file_okay=False, path_type=Path)


@main.group()
def export() -> None:
    """Export a built dataset for a training tool."""


@export.command("nnunet")
@click.argument("dataset_dir", type=DATASET_DIR)
@click.argument("out_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--format", "version", type=click.Choice(["v1", "v2"]), default="v1", show_default=True,
              help="nnU-Net version: v1 writes TaskXXX_CTSpine1K, v2 DatasetXXX_CTSpine1K.")
@click.option("--id", "task_id", type=click.IntRange(1, 999), default=56, show_default=True,
              help="nnU-Net task or dataset number (the released model used 56).")
@click.option("--link", type=click.Choice(LINK_MODES), default="auto", show_default=True,
              help="How to place files: auto = hard link, else copy; or force hardlink, symlink or copy.")
def export_nnunet_command(dataset_dir: Path, out_dir: Path, version: str, task_id: int, link: str) -> None:
    """Write nnU-Net's raw layout for DATASET_DIR under OUT_DIR.

    trainset goes to imagesTr/labelsTr, test_public to imagesTs/labelsTs and
    test_private to imagesTs_private/labelsTs_private.
    """
    result = export_nnunet(dataset_dir, out_dir, version=version, task_id=task_id, link=link)
    click.echo(f"Exported {result.cases} cases to {result.target} ({result.summary()}).")


@export.command("monai")
@click.argument("dataset_dir", type=DATASET_DIR)
@click.argument("out_json", type=click.Path(dir_okay=False, path_type=Path))
def export_monai_command(dataset_dir: Path, out_json: Path) -> None:
    """Write a MONAI datalist (training / test / test_private) for DATASET_DIR to OUT_JSON.

    Paths are relative to OUT_JSON's folder and point at the dataset's own
    files, so nothing is copied.
    """
    result = export_monai(dataset_dir, out_json)
    click.echo(f"Wrote a MONAI datalist of {result.cases} cases to {result.target}.")
