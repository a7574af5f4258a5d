"""Exception hierarchy shared by every stage of the pipeline.

Each error is a user error unless stated otherwise: the CLI prints its message
with no traceback and exits non-zero. Messages name the case id, the file and
what to do next.
"""
from __future__ import annotations

from pathlib import Path


class CtspineError(Exception):
    """Base class for errors that the CLI reports without a traceback."""

    def __init__(
        self,
        message: str,
        *,
        case_id: str | None = None,
        path: str | Path | None = None,
        hint: str | None = None,
    ) -> None:
        self.message = message
        self.case_id = case_id
        self.path = str(path) if path is not None else None
        self.hint = hint
        super().__init__(self.format())

    def format(self) -> str:
        """Return the message as printed: case id, message, file and fix."""
        text = self.message
        if self.path:
            kind = "folder" if Path(self.path).is_dir() else "file"
            text = f"{text} ({kind}: {self.path})"
        if self.case_id:
            text = f"case {self.case_id}: {text}"
        if self.hint:
            text = f"{text}. {self.hint}" if not text.endswith(".") else f"{text} {self.hint}"
        return text


class ManifestError(CtspineError):
    """The manifest or lock file is missing, malformed or inconsistent."""


class FetchError(CtspineError):
    """A source could not be downloaded, or what arrived failed its checks."""


class HostUnreachableError(FetchError):
    """A host could not be connected to at all, after every retry."""


class ConversionError(CtspineError):
    """A DICOM series or source NIfTI could not be converted to a case image."""


class PairingError(CtspineError):
    """A mask does not fit its image, or carries labels outside 0..25."""


class VerificationError(CtspineError):
    """A built dataset failed a verification check."""


class PackagingError(CtspineError):
    """The dataset folder, card or export could not be written."""


class PublishError(CtspineError):
    """A release could not be published to the Hugging Face Hub."""


class ModelError(CtspineError):
    """A segmentation model is missing, tampered with or unsuitable."""
