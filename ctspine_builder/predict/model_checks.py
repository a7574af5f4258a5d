"""Predict stage: read an nnU-Net v1 model's plans and check it suits CTSpine1K."""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ctspine_builder.errors import ModelError
from ctspine_builder.predict.safe_load import load_checkpoint_safely, load_pickle_safely, trainer_class

logger = logging.getLogger(__name__)

# CTSpine1K labels: C1..C7 = 1..7, T1..T12 = 8..19, L1..L6 = 20..25.
EXPECTED_CLASSES = tuple(range(1, 26))

PLANS_FILE = "plans.pkl"
CHECKPOINT_FILE = "all/model_final_checkpoint.model"
CHECKPOINT_INFO_FILE = "all/model_final_checkpoint.model.pkl"

# Positions in the init tuple that nnUNetTrainer.save_checkpoint stores:
# (plans_file, fold, output_folder, dataset_directory, batch_dice, stage,
# unpack_data, deterministic, fp16). The paths are the authors' machine's and
# are never used.
_INIT_BATCH_DICE, _INIT_STAGE, _INIT_FP16 = 4, 5, 8


@dataclass
class ModelInfo:
    """Validated contents of an nnU-Net v1 model folder.

    ``plans`` comes from the ``.model.pkl``, as nnU-Net's restore_model uses
    it; ``checkpoint`` is None unless the weights were requested.
    """

    folder: Path
    trainer_name: str
    trainer_class: type
    plans: dict
    batch_dice: bool = True
    stage: int | None = None
    fp16: bool = False
    checkpoint: dict | None = field(default=None, repr=False)


def _check_plans(plans: Any, path: Path) -> dict:
    if not isinstance(plans, dict) or "plans_per_stage" not in plans:
        raise ModelError("plans are not nnU-Net v1 plans (no plans_per_stage)", path=path)
    num_classes = plans.get("num_classes")
    all_classes = tuple(int(label) for label in plans.get("all_classes") or ())
    if num_classes != len(EXPECTED_CLASSES) or all_classes != EXPECTED_CLASSES:
        raise ModelError(
            f"model trained for other labels (num_classes={num_classes}, all_classes={list(all_classes)}); "
            "CTSpine1K needs labels 1..25 (C1..L6)",
            path=path,
            hint="Use the CTSpine1K authors' Task056_VerSe model or one trained on the same labels",
        )
    if plans.get("num_modalities") != 1:
        raise ModelError(f"model expects {plans.get('num_modalities')} input channels; CT needs 1", path=path)
    for stage in plans["plans_per_stage"].values():
        if len(stage.get("patch_size", ())) != 3:
            raise ModelError("model is not a 3-D model (patch size is not 3-D)", path=path, hint="Use the 3d_fullres model")
    return plans


def read_model_info(folder: str | Path, load_weights: bool = True) -> ModelInfo:
    """Load and check ``plans.pkl``, the ``.model.pkl`` and optionally the checkpoint.

    Nothing in the files is executed: see ``safe_load``. Raises ModelError
    naming the file for a disallowed global, an unknown trainer, labels other
    than 1..25 or a non-3-D model.
    """
    folder = Path(folder)
    _check_plans(load_pickle_safely(folder / PLANS_FILE), folder / PLANS_FILE)

    info_path = folder / CHECKPOINT_INFO_FILE
    info = load_pickle_safely(info_path)
    if not isinstance(info, dict) or not {"init", "name", "plans"} <= set(info):
        raise ModelError("checkpoint info has no init, name and plans entries", path=info_path)
    trainer = trainer_class(info["name"], info_path)
    plans = _check_plans(info["plans"], info_path)

    init = tuple(info["init"]) if isinstance(info["init"], (tuple, list)) else ()
    batch_dice = bool(init[_INIT_BATCH_DICE]) if len(init) > _INIT_BATCH_DICE else True
    stage = init[_INIT_STAGE] if len(init) > _INIT_STAGE and isinstance(init[_INIT_STAGE], int) else None
    fp16 = bool(init[_INIT_FP16]) if len(init) > _INIT_FP16 else False

    checkpoint = load_checkpoint_safely(folder / CHECKPOINT_FILE) if load_weights else None
    return ModelInfo(folder, info["name"], trainer, plans, batch_dice, stage, fp16, checkpoint)
