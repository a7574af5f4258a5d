"""Manifest stage: case counts per subset, per split and per subset and split."""
from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass

from ctspine_builder.manifest.model import SPLITS, Manifest


@dataclass(frozen=True)
class ManifestStats:
    """Case counts of one manifest; the dict fields map names to case counts."""

    name: str
    version: str
    cases: int
    sources: int
    with_mask: int
    subsets: dict[str, int]
    splits: dict[str, int]
    subset_split: dict[str, dict[str, int]]
    image_sources: dict[str, int]

    def to_dict(self) -> dict:
        """Return the counts as plain JSON-ready data."""
        return asdict(self)


def _split_order(names: set[str]) -> list[str]:
    """Order split names as the upstream data_split.txt does, unknown ones last."""
    known = [split for split in SPLITS if split in names]
    return known + sorted(names - set(SPLITS))


def manifest_stats(manifest: Manifest) -> ManifestStats:
    """Count a manifest's cases per subset, per split and in the subset x split table."""
    subsets = Counter(case.subset for case in manifest.cases)
    splits = Counter(case.split for case in manifest.cases)
    pairs = Counter((case.subset, case.split) for case in manifest.cases)
    split_names = _split_order(set(splits))

    table = {
        subset: {split: pairs[(subset, split)] for split in split_names}
        for subset in sorted(subsets)
    }
    return ManifestStats(
        name=manifest.dataset.name,
        version=manifest.dataset.version,
        cases=len(manifest.cases),
        sources=len(manifest.sources),
        with_mask=sum(1 for case in manifest.cases if case.mask is not None),
        subsets={subset: subsets[subset] for subset in sorted(subsets)},
        splits={split: splits[split] for split in split_names},
        subset_split=table,
        image_sources=dict(sorted(Counter(case.image.source for case in manifest.cases).items())),
    )


def format_stats_table(stats: ManifestStats) -> str:
    """Render the subset x split table with totals as aligned plain text."""
    splits = list(stats.splits)
    header = ["subset", *splits, "total"]
    rows = [header]
    for subset, counts in stats.subset_split.items():
        rows.append([subset, *(str(counts[split]) for split in splits), str(stats.subsets[subset])])
    rows.append(["total", *(str(stats.splits[split]) for split in splits), str(stats.cases)])

    widths = [max(len(row[column]) for row in rows) for column in range(len(header))]
    lines = []
    for row in rows:
        cells = [row[0].ljust(widths[0])] + [cell.rjust(width) for cell, width in zip(row[1:], widths[1:])]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)
