"""Convert stage, pixel step: decode each slice and turn stored values into HU.

HU = stored value x RescaleSlope + RescaleIntercept (DICOM PS3.3 C.11.1.1.2),
computed per slice in int64 or float64 so that no value overflows or wraps.
The volume is int16 when every HU value is an integer within int16, else
float32.
"""
from __future__ import annotations

import logging
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.pixels import get_decoder
from pydicom.uid import UID

from ctspine_builder.errors import ConversionError

logger = logging.getLogger(__name__)

INT16_MIN, INT16_MAX = np.iinfo(np.int16).min, np.iinfo(np.int16).max

# Each decode process gets at least this many slices. Starting processes cost
# more than they saved on the 20-slice Siemens series, and two processes cut a
# 120-slice series' time by a third (scripts/bench_convert.py, 2 cores).
MIN_SLICES_PER_PROCESS = 32

# The package that provides a decoder for each compressed transfer syntax family.
_PLUGIN_HINTS = {
    "1.2.840.10008.1.2.4.90": "pylibjpeg-openjpeg",
    "1.2.840.10008.1.2.4.91": "pylibjpeg-openjpeg",
    "1.2.840.10008.1.2.4.201": "pylibjpeg-openjpeg",
    "1.2.840.10008.1.2.4.202": "pylibjpeg-openjpeg",
    "1.2.840.10008.1.2.4.203": "pylibjpeg-openjpeg",
    "1.2.840.10008.1.2.4.80": "pylibjpeg-libjpeg or pyjpegls",
    "1.2.840.10008.1.2.4.81": "pylibjpeg-libjpeg or pyjpegls",
    "1.2.840.10008.1.2.5": "pylibjpeg-rle",
}
_JPEG_PLUGIN = "pylibjpeg-libjpeg"


def check_decodable(transfer_syntax: str, path: Path, *, case_id: str | None = None) -> None:
    """Raise ConversionError when no installed decoder handles ``transfer_syntax``."""
    uid = UID(transfer_syntax)
    name = uid.name if uid.is_valid else transfer_syntax
    plugin = _PLUGIN_HINTS.get(str(uid), _JPEG_PLUGIN if str(uid).startswith("1.2.840.10008.1.2.4.") else None)
    try:
        decoder = get_decoder(uid)
    except NotImplementedError:
        raise ConversionError(f"transfer syntax {name} ({uid}) cannot be decoded: pydicom has no decoder for it",
                              case_id=case_id, path=path,
                              hint="Convert the series to an uncompressed or JPEG 2000 syntax first, "
                                   "for example with gdcmconv --raw") from None
    if not decoder.is_available:
        missing = "; ".join(decoder.missing_dependencies) or "a decoder plugin"
        install = plugin or "the plugin named above"
        raise ConversionError(f"transfer syntax {name} ({uid}) cannot be decoded: missing {missing}",
                              case_id=case_id, path=path, hint=f"Install {install} with pip")


def decode_stored(path: Path, *, case_id: str | None = None) -> np.ndarray:
    """Return one slice's stored values (rows x columns) as decoded by pydicom."""
    try:
        dataset = pydicom.dcmread(path)
        pixels = dataset.pixel_array
    except Exception as error:  # decoders raise many types (RuntimeError, ValueError, struct.error, ...)
        raise ConversionError(f"pixel data could not be decoded: {type(error).__name__}: {error}",
                              case_id=case_id, path=path,
                              hint="The file is damaged or truncated; download the series again") from error
    if pixels.ndim != 2:
        raise ConversionError(f"expected one grayscale frame per file, got pixel array of shape {pixels.shape}",
                              case_id=case_id, path=path,
                              hint="Multi-frame and colour images are not supported")
    return pixels


def decode_all(paths: Sequence[Path], *, workers: int = 1, case_id: str | None = None) -> list[np.ndarray]:
    """Decode the slices in ``paths`` in order, in up to ``workers`` processes.

    Fewer processes run when the series is short: each gets at least
    MIN_SLICES_PER_PROCESS slices, and a short series decodes in this process.

    Processes, not threads: with pydicom 3.0 (which picked its python-gdcm
    3.2 plugin for JPEG 2000 here), two threads decoded the 20-slice Siemens
    series no faster than one on 2 cores, so the decoder holds the GIL.
    """
    processes = min(workers, len(paths) // MIN_SLICES_PER_PROCESS)
    if processes <= 1:
        return [decode_stored(path, case_id=case_id) for path in paths]
    logger.debug("decoding %d slices in %d processes", len(paths), processes)
    with ProcessPoolExecutor(max_workers=processes) as pool:
        return list(pool.map(_decode_in_worker, paths, [case_id] * len(paths), chunksize=8))


def _decode_in_worker(path: Path, case_id: str | None) -> np.ndarray:
    return decode_stored(path, case_id=case_id)


def rescale_parameters(dataset: Dataset) -> tuple[float, float]:
    """Return (RescaleSlope, RescaleIntercept), defaulting to 1 and 0 when absent."""
    slope = dataset.get("RescaleSlope")
    intercept = dataset.get("RescaleIntercept")
    return (float(slope) if slope not in (None, "") else 1.0,
            float(intercept) if intercept not in (None, "") else 0.0)


def to_hu(stored: np.ndarray, slope: float, intercept: float) -> np.ndarray:
    """Return HU for one slice: int64 when slope and intercept are integers, else float64."""
    if float(slope).is_integer() and float(intercept).is_integer():
        hu = stored.astype(np.int64)
        if slope != 1:
            hu *= int(slope)
        hu += int(intercept)
        return hu
    return stored.astype(np.float64) * slope + intercept


def fits_int16(hu: np.ndarray) -> bool:
    """Return True when every value is an integer within the int16 range."""
    if hu.size == 0:
        return True
    if hu.dtype.kind == "f" and not np.array_equal(hu, np.round(hu)):
        return False
    return INT16_MIN <= hu.min() and hu.max() <= INT16_MAX


class VolumeBuilder:
    """Volume of HU slices stacked in output order, int16 until a slice needs float32."""

    def __init__(self, count: int, rows: int, columns: int) -> None:
        self.volume = np.empty((count, rows, columns), dtype=np.int16)

    def put(self, index: int, hu: np.ndarray) -> None:
        """Store slice ``index``, switching the whole volume to float32 when needed."""
        if self.volume.dtype == np.int16 and not fits_int16(hu):
            logger.debug("slice %d needs float32 (non-integer HU or outside int16)", index)
            self.volume = self.volume.astype(np.float32)
        self.volume[index] = hu
