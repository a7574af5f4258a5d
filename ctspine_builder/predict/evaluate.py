"""Evaluate stage: Dice per vertebra per case, summarised per vertebra and per subset.

Two rules decide when a label scores NaN. The CTSpine1K authors' evaluation
("ctspine") gives NaN whenever the reference lacks the label. nnU-Net v1's
``evaluate_folder`` ("nnunet") gives NaN only when both prediction and
reference lack it, so a label predicted where the reference has none scores 0.
"""
from __future__ import annotations

import json
import logging
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np

from ctspine_builder.errors import CtspineError
from ctspine_builder.fileio import write_bytes_atomic

logger = logging.getLogger(__name__)

VERTEBRA_NAMES = tuple([f"C{i}" for i in range(1, 8)] + [f"T{i}" for i in range(1, 13)] + [f"L{i}" for i in range(1, 7)])
NAN_RULES = ("ctspine", "nnunet")
DEFAULT_SUBSET = "all"
# World positions of the two grids may differ by this much (mm) from float rounding.
AFFINE_TOLERANCE_MM = 1e-3


def vertebra_name(label: int) -> str:
    """Return the vertebra name for a CTSpine1K label (1 -> C1, 25 -> L6)."""
    return VERTEBRA_NAMES[label - 1] if 1 <= label <= len(VERTEBRA_NAMES) else str(label)


def parse_labels(text: str) -> list[int]:
    """Parse a label list such as ``1-25`` or ``1,3,20-25`` into sorted labels."""
    labels: set[int] = set()
    for part in text.split(","):
        match = re.fullmatch(r"\s*(\d+)\s*(?:-\s*(\d+)\s*)?", part)
        if not match:
            raise CtspineError(f"invalid label list {text!r}", hint="Write labels as 1-25 or 1,3,20-25")
        first, last = int(match.group(1)), int(match.group(2) or match.group(1))
        if first < 1 or last < first:
            raise CtspineError(f"invalid label range {part.strip()!r}", hint="Labels start at 1 and ranges go upwards")
        if last > len(VERTEBRA_NAMES):
            raise CtspineError(
                f"label {last} in {part.strip()!r} is outside the CTSpine1K labels 1..{len(VERTEBRA_NAMES)}",
                hint="Score labels between 1 (C1) and 25 (L6)",
            )
        labels.update(range(first, last + 1))
    return sorted(labels)


def dice_scores(pred: np.ndarray, ref: np.ndarray, labels: list[int], nan_rule: str = "ctspine") -> dict[int, float]:
    """Return the Dice coefficient of each label between two label maps.

    NaN follows ``nan_rule``: "ctspine" gives NaN whenever ``ref`` lacks the
    label; "nnunet" only when both lack it.
    """
    if nan_rule not in NAN_RULES:
        raise CtspineError(f"unknown NaN rule {nan_rule!r}; use one of {', '.join(NAN_RULES)}")
    size = int(max(pred.max(initial=0), ref.max(initial=0), max(labels, default=0))) + 1
    # One pass over the volumes: the joint histogram of (reference, prediction) labels.
    codes = ref.astype(np.int64).ravel() * size + pred.ravel()
    joint = np.bincount(codes, minlength=size * size).reshape(size, size)
    scores = {}
    for label in labels:
        overlap = int(joint[label, label])
        in_ref = int(joint[label, :].sum())
        in_pred = int(joint[:, label].sum())
        if in_ref == 0 and (nan_rule == "ctspine" or in_pred == 0):
            scores[label] = math.nan
        else:
            scores[label] = 2.0 * overlap / (in_ref + in_pred)
    return scores


@dataclass
class CaseScore:
    """Dice per label of one case, and labels predicted that its reference lacks."""

    case_id: str
    subset: str
    dice: dict[int, float]
    predicted_not_in_reference: list[int] = field(default_factory=list)


def _strip(name: str) -> str:
    for suffix in (".nii.gz", ".nii"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def find_references(ref_dir: Path) -> dict[str, tuple[Path, str]]:
    """Map case id to (mask path, subset) for a mask folder or a built dataset folder.

    A built dataset (``data/<split>/metadata.jsonl``) gives each case's
    subset; a plain folder of ``<case>.nii.gz`` (or ``<case>_seg.nii.gz``)
    puts every case in subset "all".
    """
    if not ref_dir.is_dir():
        raise CtspineError("reference folder not found", path=ref_dir)
    references: dict[str, tuple[Path, str]] = {}
    metadata_files = sorted(ref_dir.glob("data/*/metadata.jsonl"))
    for metadata in metadata_files:
        for number, line in enumerate(metadata.read_text(encoding="utf-8").splitlines(), start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                mask_name, case_id = row["mask_file_name"], row["case_id"]
            except (ValueError, KeyError, TypeError) as error:
                raise CtspineError(f"invalid metadata row {number}: {error}", path=metadata) from error
            if mask_name:
                references[case_id] = (metadata.parent / mask_name, str(row.get("subset") or DEFAULT_SUBSET))
    if metadata_files:
        return references
    for path in sorted(ref_dir.iterdir()):
        if path.is_file() and path.name.endswith((".nii.gz", ".nii")):
            name = _strip(path.name)
            references[name[:-4] if name.endswith("_seg") else name] = (path, DEFAULT_SUBSET)
    return references


def _load_labels(path: Path, case_id: str) -> nib.Nifti1Image:
    try:
        image = nib.load(path)
        image.get_data_dtype()
    except (nib.filebasedimages.ImageFileError, OSError, EOFError, ValueError) as error:
        raise CtspineError(f"cannot read label map: {error}", case_id=case_id, path=path) from error
    return image


def _as_labels(image: nib.Nifti1Image) -> np.ndarray:
    data = np.asanyarray(image.dataobj)
    if not np.issubdtype(data.dtype, np.integer):
        data = np.rint(data)
    return data.astype(np.int32, copy=False)


def score_case(case_id: str, pred_path: Path, ref_path: Path, subset: str, labels: list[int], nan_rule: str) -> CaseScore:
    """Score one case; raise CtspineError naming it when the two grids differ."""
    pred_image, ref_image = _load_labels(pred_path, case_id), _load_labels(ref_path, case_id)
    if pred_image.shape != ref_image.shape:
        raise CtspineError(f"prediction shape {pred_image.shape} differs from reference shape {ref_image.shape}", case_id=case_id, path=pred_path, hint="Predict on the reference's image grid")
    if not np.allclose(pred_image.affine, ref_image.affine, atol=AFFINE_TOLERANCE_MM):
        raise CtspineError("prediction affine differs from the reference affine", case_id=case_id, path=pred_path, hint="Predict on the reference's image grid, or place the mask on it with `ctspine pair`")
    pred = _as_labels(pred_image)
    ref = _as_labels(ref_image)
    if pred.min(initial=0) < 0 or ref.min(initial=0) < 0:
        raise CtspineError("label map has negative labels", case_id=case_id, path=pred_path if pred.min() < 0 else ref_path)
    dice = dice_scores(pred, ref, labels, nan_rule)
    in_ref = set(np.unique(ref).tolist())
    extra = sorted(int(label) for label in np.unique(pred) if label != 0 and label not in in_ref)
    return CaseScore(case_id, subset, dice, extra)


@dataclass
class EvaluationReport:
    """Scores of every case plus what could not be scored."""

    labels: list[int]
    nan_rule: str
    cases: list[CaseScore] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    missing_predictions: list[str] = field(default_factory=list)
    missing_references: list[str] = field(default_factory=list)


def evaluate_folders(pred_dir: Path, ref_dir: Path, labels: list[int], nan_rule: str = "ctspine") -> EvaluationReport:
    """Score every prediction in ``pred_dir`` against its reference in ``ref_dir``.

    A case that fails (unreadable file, other grid) is recorded in
    ``failed`` and the others go on.
    """
    if not pred_dir.is_dir():
        raise CtspineError("prediction folder not found", path=pred_dir)
    references = find_references(ref_dir)
    predictions = {_strip(path.name): path for path in sorted(pred_dir.iterdir()) if path.is_file() and path.name.endswith((".nii.gz", ".nii"))}
    if not predictions:
        hint = "Give the folder that `ctspine predict -o` wrote, with one <case_id>.nii.gz per case"
        if any(pred_dir.glob("data/*/metadata.jsonl")):
            hint += "; a dataset folder built by `ctspine build` is a reference (--ref), not a prediction"
        raise CtspineError("no .nii.gz predictions found", path=pred_dir, hint=hint)
    report = EvaluationReport(labels, nan_rule)
    report.missing_references = sorted(set(predictions) - set(references))
    report.missing_predictions = sorted(set(references) - set(predictions))
    for case_id in sorted(set(predictions) & set(references)):
        ref_path, subset = references[case_id]
        try:
            report.cases.append(score_case(case_id, predictions[case_id], ref_path, subset, labels, nan_rule))
        except CtspineError as error:
            logger.error("%s", error.format())
            report.failed[case_id] = error.format()
    return report


def _stats(values: list[float]) -> dict:
    finite = [value for value in values if not math.isnan(value)]
    if not finite:
        return {"mean": None, "median": None, "count": 0}
    return {"mean": float(np.mean(finite)), "median": float(np.median(finite)), "count": len(finite)}


def summarise_labels(cases: list[CaseScore], labels: list[int]) -> dict[str, dict]:
    """Return mean, median and count of finite Dice per vertebra name."""
    return {vertebra_name(label): _stats([case.dice[label] for case in cases]) for label in labels}


def summarise_subsets(cases: list[CaseScore], labels: list[int]) -> dict[str, dict]:
    """Return, per subset, the statistics over all finite per-case per-label Dice values."""
    subsets: dict[str, dict] = {}
    for subset in sorted({case.subset for case in cases}):
        members = [case for case in cases if case.subset == subset]
        summary = _stats([case.dice[label] for case in members for label in labels])
        subsets[subset] = {**summary, "cases": len(members)}
    return subsets


def _json_number(value: float) -> float | None:
    return None if math.isnan(value) else round(value, 6)


def report_document(report: EvaluationReport) -> dict:
    """Return the JSON form of the report; NaN is written as null."""
    return {
        "nan_rule": report.nan_rule,
        "labels": report.labels,
        "per_vertebra": summarise_labels(report.cases, report.labels),
        "per_subset": summarise_subsets(report.cases, report.labels),
        "cases": [
            {
                "case_id": case.case_id,
                "subset": case.subset,
                "dice": {vertebra_name(label): _json_number(score) for label, score in sorted(case.dice.items())},
                "predicted_not_in_reference": [vertebra_name(label) for label in case.predicted_not_in_reference],
            }
            for case in report.cases
        ],
        "failed": report.failed,
        "missing_predictions": report.missing_predictions,
        "missing_references": report.missing_references,
    }


def write_report(report: EvaluationReport, path: Path) -> None:
    """Write the report as JSON atomically."""
    text = json.dumps(report_document(report), indent=2, sort_keys=False, allow_nan=False) + "\n"
    write_bytes_atomic(path, text.encode("utf-8"))
