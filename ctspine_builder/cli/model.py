"""Predict stage commands: `ctspine model install` and `ctspine model list`."""
from __future__ import annotations

from pathlib import Path

import click

from ctspine_builder.cli.group import main


@main.group()
def model() -> None:
    """Install nnU-Net v1 models into the model cache and list them.

    The cache is CTSPINE_MODEL_DIR when set, else the user cache folder.
    """


@model.command("install")
@click.argument("source")
@click.option("--name", default=None, help="Name to install under [default: the Task folder, zip or Hub repo name].")
@click.option("--pin", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None, help="JSON pin file or manifest with the SHA-256 each model file must have.")
@click.option("--overwrite", is_flag=True, help="Replace an installed model of the same name.")
def install(source: str, name: str | None, pin: Path | None, overwrite: bool) -> None:
    """Copy SOURCE (a trainer folder, a zip of it or hf://ORG/NAME@REV) into the cache.

    The model's pickles and checkpoint are loaded safely before it is
    installed, and the SHA-256 of each file is recorded. Every later use of
    the model checks those hashes.
    """
    from ctspine_builder.predict.inference import nnunet_output
    from ctspine_builder.predict.model_cache import install_model
    from ctspine_builder.predict.model_store import read_pin

    with nnunet_output():
        installed = install_model(source, name=name, pin=read_pin(pin) if pin else None, overwrite=overwrite)
    click.echo(f"Installed model {installed.name} from {installed.source} at {installed.path}")
    for file_name, digest in sorted(installed.hashes.items()):
        click.echo(f"  {digest}  {file_name}")


@model.command("list")
def list_command() -> None:
    """Show the installed models with their paths and file hashes."""
    from ctspine_builder.predict.model_cache import list_models
    from ctspine_builder.predict.model_store import model_cache_dir

    models = list_models()
    if not models:
        click.echo(f"No models installed in {model_cache_dir()}.")
        return
    for installed in models:
        click.echo(f"{installed.name}  ({installed.source})  {installed.path}")
        for file_name, digest in sorted(installed.hashes.items()):
            click.echo(f"  {digest}  {file_name}")
