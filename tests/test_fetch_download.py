"""Tests of download_file: resume, checksums, HTML pages and interrupted bodies, on a loopback Range server."""
from __future__ import annotations

import hashlib
import os

import pytest

from ctspine_builder.errors import FetchError
from ctspine_builder.fetch.download import download_file, looks_like_html, partial_path
from ctspine_builder.fetch.http import HttpClient
from tests.range_server import Fault, RangeServer

SIZE = 3 * 1024 * 1024 + 123


@pytest.fixture()
def payload(tmp_path) -> bytes:
    data = os.urandom(SIZE)
    served = tmp_path / "served"
    served.mkdir()
    (served / "data.bin").write_bytes(data)
    return data


@pytest.fixture()
def server(tmp_path, payload):
    with RangeServer(tmp_path / "served") as running:
        yield running


def client(**kwargs) -> HttpClient:
    return HttpClient(sleep=lambda _: None, timeout=(2.0, 2.0), **kwargs)


def test_download_verifies_and_renames(server, payload, tmp_path):
    dest = tmp_path / "out" / "data.bin"
    result = download_file(client(), server.url("data.bin"), dest, md5=hashlib.md5(payload).hexdigest(),
                           sha256=hashlib.sha256(payload).hexdigest(), expected_size=SIZE, progress=False)
    assert result == dest
    assert dest.read_bytes() == payload
    assert not partial_path(dest).exists()


def test_existing_verified_file_is_not_downloaded_again(server, payload, tmp_path):
    dest = tmp_path / "data.bin"
    digest = hashlib.sha256(payload).hexdigest()
    download_file(client(), server.url("data.bin"), dest, sha256=digest, progress=False)
    download_file(client(), server.url("data.bin"), dest, sha256=digest, progress=False)
    assert len(server.requests) == 1


def test_resume_rehashes_kept_part_and_sends_range(server, payload, tmp_path):
    dest = tmp_path / "data.bin"
    partial_path(dest).write_bytes(payload[:1_000_000])
    download_file(client(), server.url("data.bin"), dest, sha256=hashlib.sha256(payload).hexdigest(),
                  progress=False)
    assert dest.read_bytes() == payload
    assert server.requests[0].range == "bytes=1000000-"
    assert server.requests[0].status == 206


def test_resume_falls_back_to_full_download_on_200(server, payload, tmp_path):
    dest = tmp_path / "data.bin"
    partial_path(dest).write_bytes(b"x" * 1000)  # wrong bytes: only a full download can pass the hash
    server.add_fault("data.bin", Fault("ignore-range"))
    download_file(client(), server.url("data.bin"), dest, md5=hashlib.md5(payload).hexdigest(), progress=False)
    assert dest.read_bytes() == payload
    assert server.requests[0].status == 200


def test_connection_closed_mid_body_resumes(server, payload, tmp_path):
    server.add_fault("data.bin", Fault("truncate", after_bytes=2_500_000))
    dest = tmp_path / "data.bin"
    download_file(client(), server.url("data.bin"), dest, sha256=hashlib.sha256(payload).hexdigest(),
                  progress=False)
    assert dest.read_bytes() == payload
    first, second = server.requests
    assert first.range is None
    # Only whole read chunks reach the disk, so the resume starts at the last complete one.
    assert second.range == f"bytes={2 * 1024 * 1024}-"
    assert second.status == 206


def test_without_resume_restarts_from_zero(server, payload, tmp_path):
    server.add_fault("data.bin", Fault("truncate", after_bytes=2_500_000))
    dest = tmp_path / "data.bin"
    download_file(client(), server.url("data.bin"), dest, resume=False, progress=False)
    assert dest.read_bytes() == payload
    assert [r.range for r in server.requests] == [None, None]


def test_checksum_mismatch_deletes_partial(server, tmp_path):
    dest = tmp_path / "data.bin"
    with pytest.raises(FetchError) as error:
        download_file(client(), server.url("data.bin?sig=hidden"), dest, md5="0" * 32, progress=False)
    message = str(error.value)
    assert "MD5" in message
    assert "expected " + "0" * 32 in message
    assert "hidden" not in message
    assert not dest.exists()
    assert not partial_path(dest).exists()


def test_size_mismatch_is_reported(server, tmp_path):
    dest = tmp_path / "data.bin"
    with pytest.raises(FetchError, match=f"size {SIZE} bytes, expected 10"):
        download_file(client(), server.url("data.bin"), dest, expected_size=10, progress=False)
    assert not dest.exists()


def test_html_content_type_is_rejected(server, tmp_path):
    server.add_fault("data.bin", Fault("html"))
    dest = tmp_path / "data.bin"
    with pytest.raises(FetchError, match="HTML page instead of the file"):
        download_file(client(), server.url("data.bin"), dest, progress=False)
    assert not dest.exists()
    assert not partial_path(dest).exists()


def test_html_body_with_binary_content_type_is_rejected(server, tmp_path):
    server.add_fault("data.bin", Fault("html-octet"))
    dest = tmp_path / "data.bin"
    with pytest.raises(FetchError, match="the body is an HTML page"):
        download_file(client(), server.url("data.bin"), dest, progress=False)
    assert not dest.exists()
    assert not partial_path(dest).exists()


def test_stalled_server_times_out_and_keeps_partial_for_resume(server, payload, tmp_path):
    server.add_fault("data.bin", Fault("stall", after_bytes=2_500_000))
    server.add_fault("data.bin", Fault("stall", after_bytes=0), times=2)
    dest = tmp_path / "data.bin"
    with pytest.raises(FetchError, match=r"failed 3 times while receiving data \(timed out\)"):
        download_file(HttpClient(sleep=lambda _: None, timeout=(1.0, 0.3), retries=2), server.url("data.bin"),
                      dest, progress=False)
    assert not dest.exists()
    assert partial_path(dest).stat().st_size == 2 * 1024 * 1024


def test_http_error_status_is_reported(server, tmp_path):
    with pytest.raises(FetchError, match="returned HTTP 404"):
        download_file(client(), server.url("absent.bin"), tmp_path / "absent.bin", progress=False)


def test_looks_like_html_ignores_leading_whitespace():
    assert looks_like_html(b"\n  <!DOCTYPE HTML><html>")
    assert looks_like_html(b"<html lang='en'>")
    assert not looks_like_html(b"\x1f\x8b\x08\x00")
