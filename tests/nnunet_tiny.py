"""Test helper for the predict stage: build a tiny real nnU-Net v1 model folder.

The folder has the layout of the CTSpine1K authors' release
(``nnUNet/3d_fullres/Task056_VerSe/nnUNetTrainerV2__nnUNetPlansv2.1`` with
``plans.pkl`` and ``all/model_final_checkpoint.model`` + ``.model.pkl``). The
plans are written by hand for a 32^3 patch and two pooling stages. nnU-Net's
own trainer saves the checkpoint with seeded random weights, so the files
contain the same kinds of pickled objects as a released model.
"""
from __future__ import annotations

import contextlib
import io
import pickle
from collections import OrderedDict
from pathlib import Path

import numpy as np

TRAINER_SUBPATH = Path("nnUNet/3d_fullres/Task056_VerSe/nnUNetTrainerV2__nnUNetPlansv2.1")
NUM_FOREGROUND_CLASSES = 25


def tiny_plans(num_classes: int = NUM_FOREGROUND_CLASSES) -> dict:
    """Return nnU-Net v1 3d_fullres plans for a network of a few ten thousand weights."""
    stage = {
        "batch_size": 2,
        "num_pool_per_axis": [2, 2, 2],
        "patch_size": np.array([32, 32, 32]),
        "median_patient_size_in_voxels": np.array([64, 64, 64]),
        "current_spacing": np.array([4.0, 4.0, 4.0]),
        "original_spacing": np.array([1.0, 1.0, 1.0]),
        "do_dummy_2D_data_aug": False,
        "pool_op_kernel_sizes": [[2, 2, 2], [2, 2, 2]],
        "conv_kernel_sizes": [[3, 3, 3], [3, 3, 3], [3, 3, 3]],
    }
    intensity = OrderedDict()
    intensity[0] = {
        "mean": np.float64(250.0),
        "sd": np.float64(300.0),
        "percentile_00_5": np.float64(-1000.0),
        "percentile_99_5": np.float64(1500.0),
        "median": np.float64(200.0),
        "min": np.float64(-1024.0),
        "max": np.float64(3071.0),
    }
    return {
        "num_stages": 1,
        "num_modalities": 1,
        "modalities": {0: "CT"},
        "normalization_schemes": OrderedDict([(0, "CT")]),
        "dataset_properties": {"intensityproperties": intensity},
        "num_classes": num_classes,
        "all_classes": list(range(1, num_classes + 1)),
        "base_num_features": 4,
        "use_mask_for_norm": OrderedDict([(0, False)]),
        "keep_only_largest_region": None,
        "min_region_size_per_class": None,
        "min_size_per_class": None,
        "transpose_forward": [0, 1, 2],
        "transpose_backward": [0, 1, 2],
        "data_identifier": "nnUNetData_plans_v2.1",
        "plans_per_stage": {0: stage},
        "preprocessor_name": "GenericPreprocessor",
        "conv_per_stage": 2,
    }


def build_tiny_model(root: Path, seed: int = 0, num_classes: int = NUM_FOREGROUND_CLASSES) -> Path:
    """Write a tiny nnU-Net v1 model under ``root`` and return its trainer folder.

    nnU-Net's own ``nnUNetTrainerV2.save_checkpoint`` writes the checkpoint and
    its ``.model.pkl``; torch is seeded so the same seed gives the same weights.
    """
    import torch

    folder = Path(root) / TRAINER_SUBPATH
    fold_folder = folder / "all"
    fold_folder.mkdir(parents=True, exist_ok=True)
    plans_file = folder / "plans.pkl"
    with open(plans_file, "wb") as handle:
        pickle.dump(tiny_plans(num_classes), handle)

    # nnU-Net prints a citation banner on import and progress lines while
    # saving; keep the test output quiet.
    with contextlib.redirect_stdout(io.StringIO()):
        from nnunet.training.network_training.nnUNetTrainerV2 import nnUNetTrainerV2

        torch.manual_seed(seed)
        trainer = nnUNetTrainerV2(
            str(plans_file), "all", output_folder=str(folder), dataset_directory=str(root),
            batch_dice=False, stage=0, unpack_data=False, deterministic=True, fp16=False,
        )
        trainer.initialize(training=False)
        # A trained v1 checkpoint stores its loss curves and best metric as
        # numpy scalars, which torch's weights-only loader rejects unless allowed.
        trainer.all_tr_losses = [np.float64(0.9), np.float64(0.7)]
        trainer.all_val_losses = [np.float64(0.8), np.float64(0.75)]
        trainer.all_val_eval_metrics = [np.float64(0.4), np.float64(0.5)]
        trainer.best_val_eval_criterion_MA = np.float64(0.5)
        trainer.save_checkpoint(str(fold_folder / "model_final_checkpoint.model"))

    # The trainer logs into <output_folder>/<fold>; a release has no logs.
    for log_file in fold_folder.glob("training_log_*.txt"):
        log_file.unlink()
    return folder
