"""Fixtures shared by the test modules: the real CT series from ../shared."""
from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]

# The shared folder sits beside the checkout (and beside CI's clone of it);
# CTSPINE_SHARED overrides that location.
SHARED_DIR = Path(os.environ.get("CTSPINE_SHARED", REPO_ROOT.parent / "shared"))
SIEMENS_DIR = SHARED_DIR / "data" / "siemens-ct-jpeg2000"


@pytest.fixture(scope="session")
def siemens_dir() -> Path:
    """The real Siemens JPEG 2000 CT series with its vertebra mask."""
    if not (SIEMENS_DIR / "dicom").is_dir():
        pytest.skip(f"real CT series not found at {SIEMENS_DIR}; set CTSPINE_SHARED to the shared folder")
    return SIEMENS_DIR


@pytest.fixture(scope="session")
def siemens_dicom(siemens_dir: Path) -> Path:
    """Folder of the 20 DICOM slices of the real series."""
    return siemens_dir / "dicom"


@pytest.fixture(scope="session")
def siemens_mask(siemens_dir: Path) -> Path:
    """The real series' vertebra mask on the dcm2niix grid."""
    return siemens_dir / "vertebrae_mask.nii.gz"


@pytest.fixture(autouse=True)
def reset_process_state():
    """Undo per-process state between tests: CLI logging set-up and unreachable hosts."""
    yield
    # A port that was closed in one test may be a live test server in the next.
    from ctspine_builder.fetch.http import forget_unreachable_hosts

    forget_unreachable_hosts()
    package_logger = logging.getLogger("ctspine_builder")
    package_logger.handlers.clear()
    package_logger.setLevel(logging.NOTSET)
