"""Small dataset folders in the `ctspine build` layout, written directly for tests of the verify stage.

`write_dataset` writes images, masks, sidecars, metadata.jsonl per split,
LICENSES, build.json, a minimal README.md card and SHA256SUMS, and a
manifest that pins the content hashes. Tests then tamper with one file.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ctspine_builder.fileio import sha256_content, sha256_file
from ctspine_builder.nifti import save_nifti

SHAPE = (16, 12, 8)
# RAS+ affine of an LPS grid (SimpleITK's identity direction), 0.8 x 0.8 x 2.5 mm voxels.
AFFINE = np.array(
    [
        [-0.8, 0.0, 0.0, 40.0],
        [0.0, -0.8, 0.0, 30.0],
        [0.0, 0.0, 2.5, -100.0],
        [0.0, 0.0, 0.0, 1.0],
    ]
)
IMAGE_SOURCE = "phantom-ct"
MASK_SOURCE = "phantom-masks"
LICENSE = "CC0-1.0"


@dataclass
class SpecCase:
    """One case to write: id, split and whether it has a mask."""

    case_id: str
    split: str
    has_mask: bool = True


DEFAULT_CASES = (
    SpecCase("case_a", "trainset"),
    SpecCase("1.3.6.1.4.1.9328.50.4.0001", "test_public"),
    SpecCase("case_c", "test_private"),
)


@dataclass
class WrittenDataset:
    """Paths of a written dataset folder and its manifest."""

    root: Path
    manifest: Path
    cases: tuple[SpecCase, ...]


def ct_volume(seed: int) -> np.ndarray:
    """Return an int16 CT-like volume: air, a soft-tissue body and a bright vertebral column."""
    rng = np.random.default_rng(seed)
    data = np.full(SHAPE, -1000, dtype=np.int16)
    data[2:14, 1:11, :] = 40
    data[6:11, 5:9, :] = 700
    return data + rng.integers(-5, 6, SHAPE).astype(np.int16)


def mask_volume() -> np.ndarray:
    """Return the uint8 vertebra mask of `ct_volume`: T11 (18) below T12 (19)."""
    data = np.zeros(SHAPE, dtype=np.uint8)
    data[6:11, 5:9, 0:4] = 18
    data[6:11, 5:9, 4:8] = 19
    return data


def write_dataset(root: Path, cases: tuple[SpecCase, ...] = DEFAULT_CASES) -> WrittenDataset:
    """Write a complete, valid dataset folder at ``root`` and its manifest beside it."""
    root.mkdir(parents=True, exist_ok=True)
    entries = []
    for index, case in enumerate(cases):
        image_file = f"data/{case.split}/images/{case.case_id}.nii.gz"
        save_nifti(ct_volume(index), AFFINE, root / image_file)
        mask_file = None
        if case.has_mask:
            mask_file = f"data/{case.split}/masks/{case.case_id}.nii.gz"
            save_nifti(mask_volume(), AFFINE, root / mask_file)
        sidecar_file = f"sidecars/{case.case_id}.json"
        sidecar = {"CaseId": case.case_id, "ConversionSoftware": "ctspine_builder", "ConversionSoftwareVersion": "0.1.0",
                   "Manufacturer": "SIEMENS", "KVP": 120, "PixelSpacing": [0.8, 0.8], "SliceThickness": 2.5}
        _write_json(root / sidecar_file, sidecar)
        entries.append(_entry(root, case, image_file, mask_file, sidecar_file))

    _write_metadata(root, cases)
    _write_licenses(root)
    _write_json(root / "build.json", {
        "format_version": 1,
        "tool": {"name": "ctspine_builder", "version": "0.1.0"},
        "manifest": {"name": "test-dataset", "version": "1.0.0", "sha256": "0" * 64},
        "lock_sha256": None,
        "cases": entries,
    })
    (root / "README.md").write_text(
        "---\nlicense: cc0-1.0\npretty_name: Test dataset\n---\n\n# Test dataset\n\nSynthetic cases for tests.\n"
    )
    write_sums(root)
    manifest = root.parent / f"{root.name}-manifest.json"
    _write_json(manifest, _manifest(entries))
    return WrittenDataset(root, manifest, tuple(cases))


def write_sums(root: Path) -> None:
    """Write SHA256SUMS for every file under ``root`` except itself, sorted by path."""
    lines = []
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        relative = path.relative_to(root).as_posix()
        if relative != "SHA256SUMS":
            lines.append(f"{sha256_file(path)}  {relative}\n")
    (root / "SHA256SUMS").write_text("".join(sorted(lines, key=lambda line: line.split("  ", 1)[1])))


def _entry(root: Path, case: SpecCase, image_file: str, mask_file: str | None, sidecar_file: str) -> dict:
    return {
        "case_id": case.case_id,
        "subset": "PHANTOM",
        "split": case.split,
        "position": None,
        "has_mask": case.has_mask,
        "image_content_sha256": sha256_content(root / image_file),
        "mask_content_sha256": sha256_content(root / mask_file) if mask_file else None,
        "image_source": IMAGE_SOURCE,
        "image_license": LICENSE,
        "mask_source": MASK_SOURCE if mask_file else None,
        "mask_license": LICENSE if mask_file else None,
        "inputs_sha256": "1" * 64,
        "image_file": image_file,
        "mask_file": mask_file,
        "sidecar_file": sidecar_file,
    }


def _write_metadata(root: Path, cases: tuple[SpecCase, ...]) -> None:
    for split in sorted({case.split for case in cases}):
        rows = []
        for case in sorted((c for c in cases if c.split == split), key=lambda c: c.case_id):
            row = {"case_id": case.case_id, "image_file_name": f"images/{case.case_id}.nii.gz",
                   "mask_file_name": f"masks/{case.case_id}.nii.gz" if case.has_mask else None,
                   "split": split, "subset": "PHANTOM"}
            rows.append(json.dumps(row, sort_keys=True) + "\n")
        path = root / "data" / split / "metadata.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(rows))


def _write_licenses(root: Path) -> None:
    for source in (IMAGE_SOURCE, MASK_SOURCE):
        path = root / "LICENSES" / f"{source}.md"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"# {source}\n\n- Licence: Creative Commons Zero v1.0 Universal (SPDX: `{LICENSE}`)\n")


def _manifest(entries: list[dict]) -> dict:
    return {
        "format": 1,
        "dataset": {"name": "test-dataset", "version": "1.0.0", "citation": "Synthetic test data."},
        "sources": [
            {"id": IMAGE_SOURCE, "kind": "local-nifti", "license": LICENSE, "locator": "images", "citation": "Synthetic."},
            {"id": MASK_SOURCE, "kind": "local-nifti", "license": LICENSE, "locator": "masks", "citation": "Synthetic."},
        ],
        "cases": [_manifest_case(entry) for entry in entries],
    }


def _manifest_case(entry: dict) -> dict:
    case = {
        "case_id": entry["case_id"],
        "subset": entry["subset"],
        "split": entry["split"],
        "image": {"source": IMAGE_SOURCE, "locator": f"{entry['case_id']}.nii.gz"},
        "mask": None,
        "image_sha256": entry["image_content_sha256"],
    }
    if entry["mask_file"]:
        case["mask"] = {"source": MASK_SOURCE, "locator": f"{entry['case_id']}.nii.gz"}
        case["mask_sha256"] = entry["mask_content_sha256"]
    return case


def _write_json(path: Path, value: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(value, indent=2, sort_keys=True) + "\n")
