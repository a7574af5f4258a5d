"""`ctspine publish`: release a verified dataset folder on the Hugging Face Hub."""
from __future__ import annotations

from pathlib import Path

import click

from ctspine_builder.cli.group import main
from ctspine_builder.publish import dry_run as plan_dry_run
from ctspine_builder.publish import publish_release
from ctspine_builder.publish.hub import DEFAULT_FILES_PER_COMMIT
from ctspine_builder.publish.plan import ReleasePlan
from ctspine_builder.sizes import format_size


def print_plan(plan: ReleasePlan, repo_id: str) -> None:
    """Print the files a release would upload, with sizes, and the card."""
    click.echo(f"Dry run: would publish {len(plan.files)} files ({format_size(plan.total_bytes)}) to {repo_id} as v{plan.version}:")
    for path, item in sorted(plan.files.items()):
        click.echo(f"  {format_size(item.size):>10}  {path}")
    click.echo("\nDataset card (README.md) as it would be published:\n")
    click.echo(plan.card)
    click.echo("No server was contacted.")


@main.command()
@click.argument("dataset_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--repo", "repo_id", required=True, help="Dataset repo on the Hub, as ORG/NAME; created if missing.")
@click.option("--version", "version", required=True, help="Release version X.Y.Z; the release is tagged vX.Y.Z.")
@click.option("--private", is_flag=True, help="Create the repo as private (only when it does not exist yet). Default: public.")
@click.option("--gated", is_flag=True, help="Gate the repo (automatic approval) and add a terms form to the card, so users accept the terms before download.")
@click.option("--dry-run", is_flag=True, help="List the files and the card that would be published; contact no server.")
@click.option("--files-per-commit", type=click.IntRange(1), default=DEFAULT_FILES_PER_COMMIT, show_default=True, help="Files per commit into the release pull request.")
def publish(dataset_dir: Path, repo_id: str, version: str, private: bool, gated: bool, dry_run: bool, files_per_commit: int) -> None:
    """Publish DATASET_DIR to the Hub as a tagged release.

    Verifies the folder and its licences first. Uploads into a pull request
    titled "Release vX.Y.Z", checks every file against SHA256SUMS, merges it
    and tags the merged commit. Run the same command again to resume an
    interrupted upload. The token comes from HF_TOKEN or `hf auth login`.
    """
    if dry_run:
        print_plan(plan_dry_run(dataset_dir, repo_id, version, gated), repo_id)
        return
    result, plan = publish_release(dataset_dir, repo_id, version, private=private, gated=gated, files_per_commit=files_per_commit)
    click.echo(f"Published {repo_id} {result.tag}: {len(plan.files)} files, {result.uploaded} uploaded, {result.deleted} deleted.")
    click.echo(f"URL: {result.repo_url}/tree/{result.tag}")
    click.echo("Load it with:")
    click.echo("  from datasets import load_dataset")
    click.echo(f"  {result.load_line(repo_id)}")
