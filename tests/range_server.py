"""Test helper: a loopback HTTP file server with Range requests, throttling and faults.

Serves the files under a root folder at ``http://127.0.0.1:<port>/<relative path>``
with GET and HEAD, ``Accept-Ranges: bytes``, single-range requests (206 with
Content-Range, 416 when unsatisfiable) and an optional bandwidth limit.
Faults are queued per path and each applies to one request:

- ``truncate``: send the full Content-Length, then close after ``after_bytes``.
- ``html``: respond 200 with a ``text/html`` page instead of the file.
- ``html-octet``: the same page, labelled ``application/octet-stream``.
- ``stall``: send the headers and ``after_bytes`` of the body, then stop
  sending until the server stops (for client read timeouts).
- ``status``: respond with ``status`` (for example 500 or 429) with an optional
  Retry-After header.
- ``ignore-range``: respond 200 with the whole file even when a Range was sent.

Every request is recorded in ``server.requests`` (method, path, Range header,
status), so tests can check that a client resumed with a Range request.
"""
from __future__ import annotations

import re
import threading
import time
from collections import defaultdict, deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

CHUNK_BYTES = 64 * 1024

HTML_PAGE = (
    b"<!DOCTYPE html><html><head><title>Google Drive - Virus scan warning</title></head>"
    b"<body>Google Drive can't scan this file for viruses.</body></html>"
)

_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")


@dataclass
class Fault:
    """One fault to apply to the next request for a path."""

    kind: str
    after_bytes: int = 0
    status: int = 500
    retry_after: str | None = None


@dataclass
class RequestRecord:
    """One request the server received and the status it sent."""

    method: str
    path: str
    range: str | None
    status: int
    user_agent: str | None = None


@dataclass
class _State:
    root: Path
    bytes_per_second: float | None = None
    faults: dict[str, deque[Fault]] = field(default_factory=lambda: defaultdict(deque))
    requests: list[RequestRecord] = field(default_factory=list)
    stopping: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    state: _State  # set on the subclass that RangeServer creates

    def log_message(self, format: str, *args) -> None:  # noqa: A002 (signature fixed by the base class)
        pass

    def do_HEAD(self) -> None:
        self._serve(send_body=False)

    def do_GET(self) -> None:
        self._serve(send_body=True)

    def _record(self, status: int) -> None:
        with self.state.lock:
            self.state.requests.append(
                RequestRecord(self.command, self._relative_path(), self.headers.get("Range"), status,
                              self.headers.get("User-Agent"))
            )

    def _relative_path(self) -> str:
        return unquote(urlsplit(self.path).path).lstrip("/")

    def _next_fault(self) -> Fault | None:
        with self.state.lock:
            queue = self.state.faults.get(self._relative_path())
            return queue.popleft() if queue else None

    def _serve(self, *, send_body: bool) -> None:
        fault = self._next_fault()
        if fault is not None and fault.kind == "status":
            self._send_simple(fault.status, b"server error\n", retry_after=fault.retry_after)
            return
        if fault is not None and fault.kind in ("html", "html-octet"):
            content_type = "text/html; charset=utf-8" if fault.kind == "html" else "application/octet-stream"
            self._send_simple(200, HTML_PAGE, content_type=content_type, send_body=send_body)
            return

        root = self.state.root.resolve()
        path = (root / self._relative_path()).resolve()
        if not path.is_relative_to(root) or not path.is_file():
            self._send_simple(404, b"not found\n", send_body=send_body)
            return

        size = path.stat().st_size
        byte_range = None if fault is not None and fault.kind == "ignore-range" else self.headers.get("Range")
        first, last, status = self._parse_range(byte_range, size)
        if status == 416:
            self._send_simple(416, b"", extra={"Content-Range": f"bytes */{size}"}, send_body=send_body)
            return

        # Record before responding, so a client that returns on the headers
        # finds its request in the log.
        self._record(status)
        self.send_response(status)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Content-Length", str(last - first + 1))
        if status == 206:
            self.send_header("Content-Range", f"bytes {first}-{last}/{size}")
        if fault is not None:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        if send_body:
            self._send_file(path, first, last, fault)

    def _parse_range(self, header: str | None, size: int) -> tuple[int, int, int]:
        """Return (first, last, status) for a Range header: 200 whole file, 206 part, 416 unsatisfiable."""
        if not header:
            return 0, size - 1, 200
        match = _RANGE.match(header.strip())
        if not match or (not match.group(1) and not match.group(2)):
            return 0, size - 1, 200  # RFC 9110: a server may ignore a Range it cannot parse
        if match.group(1):
            first = int(match.group(1))
            last = min(int(match.group(2)), size - 1) if match.group(2) else size - 1
        else:
            first, last = max(0, size - int(match.group(2))), size - 1
        if first >= size or first > last:
            return 0, 0, 416
        return first, last, 206

    def _send_file(self, path: Path, first: int, last: int, fault: Fault | None) -> None:
        limit = last - first + 1
        if fault is not None and fault.kind in ("truncate", "stall"):
            limit = min(limit, fault.after_bytes)
        sent = 0
        started = time.monotonic()
        try:
            with open(path, "rb") as handle:
                handle.seek(first)
                while sent < limit:
                    chunk = handle.read(min(CHUNK_BYTES, limit - sent))
                    if not chunk:
                        break
                    self.wfile.write(chunk)
                    sent += len(chunk)
                    self._throttle(sent, started)
                self.wfile.flush()
                if fault is not None and fault.kind == "stall":
                    self.state.stopping.wait()
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    def _throttle(self, sent: int, started: float) -> None:
        rate = self.state.bytes_per_second
        if rate:
            ahead = sent / rate - (time.monotonic() - started)
            if ahead > 0:
                time.sleep(ahead)

    def _send_simple(
        self,
        status: int,
        body: bytes,
        *,
        content_type: str = "text/plain",
        retry_after: str | None = None,
        extra: dict[str, str] | None = None,
        send_body: bool = True,
    ) -> None:
        self._record(status)
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        if retry_after is not None:
            self.send_header("Retry-After", retry_after)
        for name, value in (extra or {}).items():
            self.send_header(name, value)
        self.end_headers()
        if send_body:
            self.wfile.write(body)


class RangeServer:
    """A file server on 127.0.0.1 (port chosen by the OS), used as a context manager."""

    def __init__(self, root: str | Path, *, bytes_per_second: float | None = None) -> None:
        self.state = _State(root=Path(root), bytes_per_second=bytes_per_second)
        handler = type("Handler", (_Handler,), {"state": self.state})
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.httpd.daemon_threads = True
        # A short poll interval keeps stop() (and so each test's teardown) fast.
        self._thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    @property
    def base_url(self) -> str:
        """The server's URL, ending with a slash."""
        host, port = self.httpd.server_address[:2]
        return f"http://{host}:{port}/"

    def url(self, relative_path: str) -> str:
        """The URL of a file under the root folder."""
        return self.base_url + relative_path.lstrip("/")

    @property
    def requests(self) -> list[RequestRecord]:
        """The requests served so far, oldest first."""
        with self.state.lock:
            return list(self.state.requests)

    def add_fault(self, relative_path: str, fault: Fault, times: int = 1) -> None:
        """Queue ``fault`` for the next ``times`` requests of ``relative_path``."""
        with self.state.lock:
            self.state.faults[relative_path.lstrip("/")].extend([fault] * times)

    def set_rate(self, bytes_per_second: float | None) -> None:
        """Limit the body rate of each response, or remove the limit with None."""
        self.state.bytes_per_second = bytes_per_second

    def start(self) -> RangeServer:
        """Start serving in a background thread."""
        self._thread.start()
        return self

    def stop(self) -> None:
        """Release stalled responses, stop serving and close the socket."""
        if self.state.stopping.is_set():
            return
        self.state.stopping.set()
        self.httpd.shutdown()
        self.httpd.server_close()

    def __enter__(self) -> RangeServer:
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()
