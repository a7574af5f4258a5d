"""Command-line interface for the fetch stage: `ctspine cache list|prune` of the download cache."""
from __future__ import annotations

from pathlib import Path

import click

from ctspine_builder.cli.group import main
from ctspine_builder.errors import CtspineError
from ctspine_builder.fetch.cache import CACHE_ENV, Cache
from ctspine_builder.sizes import format_size

CACHE_DIR_OPTION = click.option(
    "--cache-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
    help=f"Cache folder (default: ${CACHE_ENV}, else the user cache folder of this platform).",
)


@main.group("cache")
def cache_group() -> None:
    """List or prune the download cache shared by all builds."""


@cache_group.command("list")
@CACHE_DIR_OPTION
def list_command(cache_dir: Path | None) -> None:
    """List cached downloads, most recently used first, with their sizes."""
    import datetime

    cache = Cache(cache_dir)
    entries = cache.entries()
    for entry in entries:
        used = datetime.datetime.fromtimestamp(entry.last_used, datetime.timezone.utc).strftime("%Y-%m-%d")
        state = "  (partial download, resumes on the next build)" if entry.partial else ""
        click.echo(f"{format_size(entry.size):>10}  {used}  {entry.algorithm}/{entry.digest}{state}")
    total = sum(entry.size for entry in entries)
    click.echo(f"{len(entries)} entries, {format_size(total)} in {cache.root}")


@cache_group.command("prune")
@CACHE_DIR_OPTION
@click.option("--older-than", "older_than", type=click.FloatRange(min=0), default=None,
              help="Delete entries not used for more than this many days.")
@click.option("--keep", type=click.IntRange(min=0), default=None,
              help="Keep only this many most recently used entries.")
@click.option("--all", "prune_all", is_flag=True, help="Delete every entry.")
def prune_command(cache_dir: Path | None, older_than: float | None, keep: int | None, prune_all: bool) -> None:
    """Delete cached downloads by age or count; a later build downloads them again."""
    if older_than is None and keep is None and not prune_all:
        raise CtspineError("nothing to prune", hint="Give --older-than DAYS, --keep N or --all.")
    cache = Cache(cache_dir)
    removed = cache.prune(older_than_days=older_than, keep=keep)
    freed = sum(entry.size for entry in removed)
    click.echo(f"deleted {len(removed)} entries, freed {format_size(freed)}")
