"""Tests of how CtspineError messages name the case, the path and the fix."""
from __future__ import annotations

from ctspine_builder.errors import FetchError


def test_message_names_case_file_and_fix(tmp_path) -> None:
    path = tmp_path / "mask.nii.gz"
    path.write_bytes(b"")
    error = FetchError("mask is an HTML page", case_id="HN_P001", path=path, hint="Download it again")
    assert error.format() == f"case HN_P001: mask is an HTML page (file: {path}). Download it again"


def test_message_calls_a_folder_a_folder(tmp_path) -> None:
    error = FetchError("no DICOM files found", path=tmp_path)
    assert error.format() == f"no DICOM files found (folder: {tmp_path})"
