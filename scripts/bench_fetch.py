"""Benchmark of the fetch stage: download_file against curl on one loopback Range server.

The server (tests/range_server.py) runs in its own process so that its CPU
time is not counted against the client. For each rate limit (50 MB/s,
200 MB/s and none) the script downloads the same file several times with
three clients: `curl -o`, download_file without a checksum, and
download_file checking SHA-256. It reports the median throughput, the ratio
to curl and the client's CPU seconds per GB (resource.getrusage). With --write it
replaces the "Fetch" section of docs/benchmarks.md.

Run: python scripts/bench_fetch.py [--size-mib 256] [--runs 3] [--write]
"""
from __future__ import annotations

import argparse
import hashlib
import multiprocessing
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from ctspine_builder.fetch.download import download_file  # noqa: E402
from ctspine_builder.fetch.http import HttpClient  # noqa: E402

MB = 1_000_000
RATES = [("50 MB/s", 50 * MB), ("200 MB/s", 200 * MB), ("unthrottled", None)]
SECTION_TITLE = "## Fetch"


@dataclass
class Sample:
    """One download: wall seconds and client CPU seconds (user + system)."""

    wall_s: float
    cpu_s: float


def serve(root: str, rate: float | None, port_queue, stop_event) -> None:
    """Run the Range server in this (child) process until ``stop_event`` is set."""
    from tests.range_server import RangeServer

    with RangeServer(root, bytes_per_second=rate) as server:
        port_queue.put(server.httpd.server_port)
        stop_event.wait()


def cpu_seconds(who: int) -> float:
    usage = resource.getrusage(who)
    return usage.ru_utime + usage.ru_stime


def time_curl(url: str, dest: Path) -> Sample:
    before_cpu = cpu_seconds(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run(["curl", "-s", "-f", "-o", str(dest), url], check=True)
    wall = time.perf_counter() - start
    return Sample(wall, cpu_seconds(resource.RUSAGE_CHILDREN) - before_cpu)


def time_download_file(url: str, dest: Path, sha256: str | None) -> Sample:
    before_cpu = cpu_seconds(resource.RUSAGE_SELF)
    start = time.perf_counter()
    with HttpClient() as client:
        download_file(client, url, dest, sha256=sha256, resume=False, progress=False)
    wall = time.perf_counter() - start
    return Sample(wall, cpu_seconds(resource.RUSAGE_SELF) - before_cpu)


def run_rate(root: Path, rate: float | None, size: int, runs: int, digest: str) -> dict[str, list[Sample]]:
    """Download the file ``runs`` times with each client at one rate limit."""
    ctx = multiprocessing.get_context("spawn")
    ports, stop = ctx.Queue(), ctx.Event()
    process = ctx.Process(target=serve, args=(str(root), rate, ports, stop), daemon=True)
    process.start()
    try:
        url = f"http://127.0.0.1:{ports.get(timeout=30)}/payload.bin"
        samples: dict[str, list[Sample]] = {"curl": [], "download_file": [], "download_file + SHA-256": []}
        with tempfile.TemporaryDirectory() as out:
            dest = Path(out) / "copy.bin"
            for _ in range(runs):
                for name in samples:
                    dest.unlink(missing_ok=True)
                    if name == "curl":
                        sample = time_curl(url, dest)
                    else:
                        sample = time_download_file(url, dest, digest if "SHA" in name else None)
                    if dest.stat().st_size != size:
                        raise SystemExit(f"{name} wrote {dest.stat().st_size} bytes, expected {size}")
                    samples[name].append(sample)
        return samples
    finally:
        stop.set()
        process.join(timeout=10)


def format_section(results: list[tuple[str, dict[str, list[Sample]]]], size: int, runs: int) -> str:
    lines = [
        SECTION_TITLE,
        "",
        f"Command: `python scripts/bench_fetch.py --size-mib {size // (1 << 20)} --runs {runs} --write`.",
        f"Machine: {os.cpu_count()} cores, {platform.machine()}, Python {platform.python_version()}, "
        f"curl {subprocess.run(['curl', '--version'], capture_output=True, text=True).stdout.split()[1]}; "
        "other jobs shared the cores, so treat small differences as noise.",
        f"One {size // (1 << 20)} MiB file served over 127.0.0.1 by tests/range_server.py in its own process, "
        f"median of {runs} runs per client; CPU is the client's user + system time per GB "
        "(curl as a child process, download_file in the benchmark process).",
        "",
        "| server rate | client | median MB/s | ratio to curl | CPU s/GB |",
        "| --- | --- | --- | --- | --- |",
    ]
    for label, samples in results:
        curl_rate = size / statistics.median(s.wall_s for s in samples["curl"]) / MB
        for name, runs_of_client in samples.items():
            rate = size / statistics.median(s.wall_s for s in runs_of_client) / MB
            cpu_per_gb = statistics.median(s.cpu_s for s in runs_of_client) / (size / 1e9)
            lines.append(f"| {label} | {name} | {rate:.0f} | {rate / curl_rate:.2f} | {cpu_per_gb:.2f} |")
    lines.append("")
    return "\n".join(lines)


def write_section(section: str) -> Path:
    """Replace (or append) the Fetch section of docs/benchmarks.md, leaving other sections alone."""
    path = REPO_ROOT / "docs" / "benchmarks.md"
    text = path.read_text(encoding="utf-8") if path.is_file() else "# Benchmarks\n\n"
    start = text.find(SECTION_TITLE + "\n")
    if start < 0:
        text = text.rstrip("\n") + "\n\n" + section
    else:
        end = text.find("\n## ", start + len(SECTION_TITLE))
        text = text[:start] + section + (text[end + 1:] if end >= 0 else "")
    path.write_text(text, encoding="utf-8")
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=256, help="size of the served file in MiB")
    parser.add_argument("--runs", type=int, default=3, help="downloads per client and rate (median reported)")
    parser.add_argument("--write", action="store_true", help="write the Fetch section of docs/benchmarks.md")
    args = parser.parse_args()
    if shutil.which("curl") is None:
        raise SystemExit("curl not found; install it to compare against it")

    size = args.size_mib << 20
    with tempfile.TemporaryDirectory() as root:
        payload = Path(root) / "payload.bin"
        digest = hashlib.sha256()
        with open(payload, "wb") as handle:
            for _ in range(args.size_mib):
                block = os.urandom(1 << 20)
                digest.update(block)
                handle.write(block)
        results = []
        for label, rate in RATES:
            results.append((label, run_rate(Path(root), rate, size, args.runs, digest.hexdigest())))
            print(f"done: {label}", file=sys.stderr)
    section = format_section(results, size, args.runs)
    print(section)
    if args.write:
        print(f"wrote {write_section(section)}", file=sys.stderr)


if __name__ == "__main__":
    main()
