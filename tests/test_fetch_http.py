"""Tests of HttpClient: retries, Retry-After, timeouts and the User-Agent, against a loopback server."""
from __future__ import annotations

import email.utils
import logging
import time

import pytest

from ctspine_builder import __version__
from ctspine_builder.errors import FetchError, HostUnreachableError
from ctspine_builder.fetch import http
from ctspine_builder.fetch.http import HttpClient, parse_retry_after, redact_url
from tests.range_server import Fault, RangeServer


@pytest.fixture()
def server(tmp_path):
    (tmp_path / "file.bin").write_bytes(b"payload" * 100)
    with RangeServer(tmp_path) as running:
        yield running


def recording_client(delays: list[float], **kwargs) -> HttpClient:
    return HttpClient(sleep=delays.append, backoff_s=0.5, **kwargs)


def test_user_agent_names_tool_and_version(server):
    HttpClient().get(server.url("file.bin"))
    assert server.requests[0].user_agent == f"ctspine_builder/{__version__}"


def test_429_honours_retry_after(server, caplog):
    server.add_fault("file.bin", Fault("status", status=429, retry_after="7"))
    delays: list[float] = []
    with caplog.at_level(logging.WARNING, logger="ctspine_builder.fetch.http"):
        response = recording_client(delays).get(server.url("file.bin"))
    assert response.status_code == 200
    assert delays == [7.0]
    assert "HTTP 429" in caplog.text
    assert "4 retries left" in caplog.text


def test_500_retried_with_growing_backoff(server):
    server.add_fault("file.bin", Fault("status", status=500), times=3)
    delays: list[float] = []
    response = recording_client(delays).get(server.url("file.bin"))
    assert response.status_code == 200
    assert len(delays) == 3
    assert 0.5 <= delays[0] <= 0.75
    assert 1.0 <= delays[1] <= 1.5
    assert 2.0 <= delays[2] <= 3.0


def test_retries_exhausted_raise_fetch_error(server):
    server.add_fault("file.bin", Fault("status", status=503), times=3)
    with pytest.raises(FetchError) as error:
        recording_client([], retries=2).get(server.url("file.bin?token=secret"))
    message = str(error.value)
    assert "failed after 3 attempts: HTTP 503" in message
    assert "secret" not in message


def test_404_returned_without_retry(server):
    delays: list[float] = []
    response = recording_client(delays).get(server.url("missing.bin"))
    assert response.status_code == 404
    assert delays == []


def test_connection_refused_is_retried_then_fails():
    delays: list[float] = []
    client = recording_client(delays, retries=2, timeout=(0.5, 0.5))
    with pytest.raises(FetchError, match="connection failed"):
        client.get("http://127.0.0.1:9/nothing")  # port 9 (discard) is closed on the test machine
    assert len(delays) == 2


def test_read_timeout_is_reported(server):
    server.add_fault("file.bin", Fault("stall", after_bytes=0), times=3)
    client = recording_client([], retries=1, timeout=(1.0, 0.3))
    with pytest.raises(FetchError, match="timed out"):
        client.get(server.url("file.bin"))


def test_parse_retry_after_seconds_and_date():
    assert parse_retry_after("120") == 120.0
    now = time.time()
    date = email.utils.formatdate(now + 30, usegmt=True)
    assert 28 <= parse_retry_after(date, now=now) <= 31
    assert parse_retry_after("soon") is None
    assert parse_retry_after(None) is None


def test_redact_url_drops_query_and_credentials():
    assert redact_url("https://user:pw@example.org:8443/a/b?token=x") == "https://example.org:8443/a/b?..."


def test_unreachable_host_fails_fast_afterwards():
    delays: list[float] = []
    client = recording_client(delays, retries=2, timeout=(0.5, 0.5))
    with pytest.raises(HostUnreachableError, match="failed after 3 attempts: connection failed"):
        client.get("http://127.0.0.1:9/first")
    assert len(delays) == 2

    # A second request, even from a new client, is not sent and not retried.
    other = recording_client(delays, retries=2, timeout=(0.5, 0.5))
    with pytest.raises(HostUnreachableError, match="not sent: the host could not be connected to"):
        other.get("http://127.0.0.1:9/second")
    assert len(delays) == 2


def test_unreachable_host_tried_again_after_recheck_time(monkeypatch):
    client = recording_client([], retries=0, timeout=(0.5, 0.5))
    with pytest.raises(HostUnreachableError):
        client.get("http://127.0.0.1:9/first")
    later = time.monotonic() + http.UNREACHABLE_RECHECK_S + 1
    monkeypatch.setattr(http.time, "monotonic", lambda: later)
    with pytest.raises(HostUnreachableError, match="failed after 1 attempts"):
        client.get("http://127.0.0.1:9/second")


def test_read_timeout_does_not_mark_host_unreachable(server):
    server.add_fault("file.bin", Fault("stall", after_bytes=0), times=2)
    client = recording_client([], retries=1, timeout=(1.0, 0.3))
    with pytest.raises(FetchError, match="timed out") as raised:
        client.get(server.url("file.bin"))
    assert not isinstance(raised.value, HostUnreachableError)
    assert client.get(server.url("file.bin")).status_code == 200


def test_unreachable_proxy_counts_as_connect_failure(monkeypatch):
    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:9")
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    client = recording_client([], retries=0, timeout=(0.5, 0.5))
    with pytest.raises(HostUnreachableError):
        client.get("http://127.0.0.2:8/through-proxy")
    with pytest.raises(HostUnreachableError, match="not sent"):
        client.get("http://127.0.0.2:8/again")
