#!/usr/bin/env python3
"""Manifest stage: generate the shipped CTSpine1K manifest from the authors' Path.csv and data_split.txt.

Usage (from the repository root):

    python scripts/make_ctspine1k_manifest.py [--upstream DIR] [--out DIR]

Reads `Path.csv` (one NBIA Data Retriever folder PatientID/study/series per
DICOM case) and `data_split.txt` (a `trainset:`, `test_public:` or
`test_private:` header line, then one `<case id>.nii.gz` per line; CRLF
line endings) and writes `manifest.json` plus one `cases-<subset>.jsonl` per
subset. The output depends only on the two input files, so running the
script again reproduces the committed files byte for byte. Every case id
that fits no subset rule is listed and nothing is written.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ctspine_builder.fileio import write_bytes_atomic
from ctspine_builder.licenses import CTSPINE1K_CITATION, MASKS_LICENSE_ASSUMPTION, MSD_CITATIONS
from ctspine_builder.manifest.model import FORMAT_VERSION, SPLITS

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_UPSTREAM = REPO_ROOT.parent / "shared" / "upstream"
DEFAULT_OUT = REPO_ROOT / "manifests" / "ctspine1k"

# Medical Segmentation Decathlon Task03_Liver: dataset.json counts 131
# training volumes (numTraining) in imagesTr and 70 test volumes (numTest) in
# imagesTs, numbered from liver_0, so liver_131 and above are test volumes.
# CTSpine1K uses ids up to liver_199.
# NOTE: the id ranges are derived from those counts, not read from the tar's
# member list; a wrong folder shows up as a missing member when building.
MSD_LAST_TRAINING_ID = 130
MSD_TAR_URL = "https://msd-for-monai.s3-us-west-2.amazonaws.com/Task03_Liver.tar"
# The MD5 that MONAI checks for this mirror of the tar.
MSD_TAR_MD5 = "a90ec6c4aa7f6a3d087205e23d4e6397"

# The community copy of images and masks on the Hugging Face Hub, laid out as
# raw_data/labels/<subset>/<case id>_seg.nii.gz.
MASKS_HF_REPO = "alexanderdann/CTSpine1K"
MASKS_HF_BASE = "raw_data/labels"
# NOTE: "main" is a branch, not a pinned commit: replace it with the commit
# hash of the masks repository once someone with network access has read it.
MASKS_HF_REVISION = "main"

TCIA_LICENSE_NOTE = (
    "Not confirmed when this manifest was generated. TCIA's getSeries returns each series' "
    "LicenseName and LicenseURI; `ctspine lock` records them, and a build stops this source "
    "when they differ from this licence id."
)


@dataclass(frozen=True)
class SubsetRule:
    """How to recognise one subset's case ids and where its images come from."""

    subset: str
    pattern: re.Pattern[str]
    source: str
    image_locator: Callable[[str, re.Match[str]], str]
    dicom: bool


def _msd_locator(case_id: str, match: re.Match[str]) -> str:
    folder = "imagesTr" if int(match.group(1)) <= MSD_LAST_TRAINING_ID else "imagesTs"
    return f"{folder}/{case_id}.nii.gz"


def _covid_locator(case_id: str, match: re.Match[str]) -> str:
    # CTSpine1K's names come from the COVID-19-20 challenge packaging, which
    # appended `_ct`; TCIA's files are named without it.
    return f"{match.group(1)}.nii.gz"


RULES = (
    SubsetRule("COLONOG", re.compile(r"^1\.3\.6\.1\.4\.1\.9328\.50\.4\.\d+$"), "tcia-ct-colonography", lambda c, m: c, True),
    SubsetRule("COLONOG", re.compile(r"^CTC-\d+$"), "tcia-ct-colonography", lambda c, m: c, True),
    SubsetRule("HNSCC-3DCT-RT", re.compile(r"^HN_P\d+$"), "tcia-hnscc-3dct-rt", lambda c, m: c, True),
    SubsetRule("MSD-T10", re.compile(r"^liver_(\d+)$"), "msd-task03-liver", _msd_locator, False),
    SubsetRule("COVID-19", re.compile(r"^(volume-covid19-A-\d{4}(?:_\d+)?)_ct$"), "tcia-covid19", _covid_locator, False),
)


def read_lines(path: Path) -> list[str]:
    """Return the file's lines without line endings (CRLF or LF), skipping blank lines."""
    return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def read_splits(path: Path, problems: list[str]) -> dict[str, str]:
    """Parse data_split.txt into {case id: split}, in file order."""
    splits: dict[str, str] = {}
    current = None
    for line in read_lines(path):
        if line.endswith(":"):
            current = line[:-1]
            if current not in SPLITS:
                problems.append(f"{path.name}: unknown split header {line!r}; expected one of {', '.join(SPLITS)}")
            continue
        if current is None:
            problems.append(f"{path.name}: {line!r} appears before any split header")
            continue
        case_id = line.removesuffix(".nii.gz")
        if case_id in splits:
            problems.append(f"{path.name}: case {case_id!r} listed in both {splits[case_id]} and {current}")
        splits[case_id] = current
    return splits


def read_series_hints(path: Path, problems: list[str]) -> dict[str, str]:
    """Parse Path.csv into {PatientID: PatientID/study folder/series folder}."""
    hints: dict[str, str] = {}
    # Messages name the row number, not the row, because study folder names
    # contain (shifted) study dates.
    for number, line in enumerate(read_lines(path), start=1):
        parts = line.split("/")
        if len(parts) != 3 or not all(parts):
            problems.append(f"{path.name}: row {number} is not PatientID/study folder/series folder")
            continue
        if parts[0] in hints:
            problems.append(f"{path.name}: row {number}: PatientID {parts[0]!r} has more than one row")
        hints[parts[0]] = line
    return hints


def build_sources(masks_revision: str) -> list[dict]:
    """Return the source records of the CTSpine1K manifest."""
    return [
        {
            "id": "tcia-ct-colonography",
            "kind": "tcia",
            "locator": "CT COLONOGRAPHY",
            "license": "CC-BY-3.0",
            "license_note": TCIA_LICENSE_NOTE,
            "citation": "Data from the CT COLONOGRAPHY collection (ACRIN 6664), The Cancer Imaging Archive",
            "doi": "10.7937/K9/TCIA.2015.NWTESAY1",
        },
        {
            "id": "tcia-hnscc-3dct-rt",
            "kind": "tcia",
            "locator": "HNSCC-3DCT-RT",
            "license": "CC-BY-3.0",
            "license_note": TCIA_LICENSE_NOTE,
            "citation": "Data from the HNSCC-3DCT-RT collection, The Cancer Imaging Archive",
            "doi": "10.7937/K9/TCIA.2018.13upr2xf",
        },
        {
            "id": "msd-task03-liver",
            "kind": "msd",
            "locator": MSD_TAR_URL,
            "license": "CC-BY-SA-4.0",
            "citation": MSD_CITATIONS[0],
            "doi": "10.1038/s41467-022-30695-9",
            "options": {"md5": MSD_TAR_MD5},
        },
        {
            "id": "tcia-covid19",
            "kind": "covid19",
            # NOTE: the download address of TCIA's NIfTI files is not confirmed,
            # so the locator is the DOI's landing page until it is.
            "locator": "https://doi.org/10.7937/tcia.2020.gqry-nc81",
            "license": "CC-BY-4.0",
            "citation": "Data from the CT Images in COVID-19 collection, The Cancer Imaging Archive",
            "doi": "10.7937/tcia.2020.gqry-nc81",
        },
        {
            "id": "ctspine1k-masks",
            "kind": "masks-hf",
            "locator": MASKS_HF_REPO,
            "license": "CC-BY-NC-SA-4.0",
            "license_note": MASKS_LICENSE_ASSUMPTION,
            "citation": CTSPINE1K_CITATION,
            "doi": "10.48550/arXiv.2105.14711",
            "options": {"revision": masks_revision, "locator_base": MASKS_HF_BASE},
        },
    ]


def build_dataset() -> dict:
    """Return the dataset record of the CTSpine1K manifest."""
    return {
        "name": "ctspine1k",
        "version": "1.0.0",
        "pretty_name": "CTSpine1K",
        "citation": CTSPINE1K_CITATION,
        "description": (
            "1,005 spine CT volumes with vertebra masks (C1..C7 = 1..7, T1..T12 = 8..19, L1..L6 = 20..25), "
            "rebuilt from CT COLONOGRAPHY, HNSCC-3DCT-RT, CT Images in COVID-19 and MSD Task03_Liver "
            "with the masks released by the CTSpine1K authors."
        ),
    }


def build_case(case_id: str, split: str, hints: dict[str, str], problems: list[str]) -> dict | None:
    """Return the case record for one id, or None (with a problem) when no rule fits."""
    for rule in RULES:
        match = rule.pattern.match(case_id)
        if match is None:
            continue
        case = {
            "case_id": case_id,
            "subset": rule.subset,
            "split": split,
            "image": {"source": rule.source, "locator": rule.image_locator(case_id, match)},
            "mask": {"source": "ctspine1k-masks", "locator": f"{rule.subset}/{case_id}_seg.nii.gz"},
        }
        if rule.dicom:
            if case_id not in hints:
                problems.append(f"case {case_id!r}: DICOM case with no Path.csv row")
                return None
            case["series_hint"] = hints[case_id]
        return case
    problems.append(f"case {case_id!r}: fits no subset rule")
    return None


def _natural_key(case_id: str) -> list:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", case_id)]


def build_manifest(upstream: Path, masks_revision: str) -> tuple[dict, dict[str, list[dict]], list[str]]:
    """Read the upstream lists; return manifest.json's content, cases per subset, and problems."""
    problems: list[str] = []
    splits = read_splits(upstream / "data_split.txt", problems)
    hints = read_series_hints(upstream / "Path.csv", problems)

    by_subset: dict[str, list[dict]] = {}
    for case_id, split in splits.items():
        case = build_case(case_id, split, hints, problems)
        if case is not None:
            by_subset.setdefault(case["subset"], []).append(case)
    for patient_id in hints:
        if patient_id not in splits:
            problems.append(f"Path.csv: PatientID {patient_id!r} is in no split of data_split.txt")

    for cases in by_subset.values():
        cases.sort(key=lambda case: _natural_key(case["case_id"]))
    top = {"format": FORMAT_VERSION, "dataset": build_dataset(), "sources": build_sources(masks_revision)}
    return top, dict(sorted(by_subset.items())), problems


def write_manifest(out: Path, top: dict, by_subset: dict[str, list[dict]]) -> list[Path]:
    """Write manifest.json and cases-<subset>.jsonl atomically; remove stale cases files."""
    out.mkdir(parents=True, exist_ok=True)
    written = [out / "manifest.json"]
    write_bytes_atomic(written[0], (json.dumps(top, indent=2, ensure_ascii=False) + "\n").encode("utf-8"))
    for subset, cases in by_subset.items():
        path = out / f"cases-{subset}.jsonl"
        lines = [json.dumps(case, ensure_ascii=False) for case in cases]
        write_bytes_atomic(path, ("\n".join(lines) + "\n").encode("utf-8"))
        written.append(path)
    for stale in sorted(set(out.glob("cases*.jsonl")) - set(written)):
        stale.unlink()
    # The atomic writer creates files readable by the owner only; the
    # manifest is public package data.
    for path in written:
        path.chmod(0o644)
    return written


def main(argv: list[str] | None = None) -> int:
    """Generate the manifest; return 0 on success and 1 when any case id fits no rule."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--upstream", type=Path, default=DEFAULT_UPSTREAM,
                        help="folder holding Path.csv and data_split.txt (default: %(default)s)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="manifest folder to write (default: %(default)s)")
    parser.add_argument("--masks-revision", default=MASKS_HF_REVISION,
                        help="commit or branch of the masks repository on the Hugging Face Hub (default: %(default)s)")
    args = parser.parse_args(argv)

    for name in ("Path.csv", "data_split.txt"):
        if not (args.upstream / name).is_file():
            print(f"error: {args.upstream / name} not found; pass --upstream DIR", file=sys.stderr)
            return 1
    top, by_subset, problems = build_manifest(args.upstream, args.masks_revision)
    if problems:
        for problem in problems:
            print(f"error: {problem}", file=sys.stderr)
        print(f"{len(problems)} problem(s); nothing written", file=sys.stderr)
        return 1

    written = write_manifest(args.out, top, by_subset)
    counts = ", ".join(f"{subset} {len(cases)}" for subset, cases in by_subset.items())
    print(f"wrote {len(written)} files to {args.out}: {sum(map(len, by_subset.values()))} cases ({counts})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
