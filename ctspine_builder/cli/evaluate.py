"""Evaluate stage command: `ctspine evaluate --pred DIR --ref DIR`."""
from __future__ import annotations

import sys
from pathlib import Path

import click

from ctspine_builder.cli.group import main


def _format(value: float | None) -> str:
    return "   n/a" if value is None else f"{value:6.3f}"


@main.command()
@click.option("--pred", "pred_dir", required=True, type=click.Path(path_type=Path), help="Folder of predicted label maps <case>.nii.gz.")
@click.option("--ref", "ref_dir", required=True, type=click.Path(path_type=Path), help="Folder of reference masks, or a dataset folder built by `ctspine build`.")
@click.option("--labels", "labels_text", default="1-25", show_default=True, help="Labels to score, as ranges and lists (1-25, 1,3,20-25).")
@click.option("--nan-rule", type=click.Choice(["ctspine", "nnunet"]), default="ctspine", show_default=True,
              help="ctspine: NaN where the reference lacks a label (the CTSpine1K authors' rule); nnunet: NaN only where both lack it.")
@click.option("--out", "out_path", type=click.Path(dir_okay=False, path_type=Path), default=None, help="Write the full report (per case and label) to this JSON file.")
def evaluate(pred_dir: Path, ref_dir: Path, labels_text: str, nan_rule: str, out_path: Path | None) -> None:
    """Compute Dice per vertebra per case and print mean and median per vertebra and per subset.

    Cases are matched by file name (a dataset folder's case ids). Subsets come
    from a dataset folder's metadata, else every case is in subset "all".
    Exits 1 when a case could not be scored.
    """
    from ctspine_builder.predict.evaluate import evaluate_folders, parse_labels, summarise_labels, summarise_subsets, vertebra_name, write_report

    labels = parse_labels(labels_text)
    report = evaluate_folders(pred_dir, ref_dir, labels, nan_rule)

    click.echo(f"Dice over {len(report.cases)} case(s), NaN rule {nan_rule}")
    click.echo("vertebra    mean  median  cases")
    for name, stats in summarise_labels(report.cases, labels).items():
        click.echo(f"{name:<8} {_format(stats['mean'])}  {_format(stats['median'])}  {stats['count']:5d}")
    click.echo("subset            mean  median  cases")
    for subset, stats in summarise_subsets(report.cases, labels).items():
        click.echo(f"{subset:<15} {_format(stats['mean'])}  {_format(stats['median'])}  {stats['cases']:5d}")

    for case in report.cases:
        if case.predicted_not_in_reference:
            names = ", ".join(vertebra_name(label) for label in case.predicted_not_in_reference)
            click.echo(f"case {case.case_id}: predicted but absent from the reference: {names}")
    if report.missing_predictions:
        click.echo(f"{len(report.missing_predictions)} reference case(s) have no prediction: {', '.join(report.missing_predictions)}", err=True)
    if report.missing_references:
        click.echo(f"{len(report.missing_references)} prediction(s) have no reference: {', '.join(report.missing_references)}", err=True)
    if out_path is not None:
        write_report(report, out_path)
        click.echo(f"Wrote report to {out_path}")
    for message in report.failed.values():
        click.echo(f"failed: {message}", err=True)
    if report.failed:
        sys.exit(1)
