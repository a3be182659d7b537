"""Edit requests: load and validate CounterFact, zsRE, MQuAKE and JSONL files.

Every file shape becomes the same frozen `EditRequest`. Records are checked one by one,
then against earlier records (duplicate case ids, one prompt asked to take two targets);
every error names the file, record, case id and field.
"""

from __future__ import annotations

import glob
import hashlib
import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np

FORMATS = ("counterfact", "zsre", "mquake", "jsonl")
ZSRE_TARGETS = ("alt", "answers")


@dataclass(frozen=True)
class EditRequest:
    """One fact to edit: make `prompt` continue with `target_new` instead of `target_true`."""

    case_id: str
    prompt: str
    subject: str
    target_new: str
    target_true: str | None = None
    paraphrases: tuple[str, ...] = ()
    neighbourhood: tuple[str, ...] = ()
    neighbourhood_answer: str | None = None
    attribute_prompts: tuple[str, ...] = ()
    generation_prompts: tuple[str, ...] = ()
    # Questions whose answer changes only through this edit's consequences (MQuAKE's multi-hop
    # questions): portability asks whether the edited model answers `portability_new` there.
    portability: tuple[str, ...] = ()
    portability_new: str | None = None
    portability_true: str | None = None

    def to_dict(self) -> dict:
        """Plain JSON-able dict (tuples become lists); the JSONL format reads it back."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict) -> "EditRequest":
        """Inverse of `to_dict`; unknown keys are an error so typos do not vanish."""
        unknown = sorted(set(d) - {f.name for f in fields(cls)})
        if unknown:
            raise ValueError(f"unknown EditRequest fields: {unknown}")
        values = {k: tuple(v) if isinstance(v, list) else v for k, v in d.items()}
        values["case_id"] = str(d["case_id"])
        return cls(**values)

    def eval_prompts(self) -> tuple[str, ...]:
        """Prompts reserved for evaluation; a trainer must never fit on them."""
        return self.paraphrases + self.neighbourhood + self.attribute_prompts + self.portability


@dataclass(frozen=True)
class Fact:
    """An unedited fact (prompt -> target) for the locality pool."""

    prompt: str
    target: str
    subject: str


class RequestError(ValueError):
    """A file or record that cannot become an edit request, located precisely."""

    def __init__(self, file, index, case_id, field, message):
        self.file, self.index, self.case_id = str(file), index, case_id
        self.field, self.message = field, message
        shown_id = "?" if case_id is None else case_id
        super().__init__(f"{file}: record {index} (case_id {shown_id}): field '{field}': {message}")

    def __reduce__(self):
        # Exceptions pickle via self.args, which here is the formatted text only;
        # rebuild from the parts so errors survive multiprocessing.
        return (type(self), (self.file, self.index, self.case_id, self.field, self.message))


@dataclass
class LoadResult:
    """Valid requests in file order, plus the errors of records dropped by skip_invalid."""

    requests: list[EditRequest]
    skipped: list[RequestError]
    format: str = "jsonl"  # the resolved format (after auto-detection)


def _kind(value: Any) -> str:
    """JSON name of a value's type, for error messages."""
    return {dict: "object", list: "list", str: "string", bool: "boolean", int: "number",
            float: "number", type(None): "null"}.get(type(value), type(value).__name__)


class _Fields:
    """Typed, validated access to one JSON object of a record."""

    def __init__(self, data: dict, file: str, index: int, case_id: str | None, prefix: str = ""):
        self.data, self.file, self.index, self.case_id, self.prefix = data, file, index, case_id, prefix

    def error(self, field: str, message: str) -> RequestError:
        return RequestError(self.file, self.index, self.case_id, field, message)

    def wrong(self, key: str, expected: str) -> RequestError:
        got = "missing" if key not in self.data else f"expected {expected}, got {_kind(self.data[key])}"
        return self.error(self.prefix + key, got)

    def text(self, key: str, required: bool = True) -> str | None:
        """A non-empty string; None when optional and absent (or null)."""
        value = self.data.get(key)
        if value is None and not required:
            return None
        if not isinstance(value, str):
            raise self.wrong(key, "a string")
        if not value.strip():
            raise self.error(self.prefix + key, "empty string")
        return value

    def texts(self, key: str, required: bool = False) -> tuple[str, ...]:
        """A list of non-empty strings; () when optional and absent."""
        value = self.data.get(key)
        if value is None and not required:
            return ()
        if not isinstance(value, list):
            raise self.wrong(key, "a list of strings")
        if required and not value:
            raise self.error(self.prefix + key, "empty list")
        for i, item in enumerate(value):
            if not isinstance(item, str) or not item.strip():
                got = "an empty string" if isinstance(item, str) else _kind(item)
                raise self.error(self.prefix + key, f"item {i}: expected a non-empty string, got {got}")
        return tuple(value)

    def obj(self, key: str) -> "_Fields":
        """A nested object, whose field names are reported as 'key.sub'."""
        value = self.data.get(key)
        if not isinstance(value, dict):
            raise self.wrong(key, "an object")
        return _Fields(value, self.file, self.index, self.case_id, f"{self.prefix}{key}.")


def _require_subject(f: _Fields, field: str, prompt: str, subject: str) -> None:
    # Locate-then-edit methods find the subject's tokens in the prompt; without it they cannot run.
    if subject not in prompt:
        raise f.error(field, f"does not contain the subject {subject!r}")


def _checked(f: _Fields, request: EditRequest) -> EditRequest:
    if request.target_true is not None and request.target_new.strip() == request.target_true.strip():
        raise f.error("target_new", "equals target_true, nothing to edit")
    return request


def _one(text: str | None) -> tuple[str, ...]:
    return () if text is None else (text,)


def _rewrite(rw: _Fields) -> tuple[str, str, str, str | None]:
    """ROME-style requested_rewrite -> (filled prompt, subject, target_new, target_true)."""
    template = rw.text("prompt")
    if "{}" not in template:
        raise rw.error(rw.prefix + "prompt", "template has no '{}' placeholder for the subject")
    subject = rw.text("subject")
    target_new = rw.obj("target_new").text("str")
    target_true = rw.obj("target_true").text("str") if rw.data.get("target_true") is not None else None
    # str.replace, not str.format: templates may contain other braces.
    return template.replace("{}", subject), subject, target_new, target_true


def _parse_counterfact(f: _Fields, zsre_target: str) -> list[EditRequest]:
    if "requested_rewrite" in f.data:  # ROME/MEMIT shape
        prompt, subject, target_new, target_true = _rewrite(f.obj("requested_rewrite"))
        return [_checked(f, EditRequest(
            f.case_id, prompt, subject, target_new, target_true,
            paraphrases=f.texts("paraphrase_prompts"), neighbourhood=f.texts("neighborhood_prompts"),
            attribute_prompts=f.texts("attribute_prompts"),
            generation_prompts=f.texts("generation_prompts")))]
    prompt, subject = f.text("prompt"), f.text("subject")  # EasyEdit shape
    _require_subject(f, "prompt", prompt, subject)
    return [_checked(f, EditRequest(
        f.case_id, prompt, subject, f.text("target_new"), f.text("ground_truth", required=False),
        paraphrases=_one(f.text("rephrase_prompt", required=False)),
        neighbourhood=_one(f.text("locality_prompt", required=False)),
        neighbourhood_answer=f.text("locality_ground_truth", required=False)))]


def _parse_mquake(f: _Fields, zsre_target: str) -> list[EditRequest]:
    """One request per rewrite. A rewrite's single-hop `question` is its paraphrase; the case's
    multi-hop `questions` (answered `new_answer` once all its rewrites are in, `answer` before)
    go with its first rewrite, as portability probes."""
    rewrites = f.data.get("requested_rewrite")
    if not isinstance(rewrites, list):
        raise f.wrong("requested_rewrite", "a list")
    if not rewrites:
        raise f.error("requested_rewrite", "empty list")
    questions = f.texts("questions")
    new_answer = f.text("new_answer", required=bool(questions))
    old_answer = f.text("answer", required=False)
    requests = []
    for i, item in enumerate(rewrites):
        case_id = f"{f.case_id}:{i}"
        rw = _Fields(item, f.file, f.index, case_id, "requested_rewrite.")
        if not isinstance(item, dict):
            raise rw.error("requested_rewrite", f"item {i}: expected an object, got {_kind(item)}")
        prompt, subject, target_new, target_true = _rewrite(rw)
        multi_hop = i == 0 and bool(questions)  # the case's questions go with its first rewrite
        requests.append(_checked(rw, EditRequest(
            case_id, prompt, subject, target_new, target_true,
            paraphrases=_one(rw.text("question", required=False)),
            portability=questions if multi_hop else (),
            portability_new=new_answer if multi_hop else None,
            portability_true=old_answer if multi_hop else None)))
    return requests


def _parse_zsre(f: _Fields, zsre_target: str) -> list[EditRequest]:
    subject, prompt = f.text("subject"), f.text("src")
    _require_subject(f, "src", prompt, subject)
    answers = f.texts("answers", required=True)
    if zsre_target == "alt":
        target_new, target_true = f.text("alt"), answers[0]
    else:  # MEMIT-style: edit toward the gold answer, whose "true" side is unknown
        target_new, target_true = answers[0], None
    return [_checked(f, EditRequest(
        f.case_id, prompt, subject, target_new, target_true,
        paraphrases=_one(f.text("rephrase", required=False)),
        neighbourhood=_one(f.text("loc", required=False)),
        neighbourhood_answer=f.text("loc_ans", required=False)))]


def _parse_jsonl(f: _Fields, zsre_target: str) -> list[EditRequest]:
    prompt, subject = f.text("prompt"), f.text("subject")
    _require_subject(f, "prompt", prompt, subject)
    return [_checked(f, EditRequest(
        f.case_id, prompt, subject, f.text("target_new"), f.text("target_true", required=False),
        paraphrases=f.texts("paraphrases"), neighbourhood=f.texts("neighbourhood"),
        neighbourhood_answer=f.text("neighbourhood_answer", required=False),
        attribute_prompts=f.texts("attribute_prompts"), generation_prompts=f.texts("generation_prompts"),
        portability=f.texts("portability"),
        portability_new=f.text("portability_new", required=bool(f.data.get("portability"))),
        portability_true=f.text("portability_true", required=False)))]


_PARSERS = {"counterfact": _parse_counterfact, "zsre": _parse_zsre,
            "mquake": _parse_mquake, "jsonl": _parse_jsonl}


def _read_records(path: Path, limit: int | None, offset: int = 0) -> list[tuple[int, Any]]:
    """Raw records `offset` .. `offset + limit` of a .json list or a .jsonl file, with their
    indices in the file."""
    if limit is not None:
        limit += offset
    def file_error(message: str) -> RequestError:
        return RequestError(path, "-", None, "(file)", message)
    try:
        text = path.read_text(encoding="utf-8-sig")  # -sig: tolerate a byte-order mark
    except FileNotFoundError:
        raise file_error("file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise file_error(f"cannot read: {exc}") from None
    if path.suffix.lower() == ".jsonl":
        records, index = [], 0
        # split("\n"), not splitlines(): JSON strings may hold raw U+2028 and similar.
        for lineno, line in enumerate(text.split("\n"), start=1):
            if not line.strip():
                continue
            if limit is not None and index >= limit:
                break
            if index >= offset:  # records before the offset are skipped unparsed
                try:
                    records.append((index, json.loads(line)))
                except json.JSONDecodeError as exc:
                    raise file_error(f"line {lineno}: invalid JSON: {exc.msg} (column {exc.colno})") from None
            index += 1
        return records
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise file_error(f"invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}") from None
    if not isinstance(data, list):
        raise file_error(f"top level is {_kind(data)}, expected a list of records")
    return list(enumerate(data if limit is None else data[:limit]))[offset:]


_KEY_FORMATS = (({"src", "alt"}, "zsre"), ({"prompt", "target_new", "ground_truth"}, "counterfact"),
                ({"prompt", "subject", "target_new"}, "jsonl"))


def detect_format(path, first_record) -> str:
    """Guess the format from the file suffix and the first record's keys."""
    if Path(path).suffix.lower() == ".jsonl":
        return "jsonl"
    if isinstance(first_record, dict):
        rewrite = first_record.get("requested_rewrite")
        if isinstance(rewrite, (list, dict)):
            return "mquake" if isinstance(rewrite, list) else "counterfact"
        for keys, name in _KEY_FORMATS:  # order matters: EasyEdit records also have jsonl keys
            if keys <= first_record.keys():
                return name
    found = f"keys {sorted(first_record)}" if isinstance(first_record, dict) else f"a {_kind(first_record)}"
    raise RequestError(path, 0, None, "(format)",
                       f"cannot detect the format from {found}; pass format= one of {FORMATS}")


def check_arguments(format: str, limit: int | None, zsre_target: str, offset: int) -> None:
    """Reject impossible reader arguments (a ValueError naming the argument)."""
    if format != "auto" and format not in FORMATS:
        raise ValueError(f"unknown format {format!r}; expected 'auto' or one of {FORMATS}")
    if zsre_target not in ZSRE_TARGETS:
        raise ValueError(f"unknown zsre_target {zsre_target!r}; expected one of {ZSRE_TARGETS}")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 0):
        raise ValueError(f"limit must be None or a non-negative integer, got {limit!r}")
    if isinstance(offset, bool) or not isinstance(offset, int) or offset < 0:
        raise ValueError(f"offset must be a non-negative integer, got {offset!r}")


def _open(path, format: str, limit: int | None, zsre_target: str, offset: int = 0) -> tuple[str, str, list]:
    """Check the arguments, read the raw records, resolve the format: (format, file, records)."""
    check_arguments(format, limit, zsre_target, offset)
    path = Path(path)
    records = _read_records(path, limit, offset)
    if format == "auto":
        format = detect_format(path, records[0][1]) if records else "jsonl"
    return format, str(path), records


def _parse_one(format: str, file: str, index: int, record: Any, zsre_target: str):
    """One raw record -> its requests, or the RequestError that rejects it."""
    try:
        if not isinstance(record, dict):
            raise RequestError(file, index, None, "(record)", f"expected an object, got {_kind(record)}")
        case_id = record.get("case_id", index)
        if isinstance(case_id, bool) or not isinstance(case_id, (int, str)) or not str(case_id).strip():
            raise RequestError(file, index, None, "case_id",
                               f"expected an integer or non-empty string, got {case_id!r}")
        return _PARSERS[format](_Fields(record, file, index, str(case_id)), zsre_target)
    except RequestError as exc:
        return exc


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


def _conflict_error(file, index, request: EditRequest, field: str, first_file, first_index, first: EditRequest) -> RequestError:
    where = f"record {first_index}" if str(first_file) == str(file) else f"record {first_index} of {first_file}"
    if field == "case_id":
        return RequestError(file, index, request.case_id, "case_id", f"duplicate of {where}")
    return RequestError(file, index, request.case_id, "target_new",
                        f"{request.target_new!r} conflicts with {where} (case_id {first.case_id}),"
                        f" which edits the same prompt to {first.target_new!r}")


def _record_count(path: Path) -> int:
    return len(_read_records(path, None))


def check_same_format(formats: dict[str, str], fmt: str, file: str) -> None:
    """Files of one run share one format (it decides the metrics); `formats`: format -> first file."""
    formats.setdefault(fmt, file)
    if len(formats) > 1:
        first_fmt, first_file = next(iter(formats.items()))
        raise RequestError(file, "-", None, "(format)",
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
                raise RequestError(text, "-", None, "(file)", "no file matches this pattern")
            paths += [Path(m) for m in matches]
        else:
            paths.append(Path(text))
    return paths


def load_requests(path, format="auto", limit=None, zsre_target="alt", skip_invalid=False, offset=0) -> LoadResult:
    """Load and validate edit requests in memory (format: 'auto' or one of FORMATS).

    `path` is a file, a glob or a list of them (`request_paths`); records are numbered in file
    order across the files. `limit` reads only N records (MQuAKE: records, not rewrites), after
    skipping the first `offset` (a disjoint split: a sweep's validation edits). zsRE edits toward
    `alt`, or toward `answers[0]` with zsre_target="answers". The first error in file order is
    raised, unless skip_invalid drops bad records and collects their errors in `skipped`.
    The mass-edit job reads the same way, streaming, with `request_dataset.open_requests`.
    """
    check_arguments(format, limit, zsre_target, offset)
    fmt, formats, parsed = "jsonl", {}, []  # parsed: (file, index, requests or RequestError)
    for file_path in request_paths(path):
        if limit is not None and limit <= 0:
            break
        fmt, file, records = _open(file_path, format, limit, zsre_target, offset)
        offset = max(0, offset - _record_count(file_path)) if not records else 0
        if limit is not None:
            limit -= len(records)
        if records:
            check_same_format(formats, fmt, file)
        parsed += [(file, index, _parse_one(fmt, file, index, record, zsre_target)) for index, record in records]

    # Cross-record checks over the requests of records that passed their own.
    rows = [(position, r) for position, (_, _, outcome) in enumerate(parsed)
            if not isinstance(outcome, RequestError) for r in outcome]
    keys = np.array([request_keys(r) for _, r in rows], dtype=np.int64).reshape(-1, 3)
    clashes = cross_record_conflicts(np.array([p for p, _ in rows], dtype=np.int64), keys[:, 0], keys[:, 1], keys[:, 2])
    for position, (row, first_row, field) in clashes.items():
        file, index, _ = parsed[position]
        first_position, first = rows[first_row]
        first_file, first_index, _ = parsed[first_position]
        parsed[position] = (file, index, _conflict_error(file, index, rows[row][1], field, first_file, first_index, first))

    requests, skipped = [], []
    for _, _, outcome in parsed:
        if isinstance(outcome, RequestError):
            if not skip_invalid:
                raise outcome
            skipped.append(outcome)
        else:
            requests.extend(outcome)
    return LoadResult(requests, skipped, fmt)


def _parse_fact_record(f: _Fields) -> list[EditRequest] | RequestError:
    """A JSONL fact (`prompt`, `subject`, `target_true`): something to keep, nothing to edit."""
    try:
        prompt, subject, answer = f.text("prompt"), f.text("subject"), f.text("target_true")
        _require_subject(f, "prompt", prompt, subject)
    except RequestError as exc:
        return exc
    return [EditRequest(f.case_id, prompt, subject, target_new=answer, target_true=answer)]


def load_fact_pool(path, format="auto", limit=None) -> list[Fact]:
    """Unedited facts (prompt -> true answer) from an edit file, best-effort.

    Records that fail validation or lack a true answer are skipped silently; a missing
    or unreadable file still raises. zsRE gives (src, answers[0]). The first fact for a
    prompt wins, so the pool never teaches one prompt two answers.
    """
    # zsre_target="answers" makes target_new = answers[0] and leaves `alt` unchecked,
    # so a zsRE record with an unusable alt still yields its true fact.
    fmt, file, records = _open(path, format, limit, zsre_target="answers")
    facts, seen = [], set()
    for index, record in records:
        if fmt == "jsonl" and isinstance(record, dict) and "target_new" not in record:
            outcome = _parse_fact_record(_Fields(record, file, index, str(record.get("case_id", index))))
        else:
            outcome = _parse_one(fmt, file, index, record, "answers")
        if isinstance(outcome, RequestError):
            continue
        for r in outcome:
            target = r.target_new if fmt == "zsre" else r.target_true
            if target is not None and r.prompt.strip() not in seen:
                seen.add(r.prompt.strip())
                facts.append(Fact(r.prompt, target, r.subject))
    return facts
