"""Command-line interface for the manifest stage: `ctspine manifest validate|stats`."""
from __future__ import annotations

import json
import sys

import click

from ctspine_builder.cli.group import main
from ctspine_builder.manifest.loader import ManifestValidationError, load_manifest, resolve_manifest
from ctspine_builder.manifest.stats import format_stats_table, manifest_stats

@main.group("manifest")
def manifest_group() -> None:
    """Check manifests and count their cases."""


@manifest_group.command("validate")
@click.argument("path")
def validate_command(path: str) -> None:
    """Check a manifest and list every problem as FILE: RECORD: FIELD: message.

    PATH is a manifest .json file, a manifest folder (manifest.json plus
    cases*.jsonl files) or the name of an installed manifest (ctspine1k).
    Exits 0 when the manifest is valid and 1 when it has any problem.
    """
    manifest_path = resolve_manifest(path)
    try:
        manifest = load_manifest(manifest_path)
    except ManifestValidationError as error:
        for problem in error.problems:
            click.echo(problem.format())
        click.echo(f"{len(error.problems)} problem(s) found in {manifest_path}", err=True)
        sys.exit(1)

    click.echo(f"valid: {len(manifest.cases)} cases, {len(manifest.sources)} sources")


@manifest_group.command("stats")
@click.argument("path", required=False)
@click.option("--json", "as_json", is_flag=True, help="Print the counts as one JSON object instead of a table.")
def stats_command(path: str | None, as_json: bool) -> None:
    """Print a manifest's case counts per subset, per split and per subset and split.

    PATH is a manifest .json file, a manifest folder or the name of an
    installed manifest; without PATH, the installed ctspine1k manifest.
    """
    manifest = load_manifest(resolve_manifest(path))
    stats = manifest_stats(manifest)
    if as_json:
        click.echo(json.dumps(stats.to_dict(), indent=2))
        return

    click.echo(
        f"{stats.name} {stats.version}: {stats.cases} cases ({stats.with_mask} with a mask), {stats.sources} sources"
    )
    click.echo()
    click.echo(format_stats_table(stats))
