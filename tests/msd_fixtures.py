"""Test helper: small real NIfTI files, Task03_Liver-like tars and manifests for source tests."""
from __future__ import annotations

import gzip
import hashlib
import io
import tarfile
from pathlib import Path

import nibabel as nib
import numpy as np

from ctspine_builder.fetch.http import HttpClient
from ctspine_builder.manifest.model import CaseRecord, DatasetInfo, FileRef, Manifest, SourceRecord
from ctspine_builder.sources.base import BuildContext


def nifti_bytes(seed: int, shape: tuple[int, int, int] = (48, 48, 24), dtype=np.int16) -> bytes:
    """Return a gzipped NIfTI of random voxels (incompressible, so the tar is not tiny)."""
    rng = np.random.default_rng(seed)
    data = rng.integers(-1000, 2000, size=shape).astype(dtype)
    image = nib.Nifti1Image(data, np.diag([0.8, 0.8, 2.5, 1.0]))
    return gzip.compress(image.to_bytes(), mtime=0)


def add_tar_file(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    """Add a regular file entry with this content."""
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def make_task03_tar(path: Path, images: dict[str, bytes], *, extra=None) -> str:
    """Write a tar laid out like Task03_Liver.tar and return its MD5.

    ``images`` maps ``imagesTr/liver_0.nii.gz``-style keys to file bytes.
    Each image gets a macOS ``._`` metadata entry and a labelsTr entry
    beside it, as in the published tar. ``extra(tar)`` may add more entries.
    """
    with tarfile.open(path, "w", format=tarfile.GNU_FORMAT) as tar:
        add_tar_file(tar, "Task03_Liver/dataset.json", b'{"name": "Liver"}')
        for key, data in images.items():
            folder, name = key.split("/")
            add_tar_file(tar, f"Task03_Liver/{folder}/._{name}", b"\x00\x05\x16\x07 macOS metadata")
            add_tar_file(tar, f"Task03_Liver/{folder}/{name}", data)
            if folder == "imagesTr":
                add_tar_file(tar, f"Task03_Liver/labelsTr/{name}", b"liver label")
        if extra is not None:
            extra(tar)
    return hashlib.md5(path.read_bytes()).hexdigest()


def make_manifest(root: Path, sources: list[SourceRecord], cases: list[CaseRecord]) -> Manifest:
    """Return an in-memory manifest rooted at ``root``."""
    return Manifest(
        dataset=DatasetInfo(name="test", version="0.0.1", citation="test"),
        sources={record.id: record for record in sources},
        cases=cases,
        root=root,
    )


def image_case(case_id: str, source: str, locator: str = "", subset: str = "MSD-T10",
               mask: FileRef | None = None) -> CaseRecord:
    """Return a trainset case whose image comes from ``source``."""
    return CaseRecord(case_id=case_id, subset=subset, split="trainset", image=FileRef(source, locator), mask=mask)


def make_context(manifest: Manifest, tmp_path: Path, *, retries: int = 0, read_timeout: float = 5.0,
                 sleeps: list[float] | None = None, **options) -> BuildContext:
    """Return a BuildContext with a cache under ``tmp_path`` and a fast-retrying HTTP client."""
    recorded = sleeps if sleeps is not None else []
    client = HttpClient(timeout=(2.0, read_timeout), retries=retries, backoff_s=0.01, max_backoff_s=2.0,
                        sleep=recorded.append)
    work = tmp_path / "work"
    work.mkdir(exist_ok=True)
    return BuildContext(
        manifest=manifest,
        work_dir=work,
        cache_dir=tmp_path / "cache",
        options={"http_client": client, "progress": False, **options},
    )


def cache_files(cache_dir: Path) -> list[str]:
    """Return every file under the cache (relative paths), except lock files."""
    if not cache_dir.exists():
        return []
    return sorted(
        str(path.relative_to(cache_dir)) for path in cache_dir.rglob("*")
        if path.is_file() and ".locks" not in path.parts
    )
