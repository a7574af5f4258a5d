"""Package stage: exports of a built dataset for training tools (nnU-Net v1/v2 raw data, MONAI datalists).

Exports link the dataset's files instead of copying them where the file
system allows: a hard link by default (same file system), a symbolic link
when asked, and a copy as the last resort. The split names map as follows:
trainset becomes nnU-Net's training set (imagesTr/labelsTr), test_public
its test set (imagesTs/labelsTs), and test_private stays apart in
imagesTs_private/labelsTs_private, so no tool mixes the hidden test cases
into training or public evaluation by accident.
"""
from __future__ import annotations

import errno
import json
import logging
import os
import shutil
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from ctspine_builder.errors import PackagingError
from ctspine_builder.fileio import write_bytes_atomic
from ctspine_builder.manifest.model import SPLITS

logger = logging.getLogger(__name__)

# Labels as the CTSpine1K authors define them: C1..C7 = 1..7, T1..T12 = 8..19, L1..L6 = 20..25.
LABEL_NAMES = ["background"] + [f"C{i}" for i in range(1, 8)] + [f"T{i}" for i in range(1, 13)] + [f"L{i}" for i in range(1, 7)]
LINK_MODES = ("auto", "hardlink", "symlink", "copy")
# nnU-Net's raw folders per split: (images, labels).
NNUNET_FOLDERS = {
    "trainset": ("imagesTr", "labelsTr"),
    "test_public": ("imagesTs", "labelsTs"),
    "test_private": ("imagesTs_private", "labelsTs_private"),
}


@dataclass(frozen=True)
class ExportCase:
    """One case of the dataset folder: id, split and absolute file paths."""

    case_id: str
    split: str
    subset: str
    image: Path
    mask: Path | None


@dataclass
class ExportResult:
    """Target of an export, its case count and the number of files per placement method."""

    target: Path
    methods: Counter = field(default_factory=Counter)
    cases: int = 0

    def summary(self) -> str:
        """Return e.g. '8 files: 8 hardlink'."""
        parts = ", ".join(f"{count} {method}" for method, count in sorted(self.methods.items()))
        return f"{sum(self.methods.values())} files: {parts or 'none'}"


def read_cases(root: Path) -> list[ExportCase]:
    """Return the cases of a dataset folder from its per-split metadata.jsonl files."""
    cases = []
    for split in SPLITS:
        metadata = root / "data" / split / "metadata.jsonl"
        if not metadata.is_file():
            continue
        for number, line in enumerate(metadata.read_text(encoding="utf-8").splitlines(), start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                image = root / "data" / split / row["image_file_name"]
                mask = root / "data" / split / row["mask_file_name"] if row.get("mask_file_name") else None
                cases.append(ExportCase(row["case_id"], split, row.get("subset", ""), image, mask))
            except (ValueError, KeyError, TypeError) as error:
                raise PackagingError(f"metadata.jsonl line {number} is invalid: {error}", path=metadata) from error
    if not cases:
        raise PackagingError("no cases found: data/<split>/metadata.jsonl is missing or empty", path=root, hint="Pass the folder that `ctspine build` wrote.")
    for case in cases:
        for path in filter(None, (case.image, case.mask)):
            if not path.is_file():
                raise PackagingError("file listed in metadata.jsonl is missing", case_id=case.case_id, path=path, hint="Run `ctspine verify` on the dataset.")
    return cases


def place_file(source: Path, target: Path, mode: str) -> str:
    """Link or copy ``source`` to ``target``; return the method used.

    ``auto`` tries a hard link and copies when the two paths are on different
    file systems or the file system has no hard links. An existing target
    that is already the same file, or has the same bytes, is left alone.
    """
    if target.exists() or target.is_symlink():
        if target.exists() and (os.path.samefile(source, target) or _same_bytes(source, target)):
            return "existing"
        raise PackagingError("export target exists with other content", path=target, hint="Export into an empty folder.")
    target.parent.mkdir(parents=True, exist_ok=True)
    if mode in ("auto", "hardlink"):
        try:
            os.link(source, target)
            return "hardlink"
        except OSError as error:
            if mode == "hardlink" or error.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP, errno.EOPNOTSUPP):
                raise PackagingError(f"hard link failed: {error.strerror}", path=target, hint="Use --link copy or --link symlink.") from error
            logger.info("hard link not possible for %s (%s); copying", target, error.strerror)
    if mode == "symlink":
        target.symlink_to(source.resolve())
        return "symlink"
    tmp = target.with_name(f".{target.name}.partial")
    shutil.copyfile(source, tmp)
    os.replace(tmp, target)
    return "copy"


def _same_bytes(first: Path, second: Path) -> bool:
    import filecmp

    return filecmp.cmp(first, second, shallow=False)


def nnunet_v1_json(cases: list[ExportCase], name: str, release: str) -> dict:
    """Return dataset.json in nnU-Net v1's schema (modality, labels by number, training/test lists)."""
    train = [case for case in cases if case.split == "trainset"]
    public = [case for case in cases if case.split == "test_public"]
    private = [case for case in cases if case.split == "test_private"]
    return {
        "name": name,
        "description": "CTSpine1K vertebra segmentation, exported by ctspine_builder",
        "tensorImageSize": "3D",
        "reference": "Deng et al., CTSpine1K, arXiv:2105.14711",
        "licence": "per source, see LICENSES/ in the dataset folder",
        "release": release,
        "modality": {"0": "CT"},
        "labels": {str(value): label for value, label in enumerate(LABEL_NAMES)},
        "numTraining": len(train),
        "numTest": len(public),
        "training": [{"image": f"./imagesTr/{case.case_id}.nii.gz", "label": f"./labelsTr/{case.case_id}.nii.gz"} for case in train],
        "test": [f"./imagesTs/{case.case_id}.nii.gz" for case in public],
        # Not read by nnU-Net: the hidden test split, kept apart in imagesTs_private.
        "test_private": [f"./imagesTs_private/{case.case_id}.nii.gz" for case in private],
    }


def nnunet_v2_json(cases: list[ExportCase], name: str) -> dict:
    """Return dataset.json in nnU-Net v2's schema (channel_names, labels by name, numTraining, file_ending)."""
    return {
        "name": name,
        "channel_names": {"0": "CT"},
        "labels": {label: value for value, label in enumerate(LABEL_NAMES)},
        "numTraining": sum(1 for case in cases if case.split == "trainset"),
        "file_ending": ".nii.gz",
    }


def export_nnunet(root: Path, out: Path, version: str = "v1", task_id: int = 56, link: str = "auto") -> ExportResult:
    """Write nnU-Net's raw-data layout for the dataset at ``root`` under ``out``.

    v1 writes Task{id:03d}_CTSpine1K, v2 Dataset{id:03d}_CTSpine1K. Images get
    the _0000 channel suffix; masks keep the bare case id.
    """
    if version not in ("v1", "v2"):
        raise PackagingError(f"unknown nnU-Net format {version!r}: expected v1 or v2")
    if not 1 <= task_id <= 999:
        raise PackagingError(f"nnU-Net task id {task_id} is out of range 1..999")
    cases = read_cases(root)
    name = "CTSpine1K"
    target = out / (f"Task{task_id:03d}_{name}" if version == "v1" else f"Dataset{task_id:03d}_{name}")
    result = ExportResult(target, cases=len(cases))
    for case in cases:
        images, labels = NNUNET_FOLDERS[case.split]
        result.methods[place_file(case.image, target / images / f"{case.case_id}_0000.nii.gz", link)] += 1
        if case.mask is not None:
            result.methods[place_file(case.mask, target / labels / f"{case.case_id}.nii.gz", link)] += 1
    for folder in ("imagesTr", "labelsTr", "imagesTs"):
        (target / folder).mkdir(parents=True, exist_ok=True)
    release = _release(root)
    document = nnunet_v1_json(cases, name, release) if version == "v1" else nnunet_v2_json(cases, name)
    write_bytes_atomic(target / "dataset.json", (json.dumps(document, indent=2) + "\n").encode("utf-8"))
    logger.info("exported %d cases to %s (%s)", len(cases), target, result.summary())
    return result


def export_monai(root: Path, out_json: Path) -> ExportResult:
    """Write a MONAI datalist for the dataset at ``root``; paths are relative to the JSON file's folder.

    Keys: "training" (trainset), "test" (test_public) and "test_private".
    MONAI's load_decathlon_datalist reads any of these keys by name and
    resolves relative paths against the datalist's folder by default. The
    datalist points at the dataset's own files, so nothing is copied.
    """
    cases = read_cases(root)
    base = out_json.resolve().parent

    def entry(case: ExportCase) -> dict:
        item = {"image": os.path.relpath(case.image.resolve(), base), "case_id": case.case_id, "subset": case.subset}
        if case.mask is not None:
            item["label"] = os.path.relpath(case.mask.resolve(), base)
        return item

    keys = {"trainset": "training", "test_public": "test", "test_private": "test_private"}
    document = {key: [entry(case) for case in cases if case.split == split] for split, key in keys.items()}
    write_bytes_atomic(out_json, (json.dumps(document, indent=2) + "\n").encode("utf-8"))
    result = ExportResult(out_json, cases=len(cases))
    result.methods["referenced"] = sum(1 + (case.mask is not None) for case in cases)
    return result


def _release(root: Path) -> str:
    try:
        build = json.loads((root / "build.json").read_text(encoding="utf-8"))
        return str(build.get("manifest", {}).get("version", ""))
    except (OSError, ValueError):
        return ""
