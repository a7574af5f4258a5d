"""Tests for the loopback Range server that the fetch tests rely on."""
from __future__ import annotations

from pathlib import Path

import pytest
import requests

from range_server import HTML_PAGE, Fault, RangeServer

DATA = bytes(range(256)) * 40  # 10,240 bytes


@pytest.fixture
def server(tmp_path: Path):
    (tmp_path / "file.bin").write_bytes(DATA)
    with RangeServer(tmp_path) as running:
        yield running


@pytest.mark.parametrize(
    "header, first, last",
    [("bytes=0-99", 0, 99), ("bytes=10000-", 10000, 10239), ("bytes=-40", 10200, 10239), ("bytes=10200-99999", 10200, 10239)],
)
def test_range_partial_content(server: RangeServer, header: str, first: int, last: int) -> None:
    response = requests.get(server.url("file.bin"), headers={"Range": header}, timeout=5)
    assert response.status_code == 206
    assert response.headers["Content-Range"] == f"bytes {first}-{last}/{len(DATA)}"
    assert response.content == DATA[first:last + 1]


def test_range_unsatisfiable(server: RangeServer) -> None:
    response = requests.get(server.url("file.bin"), headers={"Range": "bytes=20000-"}, timeout=5)
    assert response.status_code == 416
    assert response.headers["Content-Range"] == f"bytes */{len(DATA)}"


def test_head_and_full_get(server: RangeServer) -> None:
    head = requests.head(server.url("file.bin"), timeout=5)
    assert head.status_code == 200
    assert head.headers["Content-Length"] == str(len(DATA))
    assert head.headers["Accept-Ranges"] == "bytes"
    assert requests.get(server.url("file.bin"), timeout=5).content == DATA
    assert [(r.method, r.status) for r in server.requests] == [("HEAD", 200), ("GET", 200)]


def test_missing_file_and_escape(server: RangeServer) -> None:
    assert requests.get(server.url("absent.bin"), timeout=5).status_code == 404
    assert requests.get(server.base_url + "%2e%2e/etc/passwd", timeout=5).status_code == 404


def test_faults_apply_once(server: RangeServer) -> None:
    server.add_fault("file.bin", Fault("status", status=429, retry_after="3"))
    server.add_fault("file.bin", Fault("html"))
    server.add_fault("file.bin", Fault("ignore-range"))

    limited = requests.get(server.url("file.bin"), timeout=5)
    assert limited.status_code == 429
    assert limited.headers["Retry-After"] == "3"
    page = requests.get(server.url("file.bin"), timeout=5)
    assert page.headers["Content-Type"].startswith("text/html")
    assert page.content == HTML_PAGE
    whole = requests.get(server.url("file.bin"), headers={"Range": "bytes=5-"}, timeout=5)
    assert whole.status_code == 200
    assert whole.content == DATA
    assert requests.get(server.url("file.bin"), headers={"Range": "bytes=5-"}, timeout=5).status_code == 206


def test_truncate_closes_early(server: RangeServer) -> None:
    server.add_fault("file.bin", Fault("truncate", after_bytes=1000))
    with pytest.raises(requests.exceptions.ChunkedEncodingError):
        requests.get(server.url("file.bin"), timeout=5).content


def test_stall_times_out(server: RangeServer) -> None:
    server.add_fault("file.bin", Fault("stall", after_bytes=100))
    with pytest.raises(requests.exceptions.ConnectionError):
        requests.get(server.url("file.bin"), timeout=(2, 0.3)).content
