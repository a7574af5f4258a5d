"""Predict stage: load nnU-Net v1 model files without running code from them.

nnU-Net v1 reads ``plans.pkl`` and ``model_final_checkpoint.model.pkl`` with
plain pickle, imports the trainer class whose name the ``.model.pkl`` stores,
and reads the checkpoint with ``torch.load``. Each of these can run code
that a tampered file names. Here the pickles go through an unpickler that
resolves only an allow-list of container and numpy globals, the trainer class
comes from a fixed allow-list by name, and the checkpoint is read in torch's
``weights_only`` mode with the numpy types that v1 checkpoints contain.
"""
from __future__ import annotations

import importlib
import logging
import pickle
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ctspine_builder.errors import ModelError

logger = logging.getLogger(__name__)

# Globals that nnU-Net v1 plans and .model.pkl files contain: containers,
# numpy arrays, dtypes and scalars. numpy 1.x wrote the module name
# numpy.core.multiarray, numpy 2.x writes numpy._core.multiarray; both map to
# the numpy objects of the installed version.
_NUMPY_MULTIARRAY = ("numpy.core.multiarray", "numpy._core.multiarray")
ALLOWED_PICKLE_GLOBALS: frozenset[tuple[str, str]] = frozenset(
    {
        ("collections", "OrderedDict"),
        ("collections", "defaultdict"),
        ("builtins", "dict"),
        ("builtins", "list"),
        ("builtins", "tuple"),
        ("builtins", "set"),
        ("builtins", "frozenset"),
        ("builtins", "int"),
        ("builtins", "float"),
        ("builtins", "complex"),
        ("builtins", "bool"),
        ("builtins", "str"),
        ("builtins", "bytes"),
        ("builtins", "bytearray"),
        ("builtins", "slice"),
        ("builtins", "range"),
        # Protocol 2 pickles encode bytes as _codecs.encode(str, "latin1"),
        # which only converts text to bytes.
        ("_codecs", "encode"),
        ("numpy", "dtype"),
        ("numpy", "ndarray"),
        *((module, name) for module in _NUMPY_MULTIARRAY for name in ("_reconstruct", "scalar")),
    }
)

# Trainer classes the released CTSpine1K model could name. The authors
# trained with nnUNetTrainerV2; the others share its constructor and network.
# A class name outside this table is rejected, never looked up by import.
ALLOWED_TRAINERS: dict[str, str] = {
    "nnUNetTrainerV2": "nnunet.training.network_training.nnUNetTrainerV2",
    "nnUNetTrainerV2_fp32": "nnunet.training.network_training.nnUNetTrainerV2_fp32",
    "nnUNetTrainer": "nnunet.training.network_training.nnUNetTrainer",
}

_TAMPER_HINT = "Reinstall the model from the authors' release and check its hashes with `ctspine model list`"


def _resolve_numpy_global(module: str, name: str) -> Any:
    import numpy as np

    if module == "numpy":
        return getattr(np, name)
    from numpy._core import multiarray

    return getattr(multiarray, name)


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that resolves only ``ALLOWED_PICKLE_GLOBALS``.

    Any other global (a function or class a pickle could call while it loads)
    raises ModelError naming the file and the global, before anything runs.
    """

    def __init__(self, file, path: Path) -> None:
        super().__init__(file)
        self._path = path

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in ALLOWED_PICKLE_GLOBALS:
            raise ModelError(
                f"disallowed global {module}.{name} in pickle; the file may run code when loaded and was not read",
                path=self._path,
                hint=_TAMPER_HINT,
            )
        if module.startswith("numpy"):
            return _resolve_numpy_global(module, name)
        return super().find_class(module, name)

    def persistent_load(self, pid: Any) -> Any:
        raise ModelError("persistent id in pickle is not allowed", path=self._path, hint=_TAMPER_HINT)


def load_pickle_safely(path: str | Path) -> Any:
    """Load a pickle file through ``RestrictedUnpickler``.

    Raises ModelError when the file is missing, truncated or names a global
    outside the allow-list.
    """
    path = Path(path)
    try:
        with open(path, "rb") as handle:
            return RestrictedUnpickler(handle, path).load()
    except FileNotFoundError as error:
        raise ModelError("model file not found", path=path, hint="Check the model folder layout") from error
    except ModelError:
        raise
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError) as error:
        raise ModelError(f"invalid pickle: {error}", path=path, hint=_TAMPER_HINT) from error


def _checkpoint_safe_globals() -> list[Callable | tuple[Callable, str]]:
    """Return the numpy globals v1 checkpoints contain, under old and new names."""
    import numpy as np
    from numpy._core import multiarray

    safe: list[Callable | tuple[Callable, str]] = [multiarray.scalar, multiarray._reconstruct, np.dtype, np.ndarray]
    # Checkpoints written with numpy 1.x name numpy.core.multiarray.scalar;
    # torch matches allow-list entries by the name stored in the file.
    safe += [(multiarray.scalar, "numpy.core.multiarray.scalar"), (multiarray._reconstruct, "numpy.core.multiarray._reconstruct")]
    # numpy 2 pickles a dtype as its class (for example numpy.dtypes.Float64DType).
    safe += [type(np.dtype(code)) for code in "?bBhHiIlLqQefdgFDG"]
    return safe


def load_checkpoint_safely(path: str | Path) -> dict:
    """Load an nnU-Net v1 checkpoint with ``torch.load(weights_only=True)``.

    Only tensors, containers and the numpy types from
    ``_checkpoint_safe_globals`` are reconstructed; anything else raises
    ModelError naming the file and torch's reason.
    """
    import torch

    path = Path(path)
    if not path.is_file():
        raise ModelError("model checkpoint not found", path=path, hint="Check the model folder layout")
    try:
        with torch.serialization.safe_globals(_checkpoint_safe_globals()):
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        # torch's message goes on to suggest weights_only=False; keep only the reason.
        match = re.search(r"Unsupported global: GLOBAL ([\w.]+)|Unsupported operand \d+|[^\n]*not an allowed global[^\n]*", str(error))
        reason = match.group(0) if match else "the file contains objects other than tensors and allowed types"
        raise ModelError(f"checkpoint rejected by torch's weights-only loader: {reason}", path=path, hint=_TAMPER_HINT) from error
    except (RuntimeError, EOFError, ValueError, OSError) as error:
        raise ModelError(f"invalid checkpoint: {error}", path=path, hint=_TAMPER_HINT) from error
    if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get("state_dict"), dict):
        raise ModelError("checkpoint has no state_dict", path=path, hint=_TAMPER_HINT)
    return checkpoint


def trainer_class(name: object, path: str | Path) -> type:
    """Return the allow-listed nnU-Net trainer class called ``name``.

    Raises ModelError naming the ``.model.pkl`` file for any other name.
    """
    if not isinstance(name, str) or name not in ALLOWED_TRAINERS:
        allowed = ", ".join(sorted(ALLOWED_TRAINERS))
        raise ModelError(
            f"unknown trainer class {name!r}; allowed: {allowed}",
            path=path,
            hint="Use a model trained with one of these nnU-Net v1 trainers",
        )
    module = importlib.import_module(ALLOWED_TRAINERS[name])
    return getattr(module, name)
