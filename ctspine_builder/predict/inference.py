"""Predict stage: run nnU-Net v1's own preprocessing, sliding window and export on one volume.

The steps are those of nnU-Net v1's ``predict_cases`` in nnunet 1.7.1
(``nnunet/inference/predict.py``). They crop to the non-zero box, resample
and normalise with the plans' preprocessor, and predict with
Gaussian-weighted sliding windows (optionally mirrored). The softmax is then
resampled back and placed in the uncropped volume. Only the model restore differs: the trainer is
built from an allow-list and the weights come from ``safe_load``.
"""
from __future__ import annotations

import contextlib
import io
import logging
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ctspine_builder.errors import ModelError
from ctspine_builder.predict.model_checks import ModelInfo, read_model_info
from ctspine_builder.predict.orientation import normalize_orientation, restore_orientation

logger = logging.getLogger(__name__)

# Test-time augmentation in nnU-Net v1 mirrors each patch along all
# combinations of the three axes: 8 forward passes instead of 1.
TTA_PASSES = 8


@contextlib.contextmanager
def nnunet_output() -> Iterator[None]:
    """Capture what nnU-Net prints to stdout and log it at debug level.

    nnU-Net v1 prints a citation banner on import and progress lines while it
    predicts; the CLI's own output must stay readable.
    """
    buffer = io.StringIO()
    try:
        with contextlib.redirect_stdout(buffer):
            yield
    finally:
        for line in buffer.getvalue().splitlines():
            if line.strip():
                logger.debug("nnunet: %s", line)


@contextlib.contextmanager
def cuda_hidden(hide: bool) -> Iterator[None]:
    """Make ``torch.cuda.is_available()`` return False while ``hide`` is set.

    nnU-Net v1 has no device option: it moves the network and data to the GPU
    whenever ``torch.cuda.is_available()`` is True, so running on the CPU
    with a GPU present requires hiding it from those calls.
    """
    import torch

    if not hide:
        yield
        return
    original = torch.cuda.is_available
    torch.cuda.is_available = lambda: False
    try:
        yield
    finally:
        torch.cuda.is_available = original


@dataclass(frozen=True)
class PredictOptions:
    """Inference settings, recorded in predict_settings.json."""

    device: str = "cpu"
    step_size: float = 0.5
    tta: bool = True
    threads: int | None = None

    # NOTE: the project's tests run on CPU-only machines, so the --device cuda
    # path (network on the GPU, float16 autocast) has not been exercised here.
    @property
    def mixed_precision(self) -> bool:
        """nnU-Net predicts in float16 autocast on the GPU by default; on the CPU it cannot."""
        return self.device == "cuda"


class Predictor:
    """A loaded nnU-Net v1 model that turns a 3-D CT volume into a label map."""

    def __init__(self, model_folder: str | Path, options: PredictOptions) -> None:
        import torch

        self.options = options
        if options.device == "cuda" and not torch.cuda.is_available():
            raise ModelError("--device cuda requested but torch finds no CUDA device", hint="Pass --device cpu")
        if options.threads:
            torch.set_num_threads(options.threads)
        self._work_dir = tempfile.TemporaryDirectory(prefix="ctspine-predict-")
        with nnunet_output():
            self.info: ModelInfo = read_model_info(model_folder, load_weights=True)
            self.trainer = self._build_trainer()
        self._export_params = self.info.plans.get("segmentation_export_params") or {
            "force_separate_z": None, "interpolation_order": 1, "interpolation_order_z": 0,
        }
        self._postprocessing = self._read_postprocessing(Path(model_folder) / "postprocessing.json")
        self._seconds_per_patch: float | None = None

    def _build_trainer(self):
        info = self.info
        work = self._work_dir.name
        # The trainer is constructed from values checked in read_model_info.
        # Its paths point at a private temporary folder, so nnU-Net's log
        # files never land in the model cache.
        trainer = info.trainer_class(
            str(info.folder / "plans.pkl"), "all", output_folder=work, dataset_directory=work,
            batch_dice=info.batch_dice, stage=info.stage, unpack_data=False, deterministic=True, fp16=info.fp16,
        )
        trainer.process_plans(info.plans)
        with cuda_hidden(self.options.device == "cpu"):
            trainer.initialize(training=False)
            try:
                trainer.load_checkpoint_ram(info.checkpoint, train=False)
            except (RuntimeError, KeyError) as error:
                raise ModelError(f"checkpoint weights do not fit the network the plans describe: {error}", path=info.folder / "all/model_final_checkpoint.model") from error
        trainer.network.eval()
        return trainer

    @staticmethod
    def _read_postprocessing(path: Path):
        if not path.is_file():
            return None
        from nnunet.postprocessing.connected_components import load_postprocessing

        return load_postprocessing(str(path))

    def close(self) -> None:
        """Remove the temporary folder used for nnU-Net's exports and logs."""
        self._work_dir.cleanup()

    def predict(self, data: np.ndarray, affine: np.ndarray) -> np.ndarray:
        """Return the uint8 label map for a 3-D volume in NIfTI voxel order.

        ``data`` is in NIfTI (x, y, z) voxel order with world matrix
        ``affine``; the result has the same shape and voxel order.
        """
        turned, header = normalize_orientation(np.asarray(data, dtype=np.float32), affine)
        with nnunet_output(), cuda_hidden(self.options.device == "cpu"):
            labels_zyx = self._predict_normalised(np.ascontiguousarray(turned.transpose(2, 1, 0)), header["spacing"][::-1])
        restored = restore_orientation(labels_zyx.transpose(2, 1, 0), header)
        if restored.shape != data.shape:
            raise ModelError(f"prediction shape {restored.shape} differs from the input shape {data.shape}")
        return restored.astype(np.uint8)

    def _preprocess(self, data_zyx: np.ndarray, spacing_zyx: tuple) -> tuple[np.ndarray, dict]:
        """Crop, resample and normalise as nnU-Net's ``preprocess_test_case`` does.

        The volume is passed in memory. ``properties`` carries the fields that
        nnU-Net's loader would have read from the file, with an identity
        direction because the orientation is already normalised.
        """
        from collections import OrderedDict

        from nnunet.preprocessing.cropping import ImageCropper
        from nnunet.preprocessing.preprocessing import GenericPreprocessor

        trainer = self.trainer
        preprocessor_name = trainer.plans.get("preprocessor_name") or "GenericPreprocessor"
        if preprocessor_name != "GenericPreprocessor":
            raise ModelError(f"unsupported preprocessor {preprocessor_name!r} in the plans; only GenericPreprocessor is allowed", path=self.info.folder / "all/model_final_checkpoint.model.pkl")

        properties = OrderedDict()
        properties["original_size_of_raw_data"] = np.array(data_zyx.shape)
        properties["original_spacing"] = np.array(spacing_zyx, dtype=np.float64)
        properties["list_of_data_files"] = []
        properties["seg_file"] = None
        properties["itk_origin"] = (0.0, 0.0, 0.0)
        properties["itk_spacing"] = tuple(float(s) for s in spacing_zyx[::-1])
        properties["itk_direction"] = tuple(np.eye(3).flatten())

        cropped, seg, properties = ImageCropper.crop(data_zyx[None].astype(np.float32), properties, None)
        forward = [0, *[axis + 1 for axis in trainer.transpose_forward]]
        preprocessor = GenericPreprocessor(trainer.normalization_schemes, trainer.use_mask_for_norm, trainer.transpose_forward, trainer.intensity_properties)
        target_spacing = trainer.plans["plans_per_stage"][trainer.stage]["current_spacing"]
        prepared, _, properties = preprocessor.resample_and_normalize(cropped.transpose(forward), target_spacing, properties, seg.transpose(forward), force_separate_z=None)
        return prepared.astype(np.float32), properties

    def _predict_normalised(self, data_zyx: np.ndarray, spacing_zyx: tuple) -> np.ndarray:
        import SimpleITK as sitk
        from nnunet.inference.segmentation_export import save_segmentation_nifti_from_softmax

        trainer = self.trainer
        prepared, properties = self._preprocess(data_zyx, spacing_zyx)
        self._warn_cpu_tta(prepared.shape[1:])
        softmax = trainer.predict_preprocessed_data_return_seg_and_softmax(
            prepared, do_mirroring=self.options.tta, mirror_axes=trainer.data_aug_params["mirror_axes"],
            use_sliding_window=True, step_size=self.options.step_size, use_gaussian=True, all_in_gpu=False,
            mixed_precision=self.options.mixed_precision,
        )[1]
        backward = trainer.plans.get("transpose_backward")
        if backward is not None:
            softmax = softmax.transpose([0] + [axis + 1 for axis in backward])

        # nnU-Net's export resamples the softmax to the cropped size, takes
        # the argmax and pastes it into the full volume. It writes through
        # SimpleITK, so the result is read back from an uncompressed file.
        export = Path(self._work_dir.name) / "export.nii"
        params = self._export_params
        save_segmentation_nifti_from_softmax(
            softmax, str(export), properties, params["interpolation_order"], getattr(trainer, "regions_class_order", None),
            None, None, None, None, params["force_separate_z"], params["interpolation_order_z"],
        )
        labels = sitk.GetArrayFromImage(sitk.ReadImage(str(export)))
        export.unlink()

        if self._postprocessing is not None:
            from nnunet.postprocessing.connected_components import remove_all_but_the_largest_connected_component

            for_which_classes, min_valid_object_size = self._postprocessing
            labels = remove_all_but_the_largest_connected_component(labels, for_which_classes, float(np.prod(spacing_zyx)), min_valid_object_size)[0]
        return labels

    def _warn_cpu_tta(self, shape: tuple) -> None:
        """Warn with a time estimate when mirrored inference runs on the CPU."""
        if self.options.device != "cpu" or not self.options.tta:
            return
        patches = self.count_patches(shape)
        seconds = patches * TTA_PASSES * self.seconds_per_patch()
        logger.warning(
            "test-time augmentation on the CPU: about %.0f s for this volume (%d patches x %d mirrored passes, "
            "estimate from one timed forward pass); --no-tta takes about %.0f s",
            seconds, patches, TTA_PASSES, seconds / TTA_PASSES,
        )

    def count_patches(self, shape: tuple) -> int:
        """Return how many sliding-window patches cover a preprocessed volume of ``shape``."""
        patch = [int(p) for p in self.trainer.patch_size]
        padded = [max(int(s), p) for s, p in zip(shape, patch)]
        steps = self.trainer.network._compute_steps_for_sliding_window(patch, padded, self.options.step_size)
        return int(np.prod([len(axis) for axis in steps]))

    def seconds_per_patch(self) -> float:
        """Time one forward pass of the network on one patch (measured once)."""
        import torch

        if self._seconds_per_patch is None:
            network = self.trainer.network
            sample = torch.zeros((1, self.trainer.num_input_channels, *[int(p) for p in self.trainer.patch_size]))
            do_ds = network.do_ds
            network.do_ds = False
            with torch.no_grad():
                network(sample)  # the first pass includes one-off setup
                start = time.perf_counter()
                network(sample)
                self._seconds_per_patch = time.perf_counter() - start
            network.do_ds = do_ds
        return self._seconds_per_patch


PREDICT_EXTRA_HINT = (
    "Install the predict extra: PIP_CONSTRAINT=constraints.txt pip install -e '.[predict]' "
    "(from the repository root; the constraints file pins torch)."
)


def require_predict_extra() -> None:
    """Raise ModelError unless torch and nnunet import, naming the install command."""
    from ctspine_builder.errors import ModelError

    for module in ("torch", "nnunet"):
        try:
            __import__(module)
        except ImportError as error:
            raise ModelError(f"prediction needs {module}, which is not installed ({error})",
                             hint=PREDICT_EXTRA_HINT) from None


def default_device() -> str:
    """Return "cuda" when torch finds a CUDA device, else "cpu"."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


__all__ = ["Predictor", "PredictOptions", "default_device", "nnunet_output", "require_predict_extra"]
