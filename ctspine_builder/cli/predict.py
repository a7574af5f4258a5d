"""Predict stage command: `ctspine predict -i INPUT -o OUTPUT --model MODEL`."""
from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import click

from ctspine_builder.cli.group import main


@main.command()
@click.option("-i", "--input", "input_path", required=True, type=click.Path(path_type=Path), help="A .nii.gz CT, a folder of them, or one DICOM series folder.")
@click.option("-o", "--output", required=True, type=click.Path(path_type=Path), help="Output folder for <name>.nii.gz label maps, or a .nii.gz file for a single input.")
@click.option("--model", "model_spec", required=True, help="nnU-Net v1 trainer folder, a zip of it, hf://ORG/NAME@REV, or the name of an installed model.")
@click.option("--pin", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None, help="JSON pin file or manifest with the SHA-256 each model file must have.")
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default=None, help="Where to run the network [default: cuda if available, else cpu].")
@click.option("--step-size", type=click.FloatRange(min=0.05, max=1.0), default=0.5, show_default=True, help="Sliding-window step as a fraction of the patch size; smaller is slower and smoother.")
@click.option("--tta/--no-tta", default=True, show_default=True, help="Test-time augmentation: average 8 mirrored predictions per patch, as nnU-Net does by default.")
@click.option("--threads", type=click.IntRange(min=1), default=None, help="CPU threads for torch [default: torch's choice].")
@click.option("--overwrite", is_flag=True, help="Predict again where an output exists, and replace outputs made with other settings.")
@click.pass_context
def predict(ctx: click.Context, input_path: Path, output: Path, model_spec: str, pin: Path | None, device: str | None,
            step_size: float, tta: bool, threads: int | None, overwrite: bool) -> None:
    """Segment vertebrae C1..L6 (labels 1..25) with a pretrained nnU-Net v1 model.

    Each output is a uint8 label map on its input's grid (same shape and
    affine). A DICOM series is converted with the project's converter first,
    and its output is on that NIfTI's grid. Inputs whose output exists are
    skipped, so an interrupted run resumes. The model, its file hashes and
    the options are recorded in predict_settings.json beside the outputs.
    """
    from tqdm import tqdm

    from ctspine_builder.predict.inference import PredictOptions, default_device, require_predict_extra
    from ctspine_builder.predict.model_cache import open_model
    from ctspine_builder.predict.model_store import read_pin
    from ctspine_builder.predict.runner import collect_cases, run_predict

    require_predict_extra()
    cases = collect_cases(input_path, output)
    options = PredictOptions(device=device or default_device(), step_size=step_size, tta=tta, threads=threads)
    quiet = (ctx.obj or {}).get("verbosity", 0) < 0
    with tempfile.TemporaryDirectory(prefix="ctspine-model-") as work:
        model = open_model(model_spec, Path(work), read_pin(pin) if pin else None)
        with tqdm(total=len(cases), unit="case", desc="predict", disable=quiet, file=sys.stderr) as bar:
            summary = run_predict(cases, model, options, overwrite=overwrite, progress=lambda case: bar.update(1))

    click.echo(f"Wrote {len(summary.written)} label map(s), skipped {len(summary.skipped)} with existing output, {len(summary.failed)} failed.")
    for name, message in summary.failed.items():
        click.echo(f"  failed: {message}", err=True)
    if summary.failed:
        sys.exit(1)
