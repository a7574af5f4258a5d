"""Package stage: the dataset card (README.md with YAML front matter) of a built dataset."""
from __future__ import annotations

from collections import Counter

import yaml

from ctspine_builder import TOOL_NAME, __version__
from ctspine_builder.licenses import required_citations
from ctspine_builder.manifest.model import SPLITS, Manifest, SourceRecord
from ctspine_builder.package.buildinfo import CaseEntry
from ctspine_builder.package.licenses import card_license, license_name

TAGS = ["medical", "ct", "spine", "vertebrae", "nifti"]

# Label values of the CTSpine1K scheme: C1..C7 = 1..7, T1..T12 = 8..19,
# L1..L6 = 20..25, 0 background.
LABEL_NAMES = (
    [f"C{i}" for i in range(1, 8)] + [f"T{i}" for i in range(1, 13)] + [f"L{i}" for i in range(1, 7)]
)


def size_category(count: int) -> str:
    """Return the Hub's size_categories bucket for ``count`` examples."""
    if count < 1_000:
        return "n<1K"
    if count < 10_000:
        return "1K<n<10K"
    return "10K<n<100K"


def card_metadata(manifest: Manifest, entries: list[CaseEntry], sources: list[SourceRecord]) -> dict:
    """Return the card's YAML fields; only splits that have cases get a config entry."""
    licence = card_license(sources)
    metadata: dict = {"license": licence.license}
    if licence.license_name:
        metadata["license_name"] = licence.license_name
        metadata["license_link"] = licence.license_link
    present = {entry.split for entry in entries}
    metadata.update(
        {
            "pretty_name": manifest.dataset.pretty_name or manifest.dataset.name,
            "task_categories": ["image-segmentation"],
            "tags": list(TAGS),
            "size_categories": [size_category(len(entries))],
            "configs": [
                {
                    "config_name": "default",
                    "data_files": [
                        {"split": split, "path": f"data/{split}/**"} for split in SPLITS if split in present
                    ],
                }
            ],
        }
    )
    return metadata


def _sources_section(sources: list[SourceRecord], entries: list[CaseEntry], conflicts: list[str]) -> list[str]:
    lines = ["## Sources and licences", "", "| source | licence | used for | citation |", "| --- | --- | --- | --- |"]
    for record in sources:
        roles = sorted(
            {"images" for e in entries if e.image_source == record.id}
            | {"masks" for e in entries if e.mask_source == record.id}
        )
        citation = " ".join(required_citations(record)).replace("\n", " ").replace("|", "\\|")
        lines.append(f"| {record.id} | {license_name(record.license)} (`{record.license}`) | {', '.join(roles)} | {citation} |")
    notes = [f"- {record.id}: {record.license_note}" for record in sources if record.license_note]
    if notes:
        lines += ["", "Licence notes:", "", *notes]
    if conflicts:
        lines += ["", "Licence conflicts (the terms below cannot all be met by one licence):", ""]
        lines += [f"- {sentence}" for sentence in conflicts]
    lines += ["", "Each source's licence and required citation is also in `LICENSES/<source>.md`.", ""]
    return lines


def _counts_section(entries: list[CaseEntry]) -> list[str]:
    counts = Counter((entry.subset, entry.split) for entry in entries)
    subsets = sorted({entry.subset for entry in entries})
    lines = ["## Cases", "", "| subset | " + " | ".join(SPLITS) + " | total |", "| --- |" + " --- |" * (len(SPLITS) + 1)]
    for subset in subsets:
        row = [counts[(subset, split)] for split in SPLITS]
        lines.append(f"| {subset} | " + " | ".join(str(n) for n in row) + f" | {sum(row)} |")
    totals = [sum(counts[(s, split)] for s in subsets) for split in SPLITS]
    lines.append("| all | " + " | ".join(str(n) for n in totals) + f" | {sum(totals)} |")
    without_mask = sum(1 for entry in entries if not entry.has_mask)
    if without_mask:
        lines += [
            "",
            f"{without_mask} case(s) have no mask: their `mask` column is None "
            "(`mask_file_name` is null in metadata.jsonl).",
        ]
    return lines + [""]


def _labels_section() -> list[str]:
    pairs = ", ".join(f"{name} = {value}" for value, name in enumerate(LABEL_NAMES, start=1))
    return ["## Labels", "", f"Masks are uint8 on the image's grid: 0 background, {pairs}.", ""]


def _loading_section(entries: list[CaseEntry]) -> list[str]:
    splits = ", ".join(sorted({entry.split for entry in entries}, key=SPLITS.index))
    return [
        "CT volumes (NIfTI, Hounsfield units) with vertebra label masks, one folder per split.",
        "",
        "```python",
        "from datasets import load_dataset",
        "",
        f'dataset = load_dataset("path/to/this/folder")  # splits: {splits}',
        'sample = dataset[next(iter(dataset))][0]  # sample["image"] and sample["mask"] are nibabel images',
        "```",
        "",
    ]


def _provenance_section(manifest: Manifest, manifest_hash: str, lock_sha256: str | None) -> list[str]:
    return [
        "## How it was built",
        "",
        f"- Tool: {TOOL_NAME} {__version__} (`ctspine build`)",
        f"- Manifest: {manifest.dataset.name} {manifest.dataset.version}, SHA-256 of its records `{manifest_hash}`",
        f"- Lock file SHA-256: `{lock_sha256}`" if lock_sha256 else "- Lock file: none",
        "- Per-case provenance (sources, licences, content hashes): `build.json`; acquisition fields: `sidecars/`",
        "",
        "## How to verify a copy",
        "",
        "```",
        "ctspine verify path/to/this/folder",
        "```",
        "",
        "This checks every file against `SHA256SUMS`, the pinned content hashes, image and mask geometry, "
        "the label range, the licence files and the identifier policy.",
        "",
    ]


def render_card(
    manifest: Manifest,
    entries: list[CaseEntry],
    sources: list[SourceRecord],
    conflicts: list[str],
    manifest_hash: str,
    lock_sha256: str | None,
) -> str:
    """Return the full README.md dataset card."""
    front = yaml.safe_dump(card_metadata(manifest, entries, sources), sort_keys=False, allow_unicode=True)
    title = manifest.dataset.pretty_name or manifest.dataset.name
    lines = ["---", front.rstrip("\n"), "---", "", f"# {title}", ""]
    if manifest.dataset.description:
        lines += [manifest.dataset.description, ""]

    lines += _loading_section(entries)
    lines += _sources_section(sources, entries, conflicts)
    lines += _counts_section(entries)
    lines += _labels_section()
    lines += _provenance_section(manifest, manifest_hash, lock_sha256)
    if manifest.dataset.citation:
        lines += ["## Citation", "", manifest.dataset.citation, ""]
    return "\n".join(lines)
