"""Test helper: write a small dataset folder in the build's published layout.

The folder has the files `ctspine build` writes (card, SHA256SUMS, build.json,
LICENSES, sidecars, per-split metadata.jsonl, images and masks), with tiny
synthetic volumes, so publishing, export and QC tests can run without the
build pipeline.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ctspine_builder.fileio import sha256_content, sha256_file
from ctspine_builder.nifti import save_nifti

# 1 mm x 1 mm in-plane, 2 mm slices, in RAS: x right, y anterior, z superior.
AFFINE = np.diag([1.0, 1.0, 2.0, 1.0])
SHAPE = (24, 20, 16)


@dataclass(frozen=True)
class TinyCase:
    """One synthetic case: id, subset, split and a value that makes it unique."""

    case_id: str
    subset: str
    split: str
    seed: int


DEFAULT_CASES = [
    TinyCase("liver_0", "MSD-T10", "trainset", 1),
    TinyCase("liver_1", "MSD-T10", "trainset", 2),
    TinyCase("HN_P001", "HNSCC-3DCT-RT", "test_public", 3),
    TinyCase("volume-covid19-A-0003_ct", "COVID-19", "test_private", 4),
]

SOURCES = {
    "MSD-T10": ("msd", "CC-BY-SA-4.0"),
    "HNSCC-3DCT-RT": ("tcia-hnscc", "CC-BY-4.0"),
    "COVID-19": ("tcia-covid", "CC-BY-4.0"),
}
MASK_SOURCE = ("ctspine1k-masks", "CC-BY-NC-SA-4.0")

CARD_TEMPLATE = """---
license: other
license_name: per-subset-licences
license_link: LICENSES/
pretty_name: CTSpine1K (test build)
task_categories:
- image-segmentation
tags:
- medical
- nifti
size_categories:
- n<1K
configs:
- config_name: default
  data_files:
  - split: trainset
    path: data/trainset/**
  - split: test_public
    path: data/test_public/**
  - split: test_private
    path: data/test_private/**
---

# CTSpine1K (test build)

Synthetic cases written by the tests.
"""


def case_volumes(case: TinyCase) -> tuple[np.ndarray, np.ndarray]:
    """Return a CT-like int16 volume and a mask with vertebrae 18..20 for a case."""
    rng = np.random.default_rng(case.seed)
    image = rng.integers(-1000, -900, size=SHAPE, dtype=np.int16)
    mask = np.zeros(SHAPE, dtype=np.uint8)
    for index, label in enumerate((18, 19, 20)):
        z0 = 2 + index * 4
        image[8:16, 6:12, z0:z0 + 3] = 700 + case.seed
        mask[8:16, 6:12, z0:z0 + 3] = label
    return image, mask


def write_case(root: Path, case: TinyCase) -> dict:
    """Write one case's image, mask and sidecar; return its build.json entry."""
    image, mask = case_volumes(case)
    image_rel = f"data/{case.split}/images/{case.case_id}.nii.gz"
    mask_rel = f"data/{case.split}/masks/{case.case_id}.nii.gz"
    save_nifti(image, AFFINE, root / image_rel)
    save_nifti(mask, AFFINE, root / mask_rel)
    sidecar = {"ConversionSoftware": "ctspine_builder", "ConversionSoftwareVersion": "test", "SliceThickness": 2.0}
    (root / "sidecars").mkdir(parents=True, exist_ok=True)
    (root / "sidecars" / f"{case.case_id}.json").write_text(json.dumps(sidecar, sort_keys=True) + "\n")
    source, licence = SOURCES[case.subset]
    return {
        "case_id": case.case_id,
        "subset": case.subset,
        "split": case.split,
        "position": None,
        "has_mask": True,
        "image_content_sha256": sha256_content(root / image_rel),
        "mask_content_sha256": sha256_content(root / mask_rel),
        "image_source": source,
        "image_license": licence,
        "mask_source": MASK_SOURCE[0],
        "mask_license": MASK_SOURCE[1],
        "image_file": image_rel,
        "mask_file": mask_rel,
    }


def write_sums(root: Path) -> None:
    """Write SHA256SUMS for every file below ``root`` except itself, sorted by path."""
    lines = []
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        rel = path.relative_to(root).as_posix()
        if rel != "SHA256SUMS":
            lines.append(f"{sha256_file(path)}  {rel}\n")
    (root / "SHA256SUMS").write_text("".join(sorted(lines, key=lambda line: line.split("  ", 1)[1])))


def write_dataset(root: Path, cases: list[TinyCase] | None = None, version: str = "1.0.0") -> Path:
    """Write a complete dataset folder with ``cases`` under ``root`` and return it."""
    cases = DEFAULT_CASES if cases is None else cases
    root.mkdir(parents=True, exist_ok=True)
    entries = [write_case(root, case) for case in cases]
    for split in ("trainset", "test_public", "test_private"):
        rows = [
            {
                "image_file_name": f"images/{entry['case_id']}.nii.gz",
                "mask_file_name": f"masks/{entry['case_id']}.nii.gz",
                "case_id": entry["case_id"],
                "subset": entry["subset"],
                "split": split,
            }
            for entry in entries
            if entry["split"] == split
        ]
        folder = root / "data" / split
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "metadata.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    (root / "LICENSES").mkdir(exist_ok=True)
    for source, licence in [*SOURCES.values(), MASK_SOURCE]:
        (root / "LICENSES" / f"{source}.md").write_text(f"# {source}\n\nSPDX: {licence}\n")
    build = {
        "format_version": 1,
        "tool": {"name": "ctspine_builder", "version": "test"},
        "manifest": {"name": "ctspine1k-test", "version": version, "sha256": "0" * 64},
        "lock_sha256": None,
        "cases": sorted(entries, key=lambda entry: entry["case_id"]),
    }
    (root / "build.json").write_text(json.dumps(build, indent=2, sort_keys=True) + "\n")
    (root / "README.md").write_text(CARD_TEMPLATE)
    write_sums(root)
    return root
