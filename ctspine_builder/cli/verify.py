"""Verify stage command: `ctspine verify DIR`, a table per case and a summary."""
from __future__ import annotations

import sys
from pathlib import Path

import click

from ctspine_builder.cli.group import main
from ctspine_builder.pairing import DEFAULT_TOLERANCE_MM
from ctspine_builder.verify import CHECKS, CaseReport, VerifyReport, deny_values_from_dicom, verify_dataset

HEADINGS = {"files": "files", "sums": "SHA256SUMS", "hashes": "hashes", "geometry": "geometry",
            "labels": "labels", "phi": "PHI", "licence": "licence"}


@main.command()
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
@click.option("--manifest", "manifest_path", type=click.Path(exists=True, path_type=Path), default=None,
              help="Manifest (file or folder) that lists the expected cases and pinned content hashes "
                   "(default: read the cases from build.json and data/*/metadata.jsonl).")
@click.option("--report", "report_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write the per-case results as JSON to this file (default: no file).")
@click.option("--dicom", "dicom_dirs", multiple=True, type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Folder of source DICOM files whose identifying values (names, ids, dates, UIDs, institution, "
                   "station, serial number) must appear in no output. Repeat for several folders (default: none).")
@click.option("--tolerance-mm", type=click.FloatRange(min=0.0), default=DEFAULT_TOLERANCE_MM, show_default=True,
              help="Largest distance in mm allowed between mask and image voxel centres.")
def verify(directory: Path, manifest_path: Path | None, report_path: Path | None, dicom_dirs: tuple[Path, ...],
           tolerance_mm: float) -> None:
    """Check a dataset folder written by `ctspine build`.

    Checks that every expected file exists and SHA256SUMS matches. Content
    hashes must match the manifest's pins and build.json. Each mask must be
    uint8 on its image's grid with labels 0..25. No output may carry a date,
    time, UID or header text, and each source needs its licence file. Exits
    with 1 when any check fails.
    """
    deny_values: set[str] = set()
    for folder in dicom_dirs:
        deny_values |= deny_values_from_dicom(folder)
    report = verify_dataset(directory, manifest_path, deny_values=deny_values, tolerance_mm=tolerance_mm)
    echo_table(report)
    echo_problems(report)
    if report_path is not None:
        report.write_json(report_path)
        click.echo(f"Report written to {report_path}")
    failed = len(report.failed_cases)
    summary = f"{len(report.cases)} cases checked, {failed} failed"
    summary += "" if report.dataset.ok else "; dataset-level files failed"
    if report.ok:
        click.secho(f"OK: {summary}.", fg="green")
        return
    click.secho(f"FAIL: {summary}.", fg="red", err=True)
    sys.exit(1)


def _row(report: CaseReport) -> list[str]:
    return [report.case_id, report.split] + ["ok" if report.checks[name].ok else "FAIL" for name in CHECKS]


def echo_table(report: VerifyReport) -> None:
    """Print one row per case, and a row for the dataset-level files, in aligned columns."""
    header = ["case id", "split"] + [HEADINGS[name] for name in CHECKS]
    rows = [_row(case) for case in report.cases] + [_row(report.dataset)]
    widths = [max(len(row[index]) for row in [header, *rows]) for index in range(len(header))]
    for row in [header, *rows]:
        click.echo("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())


def echo_problems(report: VerifyReport) -> None:
    """Print each problem under its case and check."""
    for case in [*report.cases, report.dataset]:
        for name in CHECKS:
            for message in case.checks[name].messages:
                click.echo(f"{case.case_id} [{HEADINGS[name]}]: {message}", err=True)
    for note in report.notes:
        click.echo(f"Note: {note}")
