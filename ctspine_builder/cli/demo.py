"""Command line, demo: `ctspine demo` builds and verifies a synthetic dataset with no network."""
from __future__ import annotations

import sys
from pathlib import Path

import click

from ctspine_builder.cli.group import main

LOAD_SNIPPET = """\
from datasets import load_dataset

dataset = load_dataset("{path}")
sample = dataset["trainset"][0]
print(sample["case_id"], sample["image"].shape, sample["mask"].get_fdata().max())"""


@main.command()
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Folder for the demo: sources/ (phantom DICOM, masks, manifest) and dataset/.")
@click.option("--cases", default=3, show_default=True, type=click.IntRange(min=1, max=50),
              help="Number of phantom cases; they are spread over the three splits in turn.")
@click.pass_context
def demo(ctx: click.Context, out_dir: Path, cases: int) -> None:
    """Generate a synthetic spine CT phantom, build it into a dataset and verify it.

    Uses no network. Each case is a 64 x 64 x 40 CT series written as DICOM
    with three labelled vertebrae. The build converts, pairs and packages the
    cases, and then the same checks as `ctspine verify` run on the result.
    """
    from ctspine_builder.demo import write_demo_sources
    from ctspine_builder.manifest.loader import load_manifest
    from ctspine_builder.pipeline import build

    sources = write_demo_sources(out_dir / "sources", cases=cases)
    click.echo(f"Phantom DICOM series, masks and manifest written to {sources.root}")
    manifest = load_manifest(sources.manifest)
    dataset_dir = out_dir / "dataset"
    quiet = ctx.obj.get("verbosity", 0) < 0
    # Verified below against the manifest, which also checks the licences.
    report = build(manifest, dataset_dir, progress=not quiet, verify=False)
    for outcome in report.outcomes:
        click.echo(f"  {outcome.case_id}: {outcome.status}" + (f" ({outcome.reason})" if outcome.reason else ""))
    if not report.ok:
        click.secho(f"{len(report.failed)} demo case(s) failed to build.", fg="red", err=True)
        sys.exit(1)

    from ctspine_builder.verify import verify_dataset

    verification = verify_dataset(dataset_dir, manifest=manifest)
    if not verification.ok:
        click.secho(f"Verification of {dataset_dir} failed; run `ctspine verify {dataset_dir}` for the details.",
                    fg="red", err=True)
        sys.exit(1)
    click.echo(f"Dataset built and verified: {dataset_dir}")
    click.echo(f"Check it again with: ctspine verify {dataset_dir} --manifest {sources.manifest}")
    click.echo("Load it in Python with:\n")
    click.echo(LOAD_SNIPPET.format(path=dataset_dir.resolve()))
