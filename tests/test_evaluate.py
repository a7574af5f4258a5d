"""Tests for `ctspine evaluate`: Dice by hand on small arrays, both NaN rules, reports."""
from __future__ import annotations

import json
import math
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from click.testing import CliRunner

from ctspine_builder.cli import main
from ctspine_builder.errors import CtspineError
from ctspine_builder.predict.evaluate import dice_scores, parse_labels, vertebra_name


def hand_pair() -> tuple[np.ndarray, np.ndarray]:
    """4x4x4 label maps with known overlaps.

    Label 1: reference 8 voxels, prediction 8 voxels, 4 shared -> Dice 0.5.
    Label 2: only predicted (4 voxels).
    Label 3: in neither.
    Label 4: only in the reference (2 voxels) -> Dice 0.
    Label 5: identical 1 voxel -> Dice 1.
    """
    ref = np.zeros((4, 4, 4), np.uint8)
    pred = np.zeros((4, 4, 4), np.uint8)
    ref[0, 0:2, 0:4] = 1
    pred[0, 1:3, 0:4] = 1
    pred[3, 0, 0:4] = 2
    ref[2, 3, 0:2] = 4
    ref[3, 3, 3] = 5
    pred[3, 3, 3] = 5
    return pred, ref


def test_dice_by_hand_ctspine_rule() -> None:
    pred, ref = hand_pair()
    scores = dice_scores(pred, ref, [1, 2, 3, 4, 5], "ctspine")
    assert scores[1] == 0.5
    assert math.isnan(scores[2])
    assert math.isnan(scores[3])
    assert scores[4] == 0.0
    assert scores[5] == 1.0


def test_dice_by_hand_nnunet_rule() -> None:
    pred, ref = hand_pair()
    scores = dice_scores(pred, ref, [1, 2, 3, 4, 5], "nnunet")
    assert scores[1] == 0.5
    assert scores[2] == 0.0
    assert math.isnan(scores[3])
    assert scores[4] == 0.0
    assert scores[5] == 1.0


def test_dice_unknown_rule_rejected() -> None:
    pred, ref = hand_pair()
    with pytest.raises(CtspineError, match="unknown NaN rule 'other'"):
        dice_scores(pred, ref, [1], "other")


def test_parse_labels_ranges() -> None:
    assert parse_labels("1-3,7,20-21") == [1, 2, 3, 7, 20, 21]
    assert parse_labels("1-25") == list(range(1, 26))


@pytest.mark.parametrize("text", ["a-b", "0-3", "5-2", ""])
def test_parse_labels_invalid(text: str) -> None:
    with pytest.raises(CtspineError, match="invalid label"):
        parse_labels(text)


def test_parse_labels_beyond_l6_rejected() -> None:
    with pytest.raises(CtspineError, match=r"label 30 in '20-30' is outside the CTSpine1K labels 1..25"):
        parse_labels("1,20-30")


def test_vertebra_names() -> None:
    assert [vertebra_name(label) for label in (1, 7, 8, 19, 20, 25)] == ["C1", "C7", "T1", "T12", "L1", "L6"]


def save(array: np.ndarray, path: Path, affine: np.ndarray | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(array, np.eye(4) if affine is None else affine), path)
    return path


def write_dataset(root: Path, cases: dict[str, tuple[str, str, np.ndarray]]) -> Path:
    """Write the masks and metadata.jsonl of a built dataset folder."""
    rows: dict[str, list[str]] = {}
    for case_id, (subset, split, mask) in cases.items():
        save(mask, root / "data" / split / "masks" / f"{case_id}.nii.gz")
        row = {"image_file_name": f"images/{case_id}.nii.gz", "mask_file_name": f"masks/{case_id}.nii.gz", "case_id": case_id, "subset": subset, "split": split}
        rows.setdefault(split, []).append(json.dumps(row))
    for split, lines in rows.items():
        (root / "data" / split / "metadata.jsonl").write_text("\n".join(lines) + "\n")
    return root


def evaluate(*args: str):
    return CliRunner().invoke(main, ["evaluate", *args])


def test_evaluate_dataset_folder_per_subset(tmp_path: Path) -> None:
    pred, ref = hand_pair()
    write_dataset(tmp_path / "dataset", {"liver_0": ("MSD-T10", "trainset", ref), "HN_P001": ("HNSCC-3DCT-RT", "test_public", ref)})
    save(pred, tmp_path / "pred" / "liver_0.nii.gz")
    save(ref, tmp_path / "pred" / "HN_P001.nii.gz")
    result = evaluate("--pred", str(tmp_path / "pred"), "--ref", str(tmp_path / "dataset"), "--labels", "1-5", "--out", str(tmp_path / "report.json"))
    assert result.exit_code == 0, result.output
    assert "case liver_0: predicted but absent from the reference: C2" in result.output
    assert "MSD-T10" in result.output
    assert "HNSCC-3DCT-RT" in result.output

    report = json.loads((tmp_path / "report.json").read_text())
    by_case = {case["case_id"]: case for case in report["cases"]}
    assert by_case["liver_0"]["dice"] == {"C1": 0.5, "C2": None, "C3": None, "C4": 0.0, "C5": 1.0}
    assert by_case["HN_P001"]["dice"]["C1"] == 1.0
    assert report["per_vertebra"]["C1"] == {"mean": 0.75, "median": 0.75, "count": 2}
    assert report["per_subset"]["MSD-T10"] == {"mean": 0.5, "median": 0.5, "count": 3, "cases": 1}
    assert report["per_subset"]["HNSCC-3DCT-RT"]["mean"] == 1.0


def test_evaluate_nnunet_rule_report(tmp_path: Path) -> None:
    pred, ref = hand_pair()
    save(ref, tmp_path / "ref" / "case1_seg.nii.gz")
    save(pred, tmp_path / "pred" / "case1.nii.gz")
    result = evaluate("--pred", str(tmp_path / "pred"), "--ref", str(tmp_path / "ref"), "--labels", "1-5", "--nan-rule", "nnunet", "--out", str(tmp_path / "report.json"))
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["nan_rule"] == "nnunet"
    assert report["cases"][0]["dice"] == {"C1": 0.5, "C2": 0.0, "C3": None, "C4": 0.0, "C5": 1.0}
    assert report["cases"][0]["subset"] == "all"


def test_evaluate_geometry_mismatch_names_case(tmp_path: Path) -> None:
    pred, ref = hand_pair()
    save(ref, tmp_path / "ref" / "good.nii.gz")
    save(pred, tmp_path / "pred" / "good.nii.gz")
    save(ref, tmp_path / "ref" / "shifted.nii.gz")
    shifted = np.eye(4)
    shifted[0, 3] = 5.0
    save(pred, tmp_path / "pred" / "shifted.nii.gz", shifted)
    save(ref, tmp_path / "ref" / "small.nii.gz")
    save(pred[:3], tmp_path / "pred" / "small.nii.gz")
    result = evaluate("--pred", str(tmp_path / "pred"), "--ref", str(tmp_path / "ref"), "--labels", "1-5", "--out", str(tmp_path / "report.json"))
    assert result.exit_code == 1
    assert "case shifted: prediction affine differs from the reference affine" in result.output
    assert "case small: prediction shape (3, 4, 4) differs from reference shape (4, 4, 4)" in result.output
    report = json.loads((tmp_path / "report.json").read_text())
    assert [case["case_id"] for case in report["cases"]] == ["good"]
    assert sorted(report["failed"]) == ["shifted", "small"]


def test_evaluate_lists_unmatched_cases(tmp_path: Path) -> None:
    pred, ref = hand_pair()
    save(ref, tmp_path / "ref" / "a.nii.gz")
    save(ref, tmp_path / "ref" / "b.nii.gz")
    save(pred, tmp_path / "pred" / "a.nii.gz")
    save(pred, tmp_path / "pred" / "c.nii.gz")
    result = evaluate("--pred", str(tmp_path / "pred"), "--ref", str(tmp_path / "ref"))
    assert result.exit_code == 0, result.output
    assert "1 reference case(s) have no prediction: b" in result.output
    assert "1 prediction(s) have no reference: c" in result.output


def test_evaluate_empty_prediction_folder(tmp_path: Path) -> None:
    (tmp_path / "pred").mkdir()
    (tmp_path / "ref").mkdir()
    result = evaluate("--pred", str(tmp_path / "pred"), "--ref", str(tmp_path / "ref"))
    assert result.exit_code == 1
    assert "no .nii.gz predictions found" in result.output


def test_evaluate_dataset_folder_as_prediction(tmp_path: Path) -> None:
    dataset = tmp_path / "dataset"
    (dataset / "data" / "trainset").mkdir(parents=True)
    (dataset / "data" / "trainset" / "metadata.jsonl").write_text("")
    (tmp_path / "ref").mkdir()
    result = evaluate("--pred", str(dataset), "--ref", str(tmp_path / "ref"))
    assert result.exit_code == 1
    assert "is a reference (--ref), not a prediction" in result.output


def test_evaluate_unreadable_prediction(tmp_path: Path) -> None:
    _, ref = hand_pair()
    save(ref, tmp_path / "ref" / "a.nii.gz")
    (tmp_path / "pred").mkdir()
    (tmp_path / "pred" / "a.nii.gz").write_bytes(b"garbage")
    result = evaluate("--pred", str(tmp_path / "pred"), "--ref", str(tmp_path / "ref"))
    assert result.exit_code == 1
    assert "case a: cannot read label map" in result.output
