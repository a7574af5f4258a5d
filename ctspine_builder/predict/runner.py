"""Predict stage: find input volumes, run the model on each, write label maps and settings.

Inputs are NIfTI files, a folder of them, or one DICOM series folder (which
the project's converter turns into NIfTI first). Each label map is written
through ``save_nifti`` on its input's grid, so a stopped run leaves only
complete files, and a rerun skips inputs whose output exists.
"""
from __future__ import annotations

import json
import logging
import tempfile
import zlib
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np

from ctspine_builder import TOOL_NAME, __version__
from ctspine_builder.errors import ConversionError, CtspineError, ModelError
from ctspine_builder.fileio import write_bytes_atomic
from ctspine_builder.nifti import save_nifti
from ctspine_builder.predict.inference import PredictOptions, Predictor
from ctspine_builder.predict.model_store import ModelFolder

logger = logging.getLogger(__name__)

SETTINGS_FILE = "predict_settings.json"
NIFTI_SUFFIXES = (".nii.gz", ".nii")
MAX_LABEL = 25
# A subsample this large decides quickly that a CT is not a label mask.
MASK_CHECK_SAMPLE = 100_000


@dataclass
class PredictCase:
    """One input volume and where its label map goes."""

    name: str
    source: Path
    output: Path
    is_dicom: bool = False


@dataclass
class PredictSummary:
    """Counts of a predict run and the error message of each failed case."""

    written: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)


def _strip_suffix(name: str) -> str:
    for suffix in NIFTI_SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def collect_cases(input_path: Path, output: Path) -> list[PredictCase]:
    """List the cases for ``input_path``; ``output`` is a folder unless it ends in .nii.gz.

    Raises CtspineError when the input is missing or contains no usable file.
    """
    if not input_path.exists():
        raise CtspineError("input not found", path=input_path, hint="Pass a .nii.gz file, a folder of them or a DICOM series folder")
    single_output = output.name.endswith(NIFTI_SUFFIXES)
    if input_path.is_file():
        if not input_path.name.endswith(NIFTI_SUFFIXES):
            raise CtspineError("input file is not NIfTI (.nii or .nii.gz)", path=input_path, hint="Pass a DICOM series as its folder")
        name = _strip_suffix(input_path.name)
        target = output if single_output else output / f"{name}.nii.gz"
        return [PredictCase(name, input_path, target)]

    niftis = sorted(path for path in input_path.iterdir() if path.is_file() and path.name.endswith(NIFTI_SUFFIXES))
    if single_output and len(niftis) != 1 and niftis:
        raise CtspineError(f"{len(niftis)} input volumes need an output folder, not a file", path=output)
    if niftis:
        return [PredictCase(_strip_suffix(path.name), path, output if single_output else output / f"{_strip_suffix(path.name)}.nii.gz") for path in niftis]
    if not any(path.is_file() for path in input_path.rglob("*")):
        raise CtspineError("input folder is empty", path=input_path)
    name = input_path.resolve().name
    return [PredictCase(name, input_path, output if single_output else output / f"{name}.nii.gz", is_dicom=True)]


def load_volume(case: PredictCase, work_dir: Path) -> nib.Nifti1Image:
    """Load a case as a 3-D NIfTI image, converting a DICOM series first.

    Raises CtspineError naming the case for a 4-D image or an image that
    looks like a label mask.
    """
    path = case.source
    if case.is_dicom:
        from ctspine_builder.dicom.convert import convert_series

        path = work_dir / f"{case.name}.nii.gz"
        convert_series(case.source, path, geometry="strict", case_id=case.name)
    try:
        image = nib.load(path)
    except (nib.filebasedimages.ImageFileError, OSError, EOFError, ValueError) as error:
        raise ConversionError(f"cannot read NIfTI: {error}", case_id=case.name, path=case.source, hint="Check that the file is a complete NIfTI image") from error
    if len(image.shape) == 4 and image.shape[3] == 1:
        image = image.slicer[..., 0]
    if len(image.shape) != 3:
        raise CtspineError(f"image has shape {image.shape}; prediction needs one 3-D CT volume", case_id=case.name, path=case.source, hint="Split 4-D series into 3-D volumes first")
    _reject_label_map(image, case)
    return image


def _reject_label_map(image: nib.Nifti1Image, case: PredictCase) -> None:
    """Raise when an integer image holds only a few values in 0..25, as a mask does."""
    if not np.issubdtype(image.get_data_dtype(), np.integer):
        return
    data = np.asanyarray(image.dataobj)
    flat = data.reshape(-1)
    step = max(1, flat.size // MASK_CHECK_SAMPLE)
    if np.unique(flat[::step]).size > MAX_LABEL + 1:
        return
    values = np.unique(flat)
    if values.size <= MAX_LABEL + 1 and values.min() >= 0 and values.max() <= MAX_LABEL:
        raise CtspineError(
            f"input looks like a label mask (integer values {values.min()}..{values.max()}, {values.size} distinct), not a CT",
            case_id=case.name, path=case.source, hint="Pass the CT image; compare masks with `ctspine evaluate`",
        )


def _read_data(image: nib.Nifti1Image, case: PredictCase) -> np.ndarray:
    try:
        return image.get_fdata(dtype=np.float32)
    except (OSError, EOFError, ValueError, zlib.error) as error:
        raise ConversionError(f"cannot read the image data: {error}", case_id=case.name, path=case.source, hint="Check that the file is complete") from error


def settings_record(model: ModelFolder, options: PredictOptions) -> dict:
    """Return what predict_settings.json records: tool, model hashes and options."""
    from importlib.metadata import version

    import torch

    return {
        "tool": {"name": TOOL_NAME, "version": __version__},
        "nnunet_version": version("nnunet"),
        "torch_version": torch.__version__,
        "model": {"name": model.name, "files": dict(sorted(model.hashes.items()))},
        "options": {**asdict(options), "mixed_precision": options.mixed_precision},
    }


def _check_settings(folder: Path, record: dict, overwrite: bool) -> None:
    path = folder / SETTINGS_FILE
    if overwrite or not path.is_file():
        return
    try:
        previous = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        previous = None
    # The thread count changes speed, not the label maps, so a resumed run may use another.
    def comparable(options: object) -> object:
        return {key: value for key, value in options.items() if key != "threads"} if isinstance(options, dict) else options

    same = isinstance(previous, dict) and previous.get("model") == record["model"] and comparable(previous.get("options")) == comparable(record["options"])
    if not same:
        raise ModelError(
            "the output folder contains predictions made with another model or other options",
            path=path, hint="Pass --overwrite to replace them, or choose another output folder",
        )


def run_predict(
    cases: list[PredictCase],
    model: ModelFolder,
    options: PredictOptions,
    overwrite: bool = False,
    progress: Callable[[PredictCase], None] | None = None,
) -> PredictSummary:
    """Predict every case; one failing case is recorded and the others go on.

    Cases whose output exists are skipped unless ``overwrite`` is set.
    ``progress`` is called after each case, skipped ones included.
    """
    summary = PredictSummary()
    record = settings_record(model, options)
    settings_folders = sorted({case.output.parent for case in cases})
    for folder in settings_folders:
        _check_settings(folder, record, overwrite)

    todo = [case for case in cases if overwrite or not case.output.exists()]
    summary.skipped = [case.name for case in cases if case not in todo]
    for case in cases:
        if case not in todo:
            logger.info("case %s: output exists, skipped", case.name)
            if progress is not None:
                progress(case)
    if not todo:
        return summary

    predictor = Predictor(model.path, options)
    try:
        for folder in settings_folders:
            write_bytes_atomic(folder / SETTINGS_FILE, (json.dumps(record, indent=2, sort_keys=True) + "\n").encode())
        for case in todo:
            _predict_case(predictor, case, summary)
            if progress is not None:
                progress(case)
    finally:
        predictor.close()
    return summary


def _predict_case(predictor: Predictor, case: PredictCase, summary: PredictSummary) -> None:
    with tempfile.TemporaryDirectory(prefix="ctspine-input-") as work:
        try:
            image = load_volume(case, Path(work))
            data = _read_data(image, case)
            labels = predictor.predict(data, image.affine)
        except ModelError:
            raise
        except CtspineError as error:
            error.case_id = error.case_id or case.name
            logger.error("%s", error.format())
            summary.failed[case.name] = error.format()
            return
        save_nifti(labels, image.affine, case.output)
    summary.written.append(case.name)
    logger.info("case %s: wrote %s", case.name, case.output)
