"""Edit requests as a Ray Dataset: read from many files (globs), parsed and validated on the cluster.

The driver never holds the requests. Ray Data tasks on the driver's node (the files need be on no
other) read the files and parse every record with the parsers of `request_formats.py`; the driver
reads back only three 8-byte keys per request (case id, prompt, target) to run the checks that
span records (`requests.cross_record_conflicts`, the same function `load_requests` runs in
memory), plus the rows of records that failed. What the run then needs from all requests at
once also comes back condensed: the keys of every evaluation prompt (never trained on) and the
indices of the pool facts to drop (`pool_exclusions`).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ftedit.config import DataConfig
from ftedit.edit_request import FILE_LEVEL, EditRequest, Fact, RequestError
from ftedit.request_formats import (
    IS_A_DIRECTORY,
    check_arguments,
    open_records,
    parse_record,
    record_count,
)
from ftedit.requests import (
    check_same_format,
    conflict_error,
    cross_record_conflicts,
    request_keys,
    request_paths,
)

log = logging.getLogger(__name__)

_KEY_COLUMNS = ("record", "error", "format", "case_id_key", "prompt_key", "target_key", "has_true", "fatal")
"""The columns the driver reads back (all but `request`)."""


def _position(file_no: int, index: int) -> int:
    """A record's place in file order across the files of a run (sortable, fits int64)."""
    return (file_no << 32) | index


def _error_text(error: RequestError) -> str:
    """A RequestError as text for a Dataset column (`RequestError(*json.loads(text))` rebuilds
    it): Ray keeps only the text of an exception a task raises, so errors travel as data."""
    return json.dumps([error.file, error.index, error.case_id, error.field, error.message])


def _parse_files(batch: dict, format: str, zsre_target: str, mquake_neighbours: int) -> dict:
    """Ray Data stage: file rows (file_no, file, start, stop) -> one row per request or bad record."""
    columns: dict[str, list] = {name: [] for name in ("record", "request", "error", *_KEY_COLUMNS[2:])}
    for file_no, file, start, stop in zip(batch["file_no"], batch["file"], batch["start"], batch["stop"]):
        path = Path(str(file))
        try:
            fmt, _, records, neighbours, _ = open_records(path, format, None if stop < 0 else int(stop - start),
                                                          zsre_target, int(start), mquake_neighbours)
        except RequestError as exc:  # the whole file is unusable: a row the driver raises, skip or not
            records, fmt, neighbours, fatal = [(0, exc)], format, None, exc
        else:
            fatal = None
        for index, record in records:
            outcome = fatal or parse_record(fmt, str(path), index, record, zsre_target, neighbours)
            rows = [outcome] if isinstance(outcome, RequestError) else outcome
            for item in rows:
                bad = isinstance(item, RequestError)
                keys = (0, 0, 0) if bad else request_keys(item)
                columns["record"].append(_position(int(file_no), index))
                columns["request"].append("" if bad else json.dumps(item.to_dict()))
                columns["error"].append(_error_text(item) if bad else "")
                columns["format"].append(fmt)
                columns["case_id_key"].append(keys[0])
                columns["prompt_key"].append(keys[1])
                columns["target_key"].append(keys[2])
                columns["has_true"].append(not bad and item.target_true is not None)
                columns["fatal"].append(fatal is not None)
    return {
        "record": np.array(columns["record"], dtype=np.int64),
        "request": np.array(columns["request"], dtype=object),
        "error": np.array(columns["error"], dtype=object),
        "format": np.array(columns["format"], dtype=object),
        **{k: np.array(columns[k], dtype=np.int64) for k in ("case_id_key", "prompt_key", "target_key")},
        "has_true": np.array(columns["has_true"], dtype=bool),
        "fatal": np.array(columns["fatal"], dtype=bool),
    }


def _count_records(batch: dict) -> dict:
    counts, errors = [], []
    for file in batch["file"]:
        try:
            counts.append(record_count(Path(str(file))))
            errors.append("")
        except RequestError as exc:
            counts.append(0)
            errors.append(_error_text(exc))
    return {"count": np.array(counts, dtype=np.int64), "error": np.array(errors, dtype=object)}


def on_the_drivers_node() -> dict:
    """Ray remote args that run a task where the driver runs (by Ray's node-id label): for the
    tasks that open the requests files, which the driver checks and which need not exist on any
    other node of a cluster."""
    import ray

    return {"label_selector": {"ray.io/node-id": ray.get_runtime_context().get_node_id()}}


def _file_windows(paths: list[Path], offset: int, limit: int | None) -> list[tuple[int, int]]:
    """(start, stop) of the records each file contributes (stop -1: to its end)."""
    import ray

    if len(paths) == 1:
        return [(offset, -1 if limit is None else offset + limit)]
    if offset == 0 and limit is None:
        return [(0, -1)] * len(paths)
    # offset/limit count records across files in order: count each file's records (on the cluster).
    counts = ray.data.from_items([{"file": str(p)} for p in paths]).map_batches(
        _count_records, batch_size=1, **on_the_drivers_node()).take_all()
    windows, skip, left = [], offset, limit
    for row in counts:
        if row["error"]:
            raise RequestError(*json.loads(row["error"]))
        n = int(row["count"])
        start = min(skip, n)
        stop = n if left is None else min(n, start + left)
        skip -= start
        if left is not None:
            left -= stop - start
        windows.append((start, stop))
    return windows


def _select(batch: dict, column: str, wanted: np.ndarray) -> dict:
    keep = np.isin(batch[column], wanted)
    return {k: v[keep] for k, v in batch.items()}


def _rows_at(dataset, column: str, wanted) -> list[dict]:
    """The rows whose `column` is in `wanted` (a few: errors to spell out), in order."""
    if len(wanted) == 0:
        return []
    wanted = np.asarray(wanted, dtype=np.int64)
    return dataset.map_batches(_select, fn_kwargs={"column": column, "wanted": wanted}, batch_size=4096).take_all()


def _keep(batch: dict, rejected: frozenset) -> dict:
    """Ray Data stage: the rows of valid, unrejected records, as (position, request)."""
    keep = (batch["error"] == "") & ~np.isin(batch["record"], np.fromiter(rejected, np.int64, len(rejected)))
    return {"position": batch["record"][keep], "request": batch["request"][keep]}


@dataclass
class RequestSource:
    """The validated edit requests of a run, as a materialized Ray Dataset in file order."""

    dataset: Any
    """Rows: `position` (of the request's record in file order) and `request` (EditRequest JSON)."""
    n_requests: int
    format: str
    skipped: list[RequestError] = field(default_factory=list)
    missing_true: list[str] = field(default_factory=list)
    """Case ids of (up to 5) requests without target_true: such a run can only report accuracies."""

    def head(self, n: int) -> list[EditRequest]:
        """The first `n` requests (the train loop's probe)."""
        return [EditRequest.from_dict(json.loads(row["request"])) for row in self.dataset.take(n)] if n else []


def open_requests(data: DataConfig) -> RequestSource:
    """Read, parse and validate `data.requests` (a file, a glob or a list) on the cluster.

    Same rules and errors as `load_requests`: bad records raise the first error in file order
    (file, record, case id, field), or are dropped and listed with `on_invalid: skip`.
    """
    import ray

    check_arguments(data.format, data.limit, data.zsre_target, data.offset)
    paths = request_paths(data.requests)
    for path in paths:
        if not path.is_file():
            problem = f"{IS_A_DIRECTORY}; name its files with a glob such as {path / '*.jsonl'}" if path.is_dir() \
                else "file not found"
            raise RequestError(path, FILE_LEVEL, None, "(file)", problem)
    windows = _file_windows(paths, data.offset, data.limit)
    files = [{"file_no": i, "file": str(p), "start": s, "stop": e} for i, (p, (s, e)) in enumerate(zip(paths, windows))]
    parsed = ray.data.from_items(files).map_batches(
        _parse_files, batch_size=1,
        fn_kwargs={"format": data.format, "zsre_target": data.zsre_target, "mquake_neighbours": data.mquake_neighbours},
        **on_the_drivers_node(),
    ).materialize()

    # Only fixed-size keys, each batch's formats and the error rows come back to the driver.
    key_columns = ("record", "case_id_key", "prompt_key", "target_key", "has_true")
    keys: dict[str, list] = {k: [] for k in (*key_columns, "failed")}
    errors: dict[int, RequestError] = {}
    formats: dict[str, str] = {}
    for batch in parsed.select_columns(list(_KEY_COLUMNS)).iter_batches(batch_size=65536, batch_format="numpy"):
        failed = batch["error"] != ""
        fatal = np.nonzero(batch["fatal"])[0]
        if len(fatal):  # a file that cannot be read or recognised: no run, skip or not
            raise RequestError(*json.loads(batch["error"][fatal[0]]))
        for fmt, row in zip(*np.unique(batch["format"][~failed].astype(str), return_index=True)):
            check_same_format(formats, fmt, str(paths[int(batch["record"][~failed][row]) >> 32]))
        errors.update({int(r): RequestError(*json.loads(e)) for r, e in zip(batch["record"][failed], batch["error"][failed])})
        for k in key_columns:
            keys[k].append(batch[k])
        keys["failed"].append(failed)
    keys = {k: np.concatenate(v) if v else np.zeros(0, np.int64) for k, v in keys.items()}
    failed = keys["failed"].astype(bool)

    valid = np.nonzero(~failed)[0]
    clashes = cross_record_conflicts(keys["record"][valid], keys["case_id_key"][valid],
                                     keys["prompt_key"][valid], keys["target_key"][valid])
    if data.on_invalid != "skip" and clashes:
        # Only the first bad record is reported: spell out one clash (a big file may hold thousands).
        first = min(clashes)
        clashes = {} if errors and min(errors) < first else {first: clashes[first]}
    errors.update(_clash_errors(parsed, clashes, keys["record"][valid], paths))
    if errors and data.on_invalid != "skip":
        raise errors[min(errors)]
    rejected = frozenset(errors)
    kept = valid[~np.isin(keys["record"][valid], np.fromiter(rejected, np.int64, len(rejected)))]
    dataset = parsed.map_batches(_keep, fn_kwargs={"rejected": rejected}, batch_size=4096).materialize()
    missing = kept[~keys["has_true"][kept]]
    missing_ids = [EditRequest.from_dict(json.loads(row["request"])).case_id
                   for row in _rows_at(dataset, "position", keys["record"][missing[:5]])][:5]
    fmt = next(iter(formats), "jsonl") if data.format == "auto" else data.format
    log.info("read %d edit requests from %d file(s) (%s), %d invalid record(s)", len(kept), len(paths), fmt, len(errors))
    return RequestSource(dataset, len(kept), fmt, [errors[r] for r in sorted(errors)], missing_ids)


def _clash_errors(parsed, clashes: dict, row_records: np.ndarray, paths: list[Path]) -> dict[int, RequestError]:
    """The errors of records that clash with earlier ones; fetches only the rows involved."""
    if not clashes:
        return {}
    wanted = np.array(sorted({int(row_records[i]) for row, first, _ in clashes.values() for i in (row, first)}))
    rows: dict[int, list[EditRequest]] = {}
    for row in _rows_at(parsed, "record", wanted):
        if row["error"]:
            continue
        rows.setdefault(int(row["record"]), []).append(EditRequest.from_dict(json.loads(row["request"])))

    def request_at(row: int) -> EditRequest:
        # Positions ascend in file order, and the rows of one record follow each other.
        record = int(row_records[row])
        return rows[record][row - int(np.searchsorted(row_records, record))]

    errors = {}
    for record, (row, first, field_name) in clashes.items():
        first_record = int(row_records[first])
        errors[record] = conflict_error(str(paths[record >> 32]), record & 0xFFFFFFFF, request_at(row), field_name,
                                         str(paths[first_record >> 32]), first_record & 0xFFFFFFFF, request_at(first))
    return errors


def _pool_exclusions(batch: dict, index) -> dict:
    """Ray Data stage: a batch of requests -> pool facts to drop and its evaluation-prompt keys."""
    from ftedit.augment import eval_prompt_keys

    requests = [EditRequest.from_dict(json.loads(text)) for text in batch["request"]]
    drop = np.array(sorted(index.facts_to_drop(requests)) if index is not None else [], dtype=np.int64)
    forbid = eval_prompt_keys(requests)
    return {"kind": np.array([0] * len(drop) + [1] * len(forbid), dtype=np.int8), "key": np.concatenate([drop, forbid])}


def pool_exclusions(source: RequestSource, pool: list[Fact]):
    """(pool facts the run may train on, the DigestSet of prompts never to train on).

    Computed batch by batch on the cluster: pool facts whose prompt is an edit or evaluation
    prompt or that are about an edited subject are dropped (`augment.PoolIndex`).
    """
    from ftedit.augment import DigestSet, PoolIndex

    index = PoolIndex(pool) if pool else None
    drop, forbid = [], []
    stage = source.dataset.map_batches(_pool_exclusions, fn_kwargs={"index": index}, batch_size=4096)
    for batch in stage.iter_batches(batch_size=None, batch_format="numpy"):
        drop.append(batch["key"][batch["kind"] == 0])
        forbid.append(batch["key"][batch["kind"] == 1])
    dropped = set(np.concatenate(drop).tolist()) if drop else set()
    kept = [fact for i, fact in enumerate(pool) if i not in dropped]
    return kept, DigestSet(np.concatenate(forbid) if forbid else [])
