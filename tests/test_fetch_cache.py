"""Tests of the content-addressed download cache and `ctspine cache list|prune`."""
from __future__ import annotations

import os
import time

import pytest
from click.testing import CliRunner

from ctspine_builder.cli import main
from ctspine_builder.errors import FetchError
from ctspine_builder.fetch.cache import CACHE_ENV, Cache, default_cache_dir

DIGEST_A = "a" * 32
DIGEST_B = "b" * 32


def make_file(folder, name: str, size: int):
    path = folder / name
    path.write_bytes(b"\0" * size)
    return path


def test_add_moves_file_under_its_key(tmp_path):
    cache = Cache(tmp_path / "cache")
    src = make_file(tmp_path, "download.bin", 10)
    entry = cache.add(src, "md5", DIGEST_A, ".bin")
    assert entry == tmp_path / "cache" / "md5" / "aa" / f"{DIGEST_A}.bin"
    assert entry.stat().st_size == 10
    assert not src.exists()
    assert cache.get("md5", DIGEST_A, ".bin") == entry
    assert cache.get("md5", DIGEST_B) is None


def test_add_folder_entry_and_duplicate_keeps_first(tmp_path):
    cache = Cache(tmp_path / "cache")
    first = tmp_path / "first"
    first.mkdir()
    make_file(first, "one.dcm", 5)
    entry = cache.add(first, "nbia-series-md5", DIGEST_A)
    second = tmp_path / "second"
    second.mkdir()
    make_file(second, "other.dcm", 7)
    assert cache.add(second, "nbia-series-md5", DIGEST_A) == entry
    assert sorted(p.name for p in entry.iterdir()) == ["one.dcm"]
    assert not second.exists()


def test_invalid_key_is_rejected(tmp_path):
    with pytest.raises(FetchError, match="invalid cache key part '../x'"):
        Cache(tmp_path).path_for("md5", "../x")


def test_env_variable_sets_default_root(tmp_path, monkeypatch):
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "env-cache"))
    assert default_cache_dir() == tmp_path / "env-cache"
    assert Cache().root == tmp_path / "env-cache"


def test_prune_by_age_and_count(tmp_path):
    cache = Cache(tmp_path / "cache")
    old = cache.add(make_file(tmp_path, "a", 1), "md5", DIGEST_A)
    new = cache.add(make_file(tmp_path, "b", 1), "md5", DIGEST_B)
    ten_days_ago = time.time() - 10 * 86400
    os.utime(old, (ten_days_ago, ten_days_ago))
    removed = cache.prune(older_than_days=5)
    assert [entry.digest for entry in removed] == [DIGEST_A]
    assert new.exists()
    assert cache.prune(keep=1) == []
    assert [entry.digest for entry in cache.prune(keep=0)] == [DIGEST_B]


def test_prune_removes_stale_staging_only(tmp_path):
    cache = Cache(tmp_path / "cache")
    stale = cache.staging_dir()
    fresh = cache.staging_dir()
    two_days_ago = time.time() - 2 * 86400
    os.utime(stale, (two_days_ago, two_days_ago))
    cache.prune(older_than_days=1)
    assert not stale.exists()
    assert fresh.exists()


def test_cli_list_shows_sizes(tmp_path):
    cache = Cache(tmp_path / "cache")
    cache.add(make_file(tmp_path, "a", 3 * 1024 * 1024), "md5", DIGEST_A)
    result = CliRunner().invoke(main, ["cache", "list", "--cache-dir", str(tmp_path / "cache")])
    assert result.exit_code == 0, result.output
    assert "3.0 MiB" in result.output
    assert f"md5/{DIGEST_A}" in result.output
    assert "1 entries, 3.0 MiB" in result.output


def test_cli_prune_older_than(tmp_path):
    cache = Cache(tmp_path / "cache")
    entry = cache.add(make_file(tmp_path, "a", 2048), "md5", DIGEST_A)
    old = time.time() - 40 * 86400
    os.utime(entry, (old, old))
    result = CliRunner().invoke(main, ["cache", "prune", "--cache-dir", str(cache.root), "--older-than", "30"])
    assert result.exit_code == 0, result.output
    assert "deleted 1 entries, freed 2.0 KiB" in result.output
    assert not entry.exists()


def test_cli_prune_without_criteria_fails(tmp_path):
    result = CliRunner().invoke(main, ["cache", "prune", "--cache-dir", str(tmp_path)])
    assert result.exit_code == 1
    assert "Give --older-than DAYS, --keep N or --all" in result.output


def test_cli_list_marks_partial_download(tmp_path):
    cache = Cache(tmp_path / "cache")
    cache.add(make_file(tmp_path, "a", 1024), "md5", DIGEST_A)
    partial = cache.path_for("md5", DIGEST_B, ".tar.partial")
    partial.parent.mkdir(parents=True, exist_ok=True)
    partial.write_bytes(b"\0" * 2048)

    entries = {entry.digest: entry for entry in cache.entries()}
    assert entries[DIGEST_B].partial
    assert not entries[DIGEST_A].partial

    result = CliRunner().invoke(main, ["cache", "list", "--cache-dir", str(cache.root)])
    assert result.exit_code == 0, result.output
    partial_line = next(line for line in result.output.splitlines() if DIGEST_B in line)
    assert "partial download" in partial_line
    complete_line = next(line for line in result.output.splitlines() if DIGEST_A in line)
    assert "partial" not in complete_line
