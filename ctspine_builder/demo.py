"""Demo stage: a synthetic spine CT phantom, its DICOM series, mask and manifest.

`write_demo_sources` writes, for each case, an axial CT series with pydicom
(so the demo goes through the DICOM converter), a vertebra mask as NIfTI on
the same world grid, and a manifest that names both as local sources under
CC0-1.0. Everything is seeded, so the same arguments give the same files.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ctspine_builder.manifest.model import SPLITS

logger = logging.getLogger(__name__)

# Phantom grid: 64 x 64 pixels of 2.0 mm, 40 slices 2.5 mm apart, so three
# vertebrae of 10 slices (25 mm) with 3-slice discs fit with a margin.
COLUMNS = 64
ROWS = 64
SLICES = 40
PIXEL_SPACING_MM = 2.0
SLICE_SPACING_MM = 2.5
VERTEBRA_SLICES = 10
DISC_SLICES = 3
MARGIN_SLICES = 2

# Hounsfield units: air, soft tissue, intervertebral disc, vertebral bone.
HU_AIR = -1000
HU_BODY = 0
HU_DISC = 80
HU_BONE = 700

# Stored values are unsigned 12-bit with the usual CT rescale, HU = stored - 1024.
RESCALE_INTERCEPT = -1024

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
DEMO_LICENSE = "CC0-1.0"
DEMO_SEED = 20260101

# The first vertebra label of each case, top to bottom: T11 (18), T12 (19), L1 (20).
FIRST_LABELS = (18, 19, 20)


@dataclass
class DemoSources:
    """Paths of the demo's inputs: root folder, manifest file and case ids."""

    root: Path
    manifest: Path
    case_ids: list[str]


def phantom_volume(case_index: int, seed: int = DEMO_SEED) -> tuple[np.ndarray, np.ndarray]:
    """Return (HU, labels) arrays of one phantom, indexed [column, row, slice].

    Slice index grows towards the head, so the top vertebra gets the
    smallest label, as in the anatomy (T11 above T12 above L1).
    """
    rng = np.random.default_rng([seed, case_index])
    cols, rows = np.meshgrid(np.arange(COLUMNS), np.arange(ROWS), indexing="ij")
    centre_col = COLUMNS / 2 + rng.uniform(-2, 2)
    centre_row = ROWS / 2 + rng.uniform(-2, 2)
    body = ((cols - centre_col) / 28) ** 2 + ((rows - centre_row) / 20) ** 2 <= 1
    # The vertebral body sits behind the body's centre (rows grow towards the back).
    spine_row = centre_row + 8
    radius = 7 + rng.uniform(-0.5, 0.5)
    disk = (cols - centre_col) ** 2 + (rows - spine_row) ** 2 <= radius**2
    process = (np.abs(cols - centre_col) <= 1.5) & (rows > spine_row + radius - 1) & (rows <= spine_row + radius + 6)

    hu = np.full((COLUMNS, ROWS, SLICES), HU_AIR, dtype=np.float32)
    labels = np.zeros((COLUMNS, ROWS, SLICES), dtype=np.uint8)
    hu[body] = HU_BODY
    first_label = FIRST_LABELS[case_index % len(FIRST_LABELS)]
    for order in range(3):
        top = SLICES - MARGIN_SLICES - order * (VERTEBRA_SLICES + DISC_SLICES)
        bottom = top - VERTEBRA_SLICES
        for k in range(bottom, top):
            hu[disk, k] = HU_BONE
            hu[process, k] = HU_BONE
            labels[disk | process, k] = first_label + order
        if order < 2:
            hu[disk, bottom - DISC_SLICES:bottom] = HU_DISC
    hu += rng.normal(0, 10, hu.shape).astype(np.float32)
    hu = np.clip(np.round(hu), HU_AIR - 24, 3071)
    return hu.astype(np.int16), labels


def grid_origin_lps(case_index: int) -> np.ndarray:
    """Return the LPS position (mm) of the first voxel of the first slice."""
    return np.array([-COLUMNS * PIXEL_SPACING_MM / 2, -ROWS * PIXEL_SPACING_MM / 2, -100.0 - 5.0 * case_index])


def ras_affine(origin_lps: np.ndarray) -> np.ndarray:
    """Return the NIfTI (RAS) affine of the phantom grid indexed [column, row, slice]."""
    affine = np.diag([-PIXEL_SPACING_MM, -PIXEL_SPACING_MM, SLICE_SPACING_MM, 1.0])
    affine[:3, 3] = [-origin_lps[0], -origin_lps[1], origin_lps[2]]
    return affine


def write_series(folder: Path, case_id: str, hu: np.ndarray, origin_lps: np.ndarray) -> None:
    """Write ``hu`` as an axial CT series, one uncompressed DICOM file per slice."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    folder.mkdir(parents=True, exist_ok=True)

    def uid(*parts: str) -> str:
        return generate_uid(entropy_srcs=["ctspine-demo", case_id, *parts])

    study_uid, series_uid, frame_uid = uid("study"), uid("series"), uid("frame")
    for k in range(hu.shape[2]):
        sop_uid = uid("instance", str(k))
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CT_IMAGE_STORAGE
        meta.MediaStorageSOPInstanceUID = sop_uid
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID = CT_IMAGE_STORAGE, sop_uid
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study_uid, series_uid, frame_uid
        ds.Modality, ds.PatientID, ds.PatientName = "CT", case_id, ""
        ds.Manufacturer, ds.SeriesNumber, ds.InstanceNumber = "ctspine_builder phantom", 1, k + 1
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.ImagePositionPatient = [float(origin_lps[0]), float(origin_lps[1]), float(origin_lps[2] + k * SLICE_SPACING_MM)]
        ds.PixelSpacing = [PIXEL_SPACING_MM, PIXEL_SPACING_MM]
        ds.SliceThickness = SLICE_SPACING_MM
        ds.KVP = 120
        ds.PatientPosition = "HFS"
        ds.Rows, ds.Columns = ROWS, COLUMNS
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
        ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = RESCALE_INTERCEPT, 1, "HU"
        # DICOM pixel data is row-major [row, column]; the volume is [column, row].
        stored = (hu[:, :, k].T.astype(np.int32) - RESCALE_INTERCEPT).astype(np.uint16)
        ds.PixelData = stored.tobytes()
        ds.save_as(folder / f"slice_{k:03d}.dcm", enforce_file_format=True)


def demo_manifest(case_ids: list[str]) -> dict:
    """Return the demo manifest (format v1) for the given case ids."""
    sources = [
        {"id": "phantom-dicom", "kind": "local-dicom", "license": DEMO_LICENSE, "locator": "dicom",
         "citation": "Synthetic CT phantom generated by ctspine_builder's demo."},
        {"id": "phantom-masks", "kind": "local-nifti", "license": DEMO_LICENSE, "locator": "masks",
         "citation": "Synthetic vertebra masks generated by ctspine_builder's demo."},
    ]
    cases = [
        {
            "case_id": case_id,
            "subset": "PHANTOM",
            "split": SPLITS[index % len(SPLITS)],
            "image": {"source": "phantom-dicom", "locator": case_id},
            "mask": {"source": "phantom-masks", "locator": f"{case_id}.nii.gz"},
        }
        for index, case_id in enumerate(case_ids)
    ]
    return {
        "format": 1,
        "dataset": {
            "name": "ctspine-demo",
            "version": "1.0.0",
            "pretty_name": "CTSpine1K builder demo (synthetic phantom)",
            "citation": "Synthetic data generated by ctspine_builder; no citation is required.",
        },
        "sources": sources,
        "cases": cases,
    }


def write_demo_sources(root: str | Path, cases: int = 3, seed: int = DEMO_SEED) -> DemoSources:
    """Write ``cases`` phantom cases (DICOM series + NIfTI mask) and their manifest under ``root``."""
    from ctspine_builder.nifti import save_nifti

    root = Path(root)
    case_ids = [f"phantom_{index:03d}" for index in range(cases)]
    for index, case_id in enumerate(case_ids):
        hu, labels = phantom_volume(index, seed)
        origin = grid_origin_lps(index)
        write_series(root / "dicom" / case_id, case_id, hu, origin)
        save_nifti(labels, ras_affine(origin), root / "masks" / f"{case_id}.nii.gz")
        logger.info("demo case %s written", case_id)
    manifest_path = root / "manifest.json"
    manifest_path.write_text(json.dumps(demo_manifest(case_ids), indent=2) + "\n", encoding="utf-8")
    return DemoSources(root=root, manifest=manifest_path, case_ids=case_ids)
