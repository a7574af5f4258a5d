"""Build stage, one case: fetch, convert, pair, scan for identifiers, move into place.

Everything for a case is assembled in a staging folder inside the output
folder and moved to its final names only when the case is complete, so an
interrupted build never leaves a half-built case under a final name.
Runs in the build's process or in a worker process.
"""
from __future__ import annotations

import logging
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from ctspine_builder.errors import CtspineError, VerificationError
from ctspine_builder.fileio import sha256_content
from ctspine_builder.manifest.model import CaseRecord, Manifest
from ctspine_builder.package.buildinfo import CaseEntry
from ctspine_builder.package.layout import STAGING_DIR, image_relpath, mask_relpath, sidecar_relpath
from ctspine_builder.sources.base import BuildContext, FetchedImage, open_source

logger = logging.getLogger(__name__)

STATUS_BUILT = "built"
STATUS_UNCHANGED = "unchanged"
STATUS_FAILED = "failed"


@dataclass
class CaseOutcome:
    """Outcome of one case in a build: status, reason and build.json entry."""

    case_id: str
    status: str
    reason: str = ""
    entry: CaseEntry | None = None
    # Identifying values read from the case's input; the final verification
    # searches the whole dataset for them. Never logged or printed.
    deny_values: set[str] = field(default_factory=set, repr=False)


@dataclass
class _Staged:
    """The staged files of one case and what the conversion read from its inputs."""

    image: Path
    mask: Path | None
    sidecar: Path
    deny_values: set[str]
    position: str | None
    mask_applies: bool = True


def _convert(fetched: FetchedImage, out_path: Path, sidecar_path: Path, case_id: str):
    """Convert the fetched image to NIfTI with the converter for its kind."""
    if fetched.kind == "dicom":
        from ctspine_builder.dicom.convert import convert_series

        return convert_series(
            fetched.path,
            out_path,
            series_uid=fetched.series_uid,
            geometry=fetched.geometry,
            case_id=case_id,
            sidecar_path=sidecar_path,
        )
    from ctspine_builder.dicom.convert import convert_nifti

    return convert_nifti(fetched.path, out_path, case_id=case_id, sidecar_path=sidecar_path)


def _stage(manifest: Manifest, case: CaseRecord, context: BuildContext, staging: Path) -> _Staged:
    """Fetch, convert and pair one case into ``staging``."""
    from ctspine_builder.pairing import pair_mask

    image_source = open_source(manifest.sources[case.image.source], context)
    fetched = image_source.fetch_image(case, context)
    logger.info("case %s: converting %s input", case.case_id, fetched.kind)
    image_path = staging / "image.nii.gz"
    sidecar_path = staging / "sidecar.json"
    result = _convert(fetched, image_path, sidecar_path, case.case_id)
    deny_values = set(getattr(result, "deny_values", None) or ())

    # A position variant (another series than the authors') has no mask.
    mask_applies = fetched.provenance.get("mask_applies", True)
    mask_path = None
    if case.mask is not None and mask_applies:
        mask_source = open_source(manifest.sources[case.mask.source], context)
        source_mask = mask_source.fetch_mask(case, context)
        logger.info("case %s: pairing mask", case.case_id)
        mask_path = staging / "mask.nii.gz"
        pair_mask(image_path, source_mask, mask_path, case_id=case.case_id)

    position = fetched.provenance.get("position")
    return _Staged(image_path, mask_path, sidecar_path, deny_values, position, mask_applies)


def _scan(case_id: str, staging: Path, deny_values: set[str]) -> None:
    """Raise VerificationError when a staged file carries an identifying value.

    The message names the files and the kind of finding but never the value
    itself, because the value is the identifier that must not be shown.
    """
    from ctspine_builder.deid import scan_tree

    findings = scan_tree(staging, deny_values, {case_id})
    if not findings:
        return
    files = sorted({Path(str(getattr(f, "path", "?"))).name for f in findings})
    kinds = sorted({str(getattr(f, "kind", "identifier")) for f in findings})
    raise VerificationError(
        f"{len(findings)} identifying value(s) ({', '.join(kinds)}) found in the converted output ({', '.join(files)})",
        case_id=case_id,
        hint="The case is not published; report this as a bug in the de-identification of this input.",
    )


def _check_pins(case: CaseRecord, image_sha: str, mask_sha: str | None) -> None:
    """Raise VerificationError when a produced file differs from its pinned hash."""
    for role, pinned, produced in (("image", case.image_sha256, image_sha), ("mask", case.mask_sha256, mask_sha)):
        if pinned and produced != pinned:
            raise VerificationError(
                f"the {role} built has content SHA-256 {produced}, but the manifest pins {pinned}",
                case_id=case.case_id,
                hint="The input differs from the one the manifest was made from; check the source, "
                "or update the pinned hash if the change is intended.",
            )


def _move_into_place(out_dir: Path, case: CaseRecord, staged: _Staged) -> tuple[str, str | None, str]:
    """Rename the staged files to their final dataset paths and return those paths."""
    image_rel = image_relpath(case.split, case.case_id)
    mask_rel = mask_relpath(case.split, case.case_id) if staged.mask else None
    sidecar_rel = sidecar_relpath(case.case_id)
    moves = [(staged.image, image_rel), (staged.sidecar, sidecar_rel)]
    if staged.mask and mask_rel:
        moves.append((staged.mask, mask_rel))
    for source, relative in moves:
        target = out_dir / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(source, target)
    return image_rel, mask_rel, sidecar_rel


def _make_entry(manifest: Manifest, case: CaseRecord, fingerprint: str, staged: _Staged) -> CaseEntry:
    image_sha = sha256_content(staged.image)
    mask_sha = sha256_content(staged.mask) if staged.mask else None
    if staged.mask_applies:  # pins describe the authors' series, not a position variant
        _check_pins(case, image_sha, mask_sha)
    mask_record = manifest.sources[case.mask.source] if case.mask and staged.mask else None
    return CaseEntry(
        case_id=case.case_id,
        subset=case.subset,
        split=case.split,
        has_mask=staged.mask is not None,
        image_content_sha256=image_sha,
        mask_content_sha256=mask_sha,
        image_source=case.image.source,
        image_license=manifest.sources[case.image.source].license,
        mask_source=mask_record.id if mask_record else None,
        mask_license=mask_record.license if mask_record else None,
        inputs_sha256=fingerprint,
        position=staged.position,
    )


def build_case(manifest: Manifest, case: CaseRecord, out_dir: Path, options: dict, fingerprint: str) -> CaseOutcome:
    """Build one case into ``out_dir`` and return its outcome; never raises for a case error."""
    staging = out_dir / STAGING_DIR / case.case_id
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    context = BuildContext(manifest=manifest, work_dir=staging, cache_dir=options.get("cache_dir"), options=options)
    try:
        staged = _stage(manifest, case, context, staging)
        _scan(case.case_id, staging, staged.deny_values)
        entry = _make_entry(manifest, case, fingerprint, staged)
        entry.image_file, entry.mask_file, entry.sidecar_file = _move_into_place(out_dir, case, staged)
    except CtspineError as error:
        if error.case_id is None:
            error.case_id = case.case_id
        logger.error("%s", error.format())
        return CaseOutcome(case.case_id, STATUS_FAILED, error.format())
    except Exception as error:  # noqa: BLE001 - one broken case must not stop the others
        logger.error("case %s: unexpected %s: %s", case.case_id, type(error).__name__, error)
        logger.debug("case %s: traceback", case.case_id, exc_info=True)
        return CaseOutcome(case.case_id, STATUS_FAILED, f"unexpected {type(error).__name__}: {error}")
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    logger.info("case %s: built", case.case_id)
    return CaseOutcome(case.case_id, STATUS_BUILT, "", entry, staged.deny_values)
