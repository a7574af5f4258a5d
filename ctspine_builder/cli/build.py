"""Command line, build stage: `ctspine build` turns a manifest into a dataset folder."""
from __future__ import annotations

import sys
from pathlib import Path

import click

from ctspine_builder.cli.group import main


def _split_ids(value: str | None) -> list[str] | None:
    if not value:
        return None
    return [part.strip() for part in value.split(",") if part.strip()]


def format_bytes(count: int) -> str:
    """Return a byte count in decimal units (kB, MB, GB), as disk sizes are sold."""
    size = float(count)
    for unit in ("B", "kB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{size:.1f} TB"


def _free_bytes(folder: Path) -> int | None:
    """Return the free space of the file system that will hold ``folder``, or None if unknown."""
    import shutil

    for candidate in (folder, *folder.resolve().parents):
        if candidate.exists():
            return shutil.disk_usage(candidate).free
    return None


def _print_plan(plans, out_dir: Path) -> bool:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="Build plan (nothing is written)")
    for column in ("case", "download", "disk", "what"):
        table.add_column(column)
    for case_plan in plans:
        details = case_plan.error or "; ".join(plan.description for plan in case_plan.sources)
        table.add_row(case_plan.case_id, format_bytes(case_plan.download_bytes), format_bytes(case_plan.disk_bytes), details)
    console = Console()
    console.print(table)
    download = sum(plan.download_bytes for plan in plans)
    disk = sum(plan.disk_bytes for plan in plans)
    failed = [plan for plan in plans if plan.error]
    console.print(f"{len(plans)} case(s): download {format_bytes(download)}, disk space needed about {format_bytes(disk)}")
    free = _free_bytes(out_dir)
    if free is not None:
        console.print(f"Free space where {out_dir} is: {format_bytes(free)}")
        if free < disk:
            console.print("[red]Not enough free space for this build.[/red]")
    if failed:
        console.print(f"[red]{len(failed)} case(s) cannot be planned; see the table[/red]")
    return not failed


def _print_summary(report) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"Build of {report.out_dir}")
    for column in ("case", "status", "reason"):
        table.add_column(column)
    for outcome in report.outcomes:
        style = "red" if outcome.status == "failed" else None
        table.add_row(outcome.case_id, outcome.status, outcome.reason, style=style)
    console = Console(stderr=False)
    console.print(table)
    counts: dict[str, int] = {}
    for outcome in report.outcomes:
        counts[outcome.status] = counts.get(outcome.status, 0) + 1
    console.print(", ".join(f"{count} {status}" for status, count in sorted(counts.items())) or "no cases selected")


@main.command()
@click.option("--manifest", "manifest_path", default=None, metavar="PATH",
              help="Manifest file or folder, or the name of an installed manifest. Default: the shipped ctspine1k manifest.")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Dataset folder to write; a re-run into the same folder rebuilds only changed cases.")
@click.option("--cases", "case_ids", default=None, metavar="ID,...", help="Build only these case ids (comma-separated).")
@click.option("--subset", "subsets", multiple=True, help="Build only cases of this subset (repeatable).")
@click.option("--split", "splits", multiple=True, type=click.Choice(["trainset", "test_public", "test_private"]),
              help="Build only cases of this split (repeatable).")
@click.option("--jobs", default=1, show_default=True, type=click.IntRange(min=1),
              help="Cases converted at once, each in its own process.")
@click.option("--verify/--no-verify", "run_verify", default=True, show_default=True,
              help="Check the finished folder as `ctspine verify` does; this reads every file of the dataset once.")
@click.option("--dry-run", is_flag=True, help="Print what would be fetched, its size and the disk space needed; write nothing.")
@click.option("--position", default="authors", show_default=True, type=click.Choice(["authors", "prone", "supine"]),
              help="CT colonography series to take: the authors' choice, or the prone or supine series.")
@click.option("--cache-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Download cache folder shared by builds. Default: $CTSPINE_CACHE_DIR, else the platform's user cache folder.")
@click.option("--nbia-url", default=None, metavar="URL",
              help="Base URL of the NBIA v4 REST API. Default: $CTSPINE_NBIA_URL, else TCIA's public NBIA API.")
@click.option("--concurrency", default=2, show_default=True, type=click.IntRange(1, 16),
              help="Parallel HTTP downloads per network source.")
@click.option("--lock", "lock_path", type=click.Path(dir_okay=False, exists=True, path_type=Path), default=None,
              help="Lock file that pins each TCIA case to one series. Default: lock.json beside the manifest, if present.")
@click.option("--source", "source_overrides", multiple=True, metavar="ID=[KIND:]LOCATOR",
              help="Take manifest source ID from LOCATOR instead (a folder, file or URL), optionally as another "
              "source kind, e.g. tcia-covid19=/data/covid19 or ctspine1k-masks=masks-folder:/data/masks. Repeatable.")
@click.option("--keep-archive/--no-keep-archive", default=True, show_default=True,
              help="Keep downloaded archives (the 29 GB MSD tar) in the cache so a stopped download resumes; "
              "with --no-keep-archive members are extracted while streaming and a stopped download starts over.")
@click.pass_context
def build(ctx: click.Context, manifest_path, out_dir, case_ids, subsets, splits, jobs, run_verify, dry_run, position,
          cache_dir, nbia_url, concurrency, lock_path, source_overrides, keep_archive) -> None:
    """Build a dataset folder from a manifest: fetch, convert, de-identify, pair and package.

    Exits 1 when any case failed; the other cases are built and packaged.
    """
    from ctspine_builder import pipeline
    from ctspine_builder.manifest.loader import load_manifest, resolve_manifest
    from ctspine_builder.manifest.overrides import apply_overrides

    manifest = apply_overrides(load_manifest(resolve_manifest(manifest_path)), source_overrides)
    options = {
        "position": position,
        "cache_dir": cache_dir,
        "nbia_url": nbia_url,
        "concurrency": concurrency,
        "keep_archive": keep_archive,
        "lock": lock_path,
    }
    filters = {"case_ids": _split_ids(case_ids), "subsets": subsets or None, "splits": splits or None}
    if dry_run:
        plans = pipeline.plan(manifest, options=options, **filters)
        if not _print_plan(plans, out_dir):
            sys.exit(1)
        return

    quiet = ctx.obj.get("verbosity", 0) < 0
    report = pipeline.build(
        manifest, out_dir, options=options, progress=not quiet, jobs=jobs, verify=run_verify, **filters
    )
    _print_summary(report)
    if report.failed:
        click.secho(f"{len(report.failed)} case(s) failed; the dataset in {out_dir} leaves them out.", fg="red", err=True)
    if report.verification is not None and not report.verification.ok:
        click.secho(f"Verification of {out_dir} failed; run `ctspine verify {out_dir}` for the details.", fg="red", err=True)
    if not report.ok:
        sys.exit(1)
