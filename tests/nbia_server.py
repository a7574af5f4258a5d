"""A loopback stand-in for TCIA's NBIA REST API v4, for tests of the tcia source and `ctspine lock`.

It serves getSeries, getSeriesMetadata, getImage and getMD5Hierarchy for
series kept in memory, with the real server's habits. JSON leaves out null
fields, no match gives an empty body, and unknown parameters or series get
HTTP 400. getImage zips (DICOM files, LICENSE, md5hashes.csv) are sent with
chunked transfer encoding and no Content-Length. Faults are switched on per
test through `NbiaServer.faults`.
"""
from __future__ import annotations

import hashlib
import io
import json
import socket
import struct
import threading
import time
import zipfile
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

GET_IMAGE_PARAMS = {"SeriesInstanceUID", "IncludeMD5"}
LICENSE_TEXT = "Creative Commons Attribution 4.0 International License\nhttps://creativecommons.org/licenses/by/4.0/\n"


@dataclass
class FakeSeries:
    """One series the stand-in serves: getSeries fields plus the DICOM file bytes by name."""

    collection: str
    patient_id: str
    series_uid: str
    study_uid: str
    files: dict[str, bytes]
    series_number: object = 3
    series_description: str | None = "SERIES"
    study_date: str | None = "2001-06-04 00:00:00.0"
    study_desc: str | None = "STUDY"
    study_id: str | None = None
    modality: str = "CT"
    license_name: str = "Creative Commons Attribution 4.0 International License"
    license_uri: str = "https://creativecommons.org/licenses/by/4.0/"

    def md5s(self) -> dict[str, str]:
        """Return each file's MD5 by file name."""
        return {name: hashlib.md5(data).hexdigest() for name, data in self.files.items()}

    def series_md5(self) -> str:
        """Return the series MD5 as getMD5Hierarchy defines it."""
        return hashlib.md5("".join(sorted(self.md5s().values())).encode()).hexdigest()

    def record(self) -> dict:
        """Return the getSeries JSON record, leaving out fields that are None as NBIA does."""
        values = {
            "SeriesInstanceUID": self.series_uid,
            "StudyInstanceUID": self.study_uid,
            "Modality": self.modality,
            "SeriesNumber": self.series_number,
            "SeriesDescription": self.series_description,
            "StudyDate": self.study_date,
            "StudyDesc": self.study_desc,
            "Collection": self.collection,
            "PatientID": self.patient_id,
            "ImageCount": len(self.files),
            "FileSize": sum(len(data) for data in self.files.values()),
            "LicenseName": self.license_name,
            "LicenseURI": self.license_uri,
        }
        return {key: value for key, value in values.items() if value is not None}


def series_from_folder(
    folder: Path,
    *,
    collection: str,
    patient_id: str,
    series_uid: str | None = None,
    study_uid: str | None = None,
    **fields,
) -> FakeSeries:
    """Build a FakeSeries from a folder of DICOM files.

    The UIDs come from the first file unless given; give them for files
    whose UIDs were blanked (NBIA always lists both).
    """
    import pydicom

    paths = [path for path in sorted(folder.iterdir()) if path.is_file()]
    files = {path.name: path.read_bytes() for path in paths}
    first = pydicom.dcmread(paths[0], stop_before_pixels=True)
    series_uid = series_uid or str(first.get("SeriesInstanceUID", ""))
    study_uid = study_uid or str(first.get("StudyInstanceUID", ""))
    if not series_uid or not study_uid:
        raise ValueError(f"{folder} has blank UIDs; pass series_uid and study_uid")
    return FakeSeries(collection, patient_id, series_uid, study_uid, files, **fields)


@dataclass
class Faults:
    """Fault switches; each count is how many getImage (or every) requests it applies to."""

    status_429: int = 0          # return 429 with Retry-After
    retry_after: str = "1"
    status_500: int = 0          # return 500
    reset_mid_body: int = 0      # send part of the zip, then reset the connection
    short_zip: int = 0           # a well-formed zip that lacks its last DICOM file
    wrong_md5: int = 0           # md5hashes.csv lists a wrong MD5 for one file
    stall_s: float = 0.0         # send the headers, then stall this long before the body
    html: int = 0                # an HTML page with HTTP 200 instead of the zip
    extra_entries: dict[str, bytes] = field(default_factory=dict)  # added to every zip as-is
    symlink_entry: str | None = None  # add a zip entry with a symbolic link mode


class NbiaServer:
    """The stand-in server on 127.0.0.1 with a free port; use as a context manager."""

    def __init__(self, series: list[FakeSeries] | None = None, *, chunk_bytes: int = 64 * 1024) -> None:
        self.series: list[FakeSeries] = list(series or [])
        self.faults = Faults()
        self.requests: list[tuple[str, str, dict]] = []  # (method, path, headers)
        self.chunk_bytes = chunk_bytes
        self.active_images = 0
        self.max_active_images = 0
        self._counter = threading.Lock()
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), _make_handler(self))
        self.httpd.daemon_threads = True
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        """Return the base URL, ending in a slash like the real v4 base URL."""
        return f"http://127.0.0.1:{self.httpd.server_port}/nbia-api/services/v4/"

    def add(self, series: FakeSeries) -> FakeSeries:
        """Serve one more series."""
        self.series.append(series)
        return series

    def find(self, series_uid: str) -> FakeSeries | None:
        """Return the served series with this UID, or None."""
        return next((s for s in self.series if s.series_uid == series_uid), None)

    def count(self, endpoint: str) -> int:
        """Return how many requests reached an endpoint."""
        return sum(1 for _, path, _ in self.requests if path.endswith("/" + endpoint))

    def __enter__(self) -> NbiaServer:
        self._thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def take_fault(self, name: str) -> bool:
        """Use up one occurrence of a counted fault; return True when it applies to this request."""
        with self._counter:
            remaining = getattr(self.faults, name)
            if remaining > 0:
                setattr(self.faults, name, remaining - 1)
                return True
            return False

    def build_zip(self, series: FakeSeries) -> bytes:
        """Return the getImage zip for a series, with the switched-on zip faults applied."""
        files = dict(series.files)
        md5s = series.md5s()
        if self.take_fault("short_zip"):
            dropped = sorted(files)[-1]
            del files[dropped]
            del md5s[dropped]
        if self.take_fault("wrong_md5"):
            name = sorted(md5s)[0]
            md5s[name] = "0" * 32
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:
            rows = list(md5s.items())[::-1]  # rows in no particular order, as NBIA sends them
            archive.writestr("md5hashes.csv", "Filename,MD5Hash\n" + "".join(f"{n},{m}\n" for n, m in rows))
            for name, data in files.items():
                archive.writestr(name, data)
            archive.writestr("LICENSE", LICENSE_TEXT)
            for name, data in self.faults.extra_entries.items():
                archive.writestr(name, data)
            if self.faults.symlink_entry:
                info = zipfile.ZipInfo(self.faults.symlink_entry)
                info.external_attr = (0o120777 << 16)
                archive.writestr(info, "/etc/passwd")
        return buffer.getvalue()


def _make_handler(server: NbiaServer):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format, *args) -> None:  # keep test output quiet
            pass

        def _params(self) -> dict[str, str]:
            query = parse_qs(urlsplit(self.path).query, keep_blank_values=True)
            if self.command == "POST":
                length = int(self.headers.get("Content-Length") or 0)
                query.update(parse_qs(self.rfile.read(length).decode(), keep_blank_values=True))
            return {key: values[0] for key, values in query.items()}

        def _send(self, status: int, body: bytes, content_type: str = "application/json", headers=None) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            for key, value in (headers or {}).items():
                self.send_header(key, value)
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:
            self._dispatch()

        def do_POST(self) -> None:
            self._dispatch()

        def _dispatch(self) -> None:
            endpoint = urlsplit(self.path).path.rsplit("/", 1)[-1]
            server.requests.append((self.command, urlsplit(self.path).path, dict(self.headers)))
            params = self._params()
            if server.take_fault("status_429"):
                return self._send(429, b"Too Many Requests", "text/plain", {"Retry-After": server.faults.retry_after})
            if server.take_fault("status_500"):
                return self._send(500, b"Internal Server Error", "text/plain")
            handler = {
                "getSeries": self._get_series,
                "getSeriesMetadata": self._get_series_metadata,
                "getMD5Hierarchy": self._get_md5_hierarchy,
                "getImage": self._get_image,
            }.get(endpoint)
            if handler is None:
                return self._send(404, b"not found", "text/plain")
            handler(params)

        def _get_series(self, params: dict) -> None:
            records = [
                s.record() for s in server.series
                if s.collection == params.get("Collection") and s.patient_id == params.get("PatientID")
            ]
            self._send(200, json.dumps(records).encode() if records else b"")

        def _get_series_metadata(self, params: dict) -> None:
            uids = [uid for uid in params.get("list", "").split(",") if uid]
            records = []
            for series in filter(None, map(server.find, uids)):
                record = {"Series UID": series.series_uid, "Study UID": series.study_uid}
                if series.study_id is not None:
                    record["Study ID"] = series.study_id
                records.append(record)
            self._send(200, json.dumps(records).encode() if records else b"")

        def _get_md5_hierarchy(self, params: dict) -> None:
            series = server.find(params.get("SeriesInstanceUID", ""))
            if series is None:
                return self._send(400, b"series not found", "text/plain")
            self._send(200, series.series_md5().encode(), "text/plain")

        def _get_image(self, params: dict) -> None:
            series = server.find(params.get("SeriesInstanceUID", ""))
            if set(params) - GET_IMAGE_PARAMS or series is None:
                return self._send(400, b"bad request", "text/plain")
            if server.take_fault("html"):
                return self._send(200, b"<!DOCTYPE html><html><body>Maintenance</body></html>", "text/html")
            with server._counter:
                server.active_images += 1
                server.max_active_images = max(server.max_active_images, server.active_images)
            try:
                self._stream_zip(server.build_zip(series))
            finally:
                with server._counter:
                    server.active_images -= 1

        def _stream_zip(self, body: bytes) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "application/x-zip")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            if server.faults.stall_s:
                self.wfile.flush()
                time.sleep(server.faults.stall_s)
            reset = server.take_fault("reset_mid_body")
            step = server.chunk_bytes
            for offset in range(0, len(body), step):
                if reset and offset >= len(body) // 2:
                    # SO_LINGER with a zero timeout makes close() send a TCP RST.
                    self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    self.connection.close()
                    self.close_connection = True
                    return
                chunk = body[offset:offset + step]
                self.wfile.write(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
            self.wfile.write(b"0\r\n\r\n")

    return Handler
