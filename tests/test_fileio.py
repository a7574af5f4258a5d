"""Tests of atomic writes and content hashes shared by every stage."""
from __future__ import annotations

import os
import stat

import pytest

from ctspine_builder.fileio import atomic_path, write_bytes_atomic


@pytest.fixture
def umask_022():
    previous = os.umask(0o022)
    yield
    os.umask(previous)


def test_atomic_write_follows_umask(tmp_path, umask_022) -> None:
    target = tmp_path / "out.bin"
    write_bytes_atomic(target, b"data")
    assert stat.S_IMODE(target.stat().st_mode) == 0o644


def test_atomic_write_leaves_no_partial_on_error(tmp_path) -> None:
    target = tmp_path / "out.bin"
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("stopped")
    assert list(tmp_path.iterdir()) == []
