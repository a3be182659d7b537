"""The one way benchmark scripts rewrite their table in BENCHMARKS.md: between two marker lines."""

from __future__ import annotations


def replace_between(text: str, start_marker: str, end_marker: str, table: str) -> str:
    """`text` with whatever stands between the markers replaced by `table` (markers kept)."""
    start, end = text.index(start_marker) + len(start_marker), text.index(end_marker)
    return text[:start] + "\n" + table + "\n" + text[end:]
