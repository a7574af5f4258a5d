"""Byte counts as people read them, shared by the commands that list files."""
from __future__ import annotations


def format_size(size: int) -> str:
    """Return a byte count in binary units, e.g. 1.5 GiB; GiB is the largest unit used."""
    value = float(size)
    for unit in ("B", "KiB", "MiB"):
        if value < 1024:
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GiB"
