"""Edit requests: load and validate CounterFact, zsRE, MQuAKE and JSONL files in memory.

Each record is parsed and checked by its format (`request_formats.py`), then against earlier
records (duplicate case ids, one prompt asked to take two targets); every error names the file,
record, case id and field. The mass-edit job runs the same checks streaming, on Ray Data
(`request_dataset.py`). The types live in `edit_request.py` and are re-exported here.
"""

from __future__ import annotations

import glob
import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ftedit.edit_request import FILE_LEVEL, EditRequest, Fact, RequestError
from ftedit.request_formats import (
    FORMATS,
    ZSRE_TARGETS,
    check_arguments,
    detect_format,
    open_records,
    parse_fact_record,
    parse_record,
)

__all__ = [
    "FORMATS", "ZSRE_TARGETS", "EditRequest", "Fact", "LoadResult", "RequestError", "check_arguments",
    "check_same_format", "conflict_error", "cross_record_conflicts", "detect_format", "load_fact_pool",
    "load_requests", "request_keys", "request_paths", "text_key",
]


@dataclass
class LoadResult:
    """Valid requests in file order, plus the errors of records dropped by skip_invalid."""

    requests: list[EditRequest]
    skipped: list[RequestError]
    format: str = "jsonl"  # the resolved format (after auto-detection)


def text_key(text: str) -> int:
    """A stable 63-bit digest of a string (fits a signed int64 column); equal text, equal key.

    The checks that span many requests compare these keys, 8 bytes each, instead of the texts.
    """
    digest = hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "little") & 0x7FFF_FFFF_FFFF_FFFF


def request_keys(request: EditRequest) -> tuple[int, int, int]:
    """(case id, prompt, target) keys of a request for `cross_record_conflicts`."""
    return text_key(request.case_id), text_key(request.prompt.strip()), text_key(request.target_new.strip())


def cross_record_conflicts(record: np.ndarray, case_id: np.ndarray, prompt: np.ndarray,
                           target: np.ndarray) -> dict[int, tuple[int, int, str]]:
    """Records that clash with an earlier record: {record: (row, earlier row, field)}.

    One row per request, in file order; `record` is the row's record position (an MQuAKE record
    has several rows), the other arrays are `request_keys`. Rules, in this order:
      1. a case id seen in an earlier row -> field `case_id`;
      2. among the rows left, a prompt an earlier row edits to another target -> `target_new`.
    A clash rejects the whole record (its first clashing row is reported), and rows of rejected
    records are not checked further. Records that failed their own checks must not be passed in:
    they never block a later record. Vectorized: 32 bytes per request, whatever the request holds.
    """
    rejected: dict[int, tuple[int, int, str]] = {}

    def reject(rows: np.ndarray, firsts: np.ndarray, field: str) -> None:
        for row, first in zip(rows.tolist(), firsts.tolist()):
            key = int(record[row])
            if key not in rejected or row < rejected[key][0]:
                rejected[key] = (row, first, field)

    def later_rows(rows: np.ndarray, key: np.ndarray):
        """Rows of `rows` whose key already appeared in an earlier row, with that first row."""
        order = rows[np.lexsort((rows, key[rows]))]  # by key, then file order
        sorted_keys = key[order]
        starts = np.r_[True, sorted_keys[1:] != sorted_keys[:-1]] if len(order) else np.zeros(0, bool)
        first = order[np.maximum.accumulate(np.where(starts, np.arange(len(order)), 0))] if len(order) else order
        return order, first, ~starts

    rows = np.arange(len(record))
    order, first, repeated = later_rows(rows, case_id)
    reject(order[repeated], first[repeated], "case_id")
    alive = rows[~np.isin(record, np.fromiter(rejected, dtype=np.int64, count=len(rejected)))]
    order, first, _ = later_rows(alive, prompt)
    clash = target[order] != target[first]
    reject(order[clash], first[clash], "target_new")
    return rejected


def conflict_error(file, index, request: EditRequest, field: str, first_file, first_index, first: EditRequest) -> RequestError:
    where = f"record {first_index}" if str(first_file) == str(file) else f"record {first_index} of {first_file}"
    if field == "case_id":
        return RequestError(file, index, request.case_id, "case_id", f"duplicate of {where}")
    return RequestError(file, index, request.case_id, "target_new",
                        f"{request.target_new!r} conflicts with {where} (case_id {first.case_id}),"
                        f" which edits the same prompt to {first.target_new!r}")


def check_same_format(formats: dict[str, str], fmt: str, file: str) -> None:
    """Files of one run share one format (it decides the metrics); `formats`: format -> first file."""
    formats.setdefault(fmt, file)
    if len(formats) > 1:
        first_fmt, first_file = next(iter(formats.items()))
        raise RequestError(file, FILE_LEVEL, None, "(format)",
                           f"holds {fmt} records but {first_file} holds {first_fmt}; one run reads one format")


def request_paths(spec) -> list[Path]:
    """The files a `requests` setting names: a path, a glob (`edits/*.jsonl`), or a list of them.

    Globs expand in sorted order; a pattern that matches nothing is an error naming it.
    """
    specs = [spec] if isinstance(spec, (str, Path)) else list(spec)
    paths: list[Path] = []
    for item in specs:
        text = str(item)
        if glob.has_magic(text):
            matches = sorted(glob.glob(text, recursive=True))
            if not matches:
                raise RequestError(text, FILE_LEVEL, None, "(file)", "no file matches this pattern")
            paths += [Path(m) for m in matches]
        else:
            paths.append(Path(text))
    return paths


def load_requests(path, format="auto", limit=None, zsre_target="alt", skip_invalid=False, offset=0,
                  mquake_neighbours=0) -> LoadResult:
    """Load and validate edit requests in memory (format: 'auto' or one of FORMATS).

    `path` is a file, a glob or a list of them (`request_paths`); records are numbered in file
    order across the files. `limit` reads only N records (MQuAKE: records, not rewrites), after
    skipping the first `offset` (a disjoint split: a sweep's validation edits). zsRE edits toward
    `alt`, or toward `answers[0]` with zsre_target="answers". The first error in file order is
    raised, unless skip_invalid drops bad records and collects their errors in `skipped`.
    MQuAKE rewrites get up to `mquake_neighbours` neighbourhood prompts each (`mquake_neighbours.py`;
    none by default here, where the job's `data.mquake_neighbours` gives 10).
    The mass-edit job reads the same way, streaming, with `request_dataset.open_requests`.
    """
    check_arguments(format, limit, zsre_target, offset)
    fmt, formats, parsed = "jsonl", {}, []  # parsed: (file, index, requests or RequestError)
    for file_path in request_paths(path):
        if limit is not None and limit <= 0:
            break
        fmt, file, records, neighbours, skipped = open_records(file_path, format, limit, zsre_target, offset,
                                                               mquake_neighbours)
        offset -= skipped  # what is left of the offset for the next file
        if limit is not None:
            limit -= len(records)
        if records:
            check_same_format(formats, fmt, file)
        parsed += [(file, index, parse_record(fmt, file, index, record, zsre_target, neighbours))
                   for index, record in records]

    # Cross-record checks over the requests of records that passed their own.
    rows = [(position, r) for position, (_, _, outcome) in enumerate(parsed)
            if not isinstance(outcome, RequestError) for r in outcome]
    keys = np.array([request_keys(r) for _, r in rows], dtype=np.int64).reshape(-1, 3)
    clashes = cross_record_conflicts(np.array([p for p, _ in rows], dtype=np.int64), keys[:, 0], keys[:, 1], keys[:, 2])
    for position, (row, first_row, field) in clashes.items():
        file, index, _ = parsed[position]
        first_position, first = rows[first_row]
        first_file, first_index, _ = parsed[first_position]
        parsed[position] = (file, index, conflict_error(file, index, rows[row][1], field, first_file, first_index, first))

    requests, skipped = [], []
    for _, _, outcome in parsed:
        if isinstance(outcome, RequestError):
            if not skip_invalid:
                raise outcome
            skipped.append(outcome)
        else:
            requests.extend(outcome)
    return LoadResult(requests, skipped, fmt)


def load_fact_pool(path, format="auto", limit=None) -> list[Fact]:
    """Unedited facts (prompt -> true answer) from an edit file, best-effort.

    Records that fail validation or lack a true answer are skipped silently; a missing
    or unreadable file still raises. zsRE gives (src, answers[0]). The first fact for a
    prompt wins, so the pool never teaches one prompt two answers.
    """
    # zsre_target="answers" makes target_new = answers[0] and leaves `alt` unchecked,
    # so a zsRE record with an unusable alt still yields its true fact.
    fmt, file, records, _, _ = open_records(path, format, limit, zsre_target="answers")
    facts, seen = [], set()
    for index, record in records:
        if fmt == "jsonl" and isinstance(record, dict) and "target_new" not in record:
            outcome = parse_fact_record(file, index, record)
        else:
            outcome = parse_record(fmt, file, index, record, "answers")
        if isinstance(outcome, RequestError):
            continue
        for r in outcome:
            target = r.target_new if fmt == "zsre" else r.target_true
            if target is not None and r.prompt.strip() not in seen:
                seen.add(r.prompt.strip())
                facts.append(Fact(r.prompt, target, r.subject))
    return facts
