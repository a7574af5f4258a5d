"""Command-line interface for the fetch stage: `ctspine lock` pins each TCIA case to one series."""
from __future__ import annotations

import sys
from pathlib import Path

import click

from ctspine_builder.cli.group import main
from ctspine_builder.fetch.http import HttpClient
from ctspine_builder.manifest.loader import load_manifest, resolve_manifest
from ctspine_builder.manifest.lock import default_lock_path, load_lock, save_lock
from ctspine_builder.sources.nbia_client import NBIA_URL_ENV, NbiaClient, nbia_base_url
from ctspine_builder.sources.tcia_lock import build_lock


def split_case_ids(values: tuple[str, ...]) -> list[str] | None:
    """Return case ids given as repeated options and/or comma-separated lists, or None for all."""
    ids = [part.strip() for value in values for part in value.split(",") if part.strip()]
    return ids or None


@main.command("lock")
@click.option("--manifest", "manifest_path", default=None, metavar="PATH",
              help="Manifest file, folder or installed name (default: the installed ctspine1k manifest).")
@click.option("--nbia-url", default=None, metavar="URL",
              help=f"Base URL of the NBIA v4 API (default: ${NBIA_URL_ENV}, else TCIA's public API).")
@click.option("--out", "out_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Lock file to write (default: lock.json beside the manifest).")
@click.option("--cases", "case_values", multiple=True,
              help="Resolve only these case ids (comma-separated or repeated); other entries of an existing "
              "lock file are kept.")
@click.option("--concurrency", type=click.IntRange(1, 16), default=2, show_default=True,
              help="Number of parallel requests to the NBIA API.")
def lock_command(manifest_path, nbia_url, out_path, case_values, concurrency) -> None:
    """Resolve each TCIA case's folder hint to one series and write the lock file.

    The lock records per case the SeriesInstanceUID, StudyInstanceUID,
    ImageCount, FileSize, the series MD5 from getMD5Hierarchy and the
    licence TCIA reports. Builds use lock.json beside the manifest, so a
    rebuild fetches exactly the same series. Exits 1 when any case could not
    be resolved; the lock is still written with the cases that were.
    """
    manifest = load_manifest(resolve_manifest(manifest_path))
    out_path = out_path or default_lock_path(manifest.root)
    case_ids = split_case_ids(case_values)
    previous = load_lock(out_path) if case_ids and out_path.is_file() else None

    with HttpClient() as http:
        client = NbiaClient(nbia_base_url(nbia_url), http)
        result = build_lock(manifest, client, case_ids=case_ids, concurrency=concurrency, previous=previous)
    if result.lock.series or previous is not None:
        save_lock(result.lock, out_path)
        click.echo(f"locked {len(result.lock.series)} series in {out_path}")
    else:
        click.echo(f"no series could be locked; {out_path} was not written", err=True)
    if result.errors:
        for error in result.errors.values():
            click.secho(f"Error: {error.format()}", fg="red", err=True)
        click.echo(f"{len(result.errors)} case(s) could not be resolved", err=True)
        sys.exit(1)
