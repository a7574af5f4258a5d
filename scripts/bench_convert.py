"""Benchmark of the convert stage: ctspine convert against dcm2niix and SimpleITK.

Converts one DICOM series (default: the shared Siemens JPEG 2000 series) a
few times with each tool, takes the median wall and CPU time of each and
writes the "Conversion" section of docs/benchmarks.md.

    python scripts/bench_convert.py [--dicom DIR] [--runs 5] [--no-write]
    python scripts/bench_convert.py --slices 200 --no-write

With --slices N, the input is instead a synthetic N-slice JPEG 2000 series
built from the shared series' pixels (tests/dicomgen.py), to see how
parallel decoding scales with series length.
"""
from __future__ import annotations

import argparse
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DIR = Path(os.environ.get("CTSPINE_SHARED", REPO_ROOT.parent / "shared"))
DEFAULT_DICOM = SHARED_DIR / "data" / "siemens-ct-jpeg2000" / "dicom"
BENCHMARKS = REPO_ROOT / "docs" / "benchmarks.md"
SECTION = "## Conversion"
LONG_SECTION = "## Conversion of a longer series"


def timed(action: Callable[[Path], None], target: Path) -> tuple[float, float]:
    """Run ``action`` once and return (wall seconds, CPU seconds of this process and its children)."""
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    wall, cpu = time.perf_counter(), time.process_time()
    action(target)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu += (after.ru_utime - children.ru_utime) + (after.ru_stime - children.ru_stime)
    return wall, cpu


def ours(dicom: Path, geometry: str, workers: int = 1) -> Callable[[Path], None]:
    """Return a library call of convert_series (imports already paid)."""
    from ctspine_builder.dicom.convert import convert_series

    def action(target: Path) -> None:
        convert_series(dicom, target / "out.nii.gz", geometry=geometry, sidecar_path=target / "out.json",
                       workers=workers)

    return action


def ours_cli(dicom: Path) -> Callable[[Path], None]:
    """Return a run of the `ctspine convert` command, Python start-up and imports included."""
    def action(target: Path) -> None:
        command = shutil.which("ctspine") or str(Path(sys.executable).parent / "ctspine")
        subprocess.run([command, "convert", str(dicom), str(target / "out.nii.gz")], check=True, capture_output=True)

    return action


def dcm2niix(dicom: Path, compress: str) -> Callable[[Path], None]:
    """Return a run of dcm2niix with -z y (gzip) or -z n (no compression)."""
    def action(target: Path) -> None:
        target.mkdir(parents=True, exist_ok=True)
        subprocess.run(["dcm2niix", "-z", compress, "-f", "out", "-o", str(target), str(dicom)],
                       check=True, capture_output=True)

    return action


def simpleitk(dicom: Path) -> Callable[[Path], None]:
    """Return SimpleITK's series read and .nii.gz write, as the CTSpine1K authors converted."""
    import SimpleITK as sitk

    def action(target: Path) -> None:
        target.mkdir(parents=True, exist_ok=True)
        reader = sitk.ImageSeriesReader()
        uid = reader.GetGDCMSeriesIDs(str(dicom))[0]
        reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(dicom), uid))
        sitk.WriteImage(reader.Execute(), str(target / "out.nii.gz"))

    return action


def measure(dicom: Path, runs: int) -> list[tuple[str, float, float]]:
    """Return (tool, median wall s, median CPU s) for every tool available here.

    Runs are interleaved (tool A, B, C, then A, B, C again), so a change in
    the load from other jobs affects every tool alike. One warm-up round
    comes first.
    """
    tools: list[tuple[str, Callable[[Path], None]]] = [
        ("ctspine strict (library call)", ours(dicom, "strict")),
        ("ctspine strict, workers=2 (processes from 64 slices on)", ours(dicom, "strict", workers=2)),
        ("ctspine simpleitk (library call)", ours(dicom, "simpleitk")),
        ("`ctspine convert` command (start-up included)", ours_cli(dicom)),
        ("SimpleITK 2.5 read + WriteImage .nii.gz", simpleitk(dicom)),
    ]
    if shutil.which("dcm2niix"):
        tools += [("dcm2niix -z y", dcm2niix(dicom, "y")), ("dcm2niix -z n", dcm2niix(dicom, "n"))]
    samples: dict[str, list[tuple[float, float]]] = {name: [] for name, _ in tools}
    with tempfile.TemporaryDirectory() as scratch:
        for run in range(runs + 1):
            for number, (name, action) in enumerate(tools):
                measured = timed(action, Path(scratch) / f"{number}-{run}")
                if run > 0:
                    samples[name].append(measured)
    results = []
    for name, _ in tools:
        wall = statistics.median(sample[0] for sample in samples[name])
        cpu = statistics.median(sample[1] for sample in samples[name])
        print(f"{name}: wall {wall:.3f} s, CPU {cpu:.3f} s", flush=True)
        results.append((name, wall, cpu))
    return results


def render(heading: str, command: str, source: str, runs: int, results: list[tuple[str, float, float]],
           load: float) -> str:
    """Return the Markdown section with the command, machine and a table of medians."""
    reference = {name: (wall, cpu) for name, wall, cpu in results}.get("dcm2niix -z y")
    lines = [
        heading,
        "",
        f"Command: `{command}` on {source}.",
        f"Machine: {os.cpu_count()} cores ({platform.processor() or platform.machine()}), Python "
        f"{platform.python_version()}. Other jobs shared the cores (1-minute load average {load:.1f} at the start), "
        "so wall times carry noise; CPU time (user + system, children included) depends less on that load.",
        f"Each figure is the median of {runs} interleaved runs after one warm-up round. "
        "Ratios are to `dcm2niix -z y`; below 1 is faster.",
        "",
        "| tool | wall s | CPU s | wall ratio | CPU ratio |",
        "| --- | --- | --- | --- | --- |",
    ]
    for name, wall, cpu in results:
        wall_ratio = f"{wall / reference[0]:.2f}" if reference else "n/a"
        cpu_ratio = f"{cpu / reference[1]:.2f}" if reference else "n/a"
        lines.append(f"| {name} | {wall:.3f} | {cpu:.3f} | {wall_ratio} | {cpu_ratio} |")
    lines += [
        "",
        "The command's figure includes Python start-up and the imports that `ctspine convert` needs (pydicom, "
        "nibabel, numpy); its difference from the library call is that fixed cost per process. The command "
        "decodes in one process per CPU (at most 4) once a series has 32 slices per process.",
        "",
    ]
    return "\n".join(lines)


def write_section(heading: str, section: str) -> None:
    """Replace the section under ``heading`` in docs/benchmarks.md, keeping the others."""
    text = BENCHMARKS.read_text() if BENCHMARKS.exists() else "# Benchmarks\n\n"
    start = text.find(heading + "\n")
    if start < 0:
        text = text.rstrip("\n") + "\n\n" + section
    else:
        end = text.find("\n## ", start + len(heading))
        rest = "\n" + text[end + 1:] if end >= 0 else ""
        text = text[:start] + section.rstrip("\n") + "\n" + rest
    BENCHMARKS.parent.mkdir(parents=True, exist_ok=True)
    BENCHMARKS.write_text(text)


def synthetic_series(source: Path, slices: int, folder: Path) -> Path:
    """Write an N-slice JPEG 2000 series whose slices repeat the source series' pixels."""
    import numpy as np
    import pydicom

    sys.path.insert(0, str(REPO_ROOT / "tests"))
    import dicomgen

    frames = [pydicom.dcmread(path).pixel_array for path in sorted(source.iterdir())]
    stored = np.stack([frames[k % len(frames)] for k in range(slices)]).astype(np.int32)
    dicomgen.write_series(folder, stored=stored, compression="jpeg2000", unsigned=True, bits_stored=12,
                          pixel_spacing=(0.9765625, 0.9765625), slice_spacing=2.0)
    return folder


def main() -> None:
    """Parse the options, measure and write the section."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dicom", type=Path, default=DEFAULT_DICOM, help="DICOM series folder (default: shared)")
    parser.add_argument("--runs", type=int, default=5, help="timed runs per tool (default: 5)")
    parser.add_argument("--no-write", action="store_true", help="print only; leave docs/benchmarks.md alone")
    parser.add_argument("--slices", type=int, default=0, help="use a synthetic series of this many slices instead")
    options = parser.parse_args()
    if not options.dicom.is_dir():
        sys.exit(f"DICOM folder not found: {options.dicom}; pass --dicom or set CTSPINE_SHARED")
    with tempfile.TemporaryDirectory() as scratch:
        dicom = options.dicom
        if options.slices:
            dicom = synthetic_series(options.dicom, options.slices, Path(scratch) / "series")
        load = os.getloadavg()[0]
        results = measure(dicom, options.runs)
        files = len(list(dicom.iterdir()))
        source = (f"a synthetic {files}-slice JPEG 2000 series (the shared series' 512 x 512 slices repeated)"
                  if options.slices
                  else f"the shared Siemens series ({files} slices, 512 x 512, JPEG 2000 lossless)")
        heading = LONG_SECTION if options.slices else SECTION
        command = " ".join(["python scripts/bench_convert.py", *sys.argv[1:]])
        section = render(heading, command, source, options.runs, results, load)
    print(section)
    if not options.no_write:
        write_section(heading, section)


if __name__ == "__main__":
    main()
