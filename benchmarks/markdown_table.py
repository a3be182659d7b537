"""The one way benchmark scripts rewrite their table in BENCHMARKS.md: between two marker lines."""

from __future__ import annotations

import json
from pathlib import Path


def replace_between(text: str, start_marker: str, end_marker: str, table: str) -> str:
    """`text` with whatever stands between the markers replaced by `table` (markers kept)."""
    start, end = text.index(start_marker) + len(start_marker), text.index(end_marker)
    return text[:start] + "\n" + table + "\n" + text[end:]


BENCHMARKS_MD = Path(__file__).resolve().parents[1] / "BENCHMARKS.md"


def publish(result: dict, json_path: Path, markers: tuple[str, str], table: str,
            benchmarks_md: Path = BENCHMARKS_MD) -> None:
    """Write a benchmark's result JSON and its table (into BENCHMARKS.md between `markers`, and
    to stdout)."""
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(result, indent=2) + "\n")
    benchmarks_md.write_text(replace_between(benchmarks_md.read_text(), *markers, table))
    print(table)


def marker_lines(name: str) -> tuple[str, str]:
    """The start and end marker lines of the table named `name` in BENCHMARKS.md."""
    return f"<!-- {name}:start -->", f"<!-- {name}:end -->"


def table_markers(name: str, benchmarks_md: Path = BENCHMARKS_MD) -> tuple[str, str]:
    """The marker lines the table of `--output NAME` goes between; both must be in BENCHMARKS.md
    (checked before anything is measured, so a long run cannot end without a place to write)."""
    markers = marker_lines(name)
    text = benchmarks_md.read_text()
    missing = [m for m in markers if m not in text]
    if missing:
        raise ValueError(f"{benchmarks_md}: no {' and no '.join(missing)} line for the table of --output {name}")
    return markers
