"""Tests of `ctspine predict` where the predict extra is not installed."""
from __future__ import annotations

import sys

import nibabel as nib
import numpy as np
from click.testing import CliRunner

from ctspine_builder.cli import main


def test_predict_without_torch_names_install(tmp_path, monkeypatch) -> None:
    # A None entry in sys.modules makes `import torch` raise ImportError,
    # as on a machine without the extra.
    monkeypatch.setitem(sys.modules, "torch", None)
    image = tmp_path / "ct.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((8, 8, 8), dtype=np.int16), np.eye(4)), image)

    result = CliRunner().invoke(main, ["predict", "-i", str(image), "-o", str(tmp_path / "out"), "--model", "any"])

    assert result.exit_code == 1
    assert "prediction needs torch, which is not installed" in result.output
    assert "pip install -e '.[predict]'" in result.output
    assert "Traceback" not in result.output
    assert not (tmp_path / "out").exists()
