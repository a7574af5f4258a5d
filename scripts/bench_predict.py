"""Benchmark of the predict stage: `ctspine predict` against nnU-Net v1's own predict_from_folder.

Both run as fresh processes on the same tiny nnU-Net v1 model (built by
tests/nnunet_tiny.py) and the same input, on the CPU without test-time
augmentation. Reports the median wall time of several runs, the overhead
ratio and the peak resident memory of the largest process of each run, and
writes the "Predict" section of docs/benchmarks.md.

    python scripts/bench_predict.py [--runs 3] [--input CT.nii.gz] [--threads 2] [--no-write]

nnU-Net v1 1.7.1 calls torch.load without weights_only, which torch 2.6 and
later reject for v1 checkpoints, so its run sets
TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1 (safe here: the model is built locally).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS = REPO_ROOT / "docs" / "benchmarks.md"
SECTION = "## Predict"

# Runs a command, then prints its wall time and the peak RSS (KiB) of the
# largest process it waited for, as JSON on the last line.
MEASURE = """
import json, resource, subprocess, sys, time
start = time.perf_counter()
code = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE).returncode
seconds = time.perf_counter() - start
print(json.dumps({"rc": code, "seconds": seconds, "maxrss_kib": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss}))
"""

NNUNET_CALL = """
import sys
from nnunet.inference.predict import predict_from_folder
predict_from_folder(sys.argv[1], sys.argv[2], sys.argv[3], ["all"], False, 1, 1, None, 0, 1, False,
                    mixed_precision=False, overwrite_existing=True, mode="normal", step_size=0.5,
                    checkpoint_name="model_final_checkpoint")
"""


def make_input(folder: Path, shape: tuple[int, int, int], spacing: float) -> Path:
    """Write a synthetic CT (soft tissue with a bright column) as case_0000.nii.gz."""
    import nibabel as nib
    import numpy as np

    rng = np.random.default_rng(0)
    volume = rng.normal(40, 30, shape)
    x, y = np.meshgrid(np.arange(shape[0]), np.arange(shape[1]), indexing="ij")
    volume[(x - shape[0] / 2) ** 2 + (y - shape[1] / 2) ** 2 < (shape[0] / 6) ** 2] += 700
    affine = np.diag([-spacing, -spacing, spacing, 1.0])
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "case_0000.nii.gz"
    nib.save(nib.Nifti1Image(volume.astype(np.int16), affine), path)
    return path


def measure(command: list[str], env: dict[str, str]) -> dict:
    """Run ``command`` under MEASURE and return its seconds and peak RSS."""
    completed = subprocess.run([sys.executable, "-c", MEASURE, *command], capture_output=True, text=True, env=env, check=True)
    result = json.loads(completed.stdout.strip().splitlines()[-1])
    if result["rc"] != 0:
        raise RuntimeError(f"{command[:3]} exited {result['rc']}")
    return result


def run_both(model: Path, input_dir: Path, scratch: Path, runs: int, threads: int) -> dict[str, list[dict]]:
    """Alternate the two tools ``runs`` times after one warm-up run each."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "CUDA_VISIBLE_DEVICES": ""}
    nnunet_env = {**env, "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD": "1"}
    ours = [str(Path(sys.executable).parent / "ctspine"), "-q", "predict", "-i", str(input_dir), "-o", "{out}", "--model", str(model),
            "--no-tta", "--device", "cpu", "--threads", str(threads), "--overwrite"]
    theirs = [sys.executable, "-c", NNUNET_CALL, str(model), str(input_dir), "{out}"]
    results: dict[str, list[dict]] = {"ctspine predict": [], "nnU-Net predict_from_folder": []}
    for run in range(runs + 1):
        for label, command, run_env in (("ctspine predict", ours, env), ("nnU-Net predict_from_folder", theirs, nnunet_env)):
            out = scratch / f"{label.split()[0]}-{run}"
            result = measure([part.replace("{out}", str(out)) for part in command], run_env)
            if run > 0:
                results[label].append(result)
    return results


def same_labels(scratch: Path, runs: int) -> bool:
    """Return True when both tools wrote the same label voxels in the last run."""
    import nibabel as nib
    import numpy as np

    ours = np.asanyarray(nib.load(scratch / f"ctspine-{runs}" / "case_0000.nii.gz").dataobj)
    theirs = np.asanyarray(nib.load(scratch / f"nnU-Net-{runs}" / "case.nii.gz").dataobj)
    return bool(np.array_equal(ours, theirs))


def section_text(args: argparse.Namespace, results: dict[str, list[dict]], identical: bool) -> str:
    medians = {label: statistics.median(r["seconds"] for r in rows) for label, rows in results.items()}
    peaks = {label: max(r["maxrss_kib"] for r in rows) / 1024 for label, rows in results.items()}
    reference = medians["nnU-Net predict_from_folder"]
    shape = "x".join(str(size) for size in args.shape)
    lines = [
        SECTION,
        "",
        f"Command: `python scripts/bench_predict.py --runs {args.runs} --threads {args.threads} --shape {shape}`.",
        f"Machine: {os.cpu_count()} CPUs ({platform.machine()}), Python {platform.python_version()}, shared with other jobs, so differences of a few per cent are noise.",
        f"Input: one synthetic CT of {shape.replace('x', ' x ')} voxels at {args.spacing} mm; model: the tiny nnU-Net v1 model of tests/nnunet_tiny.py "
        "(32^3 patch, 26 classes, 4 mm target spacing). CPU, no test-time augmentation, step size 0.5, each tool in a fresh process "
        f"(start-up and imports included), median of {args.runs} runs after one warm-up run.",
        "",
        "| tool | median s | ratio to nnU-Net | peak RSS MiB |",
        "| --- | --- | --- | --- |",
    ]
    for label in results:
        lines.append(f"| {label} | {medians[label]:.2f} | {medians[label] / reference:.2f} | {peaks[label]:.0f} |")
    lines += [
        "",
        f"Label maps identical between the two tools: {'yes' if identical else 'no'}.",
        "Peak RSS is that of the largest single process of a run (getrusage of waited-for children), "
        "not the sum over nnU-Net's worker processes.",
        "",
    ]
    return "\n".join(lines)


def write_section(text: str) -> None:
    """Replace or append the Predict section of docs/benchmarks.md."""
    current = BENCHMARKS.read_text(encoding="utf-8") if BENCHMARKS.exists() else "# Benchmarks\n\n"
    start = current.find(SECTION + "\n")
    if start < 0:
        updated = current.rstrip("\n") + "\n\n" + text
    else:
        following = current.find("\n## ", start + len(SECTION))
        updated = current[:start] + text + (current[following + 1:] if following >= 0 else "")
    BENCHMARKS.write_text(updated, encoding="utf-8")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3, help="measured runs per tool (after one warm-up)")
    parser.add_argument("--threads", type=int, default=2, help="torch/OpenMP threads for both tools")
    parser.add_argument("--shape", type=lambda text: tuple(int(v) for v in text.split("x")), default=(160, 160, 48), help="input size, e.g. 160x160x48")
    parser.add_argument("--spacing", type=float, default=1.5, help="input voxel size in mm")
    parser.add_argument("--no-write", action="store_true", help="print the section instead of writing docs/benchmarks.md")
    args = parser.parse_args()

    sys.path.insert(0, str(REPO_ROOT / "tests"))
    from nnunet_tiny import build_tiny_model

    with tempfile.TemporaryDirectory(prefix="bench-predict-") as temp:
        scratch = Path(temp)
        model = build_tiny_model(scratch / "model")
        make_input(scratch / "input", args.shape, args.spacing)
        results = run_both(model, scratch / "input", scratch, args.runs, args.threads)
        identical = same_labels(scratch, args.runs)
    text = section_text(args, results, identical)
    print(text)
    if not args.no_write:
        write_section(text)


if __name__ == "__main__":
    main()
