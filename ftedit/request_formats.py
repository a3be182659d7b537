"""The edit-request file formats: CounterFact (ROME/MEMIT and EasyEdit shapes), zsRE, MQuAKE, JSONL.

Reads the raw records of a .json list or a .jsonl file, detects the format, and turns one record
into its `EditRequest`s, checking each field: every error names the file, record, case id and
field. Checks that span records live in `requests.py`.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any, NamedTuple

from ftedit.edit_request import FILE_LEVEL, EditRequest, RequestError
from ftedit.mquake_neighbours import NeighbourIndex

FORMATS = ("counterfact", "zsre", "mquake", "jsonl")
IS_A_DIRECTORY = "is a directory, not a file of records"
ZSRE_TARGETS = ("alt", "answers")


def json_kind(value: Any) -> str:
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
        got = "missing" if key not in self.data else f"expected {expected}, got {json_kind(self.data[key])}"
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
                got = "an empty string" if isinstance(item, str) else json_kind(item)
                raise self.error(self.prefix + key, f"item {i}: expected a non-empty string, got {got}")
        return tuple(value)

    def obj(self, key: str) -> "_Fields":
        """A nested object, whose field names are reported as 'key.sub'."""
        value = self.data.get(key)
        if not isinstance(value, dict):
            raise self.wrong(key, "an object")
        return _Fields(value, self.file, self.index, self.case_id, f"{self.prefix}{key}.")


def _require_subject(f: _Fields, field: str, prompt: str, subject: str, hint: str = "") -> None:
    # Locate-then-edit methods find the subject's tokens in the prompt; without it they cannot run.
    if subject not in prompt:
        raise f.error(field, f"does not contain the subject {subject!r}{hint}")


TEMPLATE_HINT = " (nor a '{}' where it goes)"  # the formats whose prompts may be ROME templates


def _filled(texts, subject: str):
    """JSONL prompts written as ROME templates: each '{}' stands for the subject (str.replace, not
    str.format: other braces stay). A text or a tuple of texts; None stays None."""
    if texts is None:
        return None
    if isinstance(texts, str):
        return texts.replace("{}", subject)
    return tuple(text.replace("{}", subject) for text in texts)


def _no_template(f: _Fields, key: str, texts: tuple[str, ...]) -> tuple[str, ...]:
    # Neighbourhood and attribute prompts are about other subjects: a '{}' there stands for none.
    for i, text in enumerate(texts):
        if "{}" in text:
            raise f.error(key, f"item {i}: has a '{{}}' placeholder, but these prompts are about other "
                               "subjects than the edit's; write them out in full")
    return texts


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
            raise rw.error("requested_rewrite", f"item {i}: expected an object, got {json_kind(item)}")
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
    subject = f.text("subject")
    prompt = _filled(f.text("prompt"), subject)
    _require_subject(f, "prompt", prompt, subject, TEMPLATE_HINT)
    return [_checked(f, EditRequest(
        f.case_id, prompt, subject, f.text("target_new"), f.text("target_true", required=False),
        paraphrases=_filled(f.texts("paraphrases"), subject),
        neighbourhood=_no_template(f, "neighbourhood", f.texts("neighbourhood")),
        neighbourhood_answer=f.text("neighbourhood_answer", required=False),
        attribute_prompts=_no_template(f, "attribute_prompts", f.texts("attribute_prompts")),
        generation_prompts=_filled(f.texts("generation_prompts"), subject),
        portability=_filled(f.texts("portability"), subject),
        portability_new=f.text("portability_new", required=bool(f.data.get("portability"))),
        portability_true=f.text("portability_true", required=False)))]


_PARSERS = {"counterfact": _parse_counterfact, "zsre": _parse_zsre,
            "mquake": _parse_mquake, "jsonl": _parse_jsonl}


def _window(records: list, offset: int, limit: int | None) -> list:
    """Items `offset` .. `offset + limit` of a list (all from `offset` when limit is None)."""
    return records[offset:] if limit is None else records[offset:offset + limit]


class FileSlice(NamedTuple):
    """Raw records `offset` .. `offset + limit` of one file, with their indices in the file."""

    records: list[tuple[int, Any]]
    skipped: int
    """How many of the file's records lie before the slice: the offset, or the whole file when it
    holds no more than `offset` records (a reader of several files carries the rest over)."""
    whole: list[tuple[int, Any]] | None
    """Every record of a .json list (parsed whole anyway); None for .jsonl, read line by line."""


def read_records(path: Path, limit: int | None, offset: int = 0) -> FileSlice:
    """Read records `offset` .. `offset + limit` of a .json list or a .jsonl file."""
    def file_error(message: str) -> RequestError:
        return RequestError(path, FILE_LEVEL, None, "(file)", message)
    try:
        text = path.read_text(encoding="utf-8-sig")  # -sig: tolerate a byte-order mark
    except FileNotFoundError:
        raise file_error("file not found") from None
    except IsADirectoryError:
        raise file_error(IS_A_DIRECTORY) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise file_error(f"cannot read: {exc}") from None
    if path.suffix.lower() == ".jsonl":
        stop = None if limit is None else offset + limit
        records, index = [], 0
        # split("\n"), not splitlines(): JSON strings may hold raw U+2028 and similar.
        for lineno, line in enumerate(text.split("\n"), start=1):
            if not line.strip():
                continue
            if stop is not None and index >= stop:
                break
            if index >= offset:  # records before the offset are skipped unparsed
                try:
                    records.append((index, json.loads(line)))
                except json.JSONDecodeError as exc:
                    raise file_error(f"line {lineno}: invalid JSON: {exc.msg} (column {exc.colno})") from None
            index += 1
        return FileSlice(records, min(offset, index), None)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise file_error(f"invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}") from None
    if not isinstance(data, list):
        raise file_error(f"top level is {json_kind(data)}, expected a list of records")
    whole = list(enumerate(data))
    return FileSlice(_window(whole, offset, limit), min(offset, len(whole)), whole)


def record_count(path: Path) -> int:
    """How many records a .json or .jsonl file holds (reads and parses it whole)."""
    return len(read_records(path, None).records)


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
    found = f"keys {sorted(first_record)}" if isinstance(first_record, dict) else f"a {json_kind(first_record)}"
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


class OpenedFile(NamedTuple):
    """What `open_records` gives: the resolved format, the file name, the raw records of the slice
    with their indices, the MQuAKE neighbourhood index, and how many records preceded the slice."""

    format: str
    file: str
    records: list[tuple[int, Any]]
    neighbours: NeighbourIndex | None
    skipped: int


def open_records(path, format: str, limit: int | None, zsre_target: str, offset: int = 0,
                 mquake_neighbours: int = 0) -> OpenedFile:
    """Check the arguments, read the raw records `offset` .. `offset + limit`, resolve the format.
    `neighbours` is the neighbourhood index of an MQuAKE file (built from all its records, whatever
    slice a run edits), None for other formats, for `mquake_neighbours` 0 or for an empty slice. A
    .json list is parsed once for its slice and its index."""
    check_arguments(format, limit, zsre_target, offset)
    path = Path(path)
    part = read_records(path, limit, offset)
    if format == "auto":
        format = detect_format(path, part.records[0][1]) if part.records else "jsonl"
    neighbours = None
    if format == "mquake" and mquake_neighbours > 0 and part.records:
        everything = part.whole if part.whole is not None else read_records(path, None).records
        neighbours = NeighbourIndex((record for _, record in everything), mquake_neighbours)
    return OpenedFile(format, str(path), part.records, neighbours, part.skipped)


def parse_record(format: str, file: str, index: int, record: Any, zsre_target: str,
                 neighbours: NeighbourIndex | None = None):
    """One raw record -> its requests, or the RequestError that rejects it. `neighbours`
    (MQuAKE only) gives each rewrite its neighbourhood prompts."""
    try:
        if not isinstance(record, dict):
            raise RequestError(file, index, None, "(record)", f"expected an object, got {json_kind(record)}")
        case_id = record.get("case_id", index)
        if isinstance(case_id, bool) or not isinstance(case_id, (int, str)) or not str(case_id).strip():
            raise RequestError(file, index, None, "case_id",
                               f"expected an integer or non-empty string, got {case_id!r}")
        requests = _PARSERS[format](_Fields(record, file, index, str(case_id)), zsre_target)
    except RequestError as exc:
        return exc
    if format == "mquake" and neighbours is not None:  # one request per rewrite, in order
        requests = [replace(r, neighbourhood=neighbours.prompts_for(item))
                    for r, item in zip(requests, record["requested_rewrite"])]
    return requests


def parse_fact_record(file: str, index: int, record: dict) -> list[EditRequest] | RequestError:
    """A JSONL fact (`prompt`, `subject`, `target_true`): something to keep, nothing to edit."""
    f = _Fields(record, file, index, str(record.get("case_id", index)))
    try:
        subject = f.text("subject")
        prompt, answer = _filled(f.text("prompt"), subject), f.text("target_true")
        _require_subject(f, "prompt", prompt, subject, TEMPLATE_HINT)
    except RequestError as exc:
        return exc
    return [EditRequest(f.case_id, prompt, subject, target_new=answer, target_true=answer)]
