"""The edit request, the unedited fact, and the error that locates a bad record.

Every file format (`request_formats.py`) becomes these frozen types; everything downstream
(augmentation, training, evaluation, reports) reads only them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields


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


FILE_LEVEL = "-"
"""The record index of a RequestError about a whole file: missing, unreadable, not JSON, ..."""


class RequestError(ValueError):
    """A file or record that cannot become an edit request, located precisely."""

    def __init__(self, file, index, case_id, field, message):
        self.file, self.index, self.case_id = str(file), index, case_id
        self.field, self.message = field, message
        shown_id = "?" if case_id is None else case_id
        if index == FILE_LEVEL:  # the whole file (or pattern) is at fault, not one record of it
            super().__init__(f"{file}: {message}")
        else:
            super().__init__(f"{file}: record {index} (case_id {shown_id}): field '{field}': {message}")

    def __reduce__(self):
        # Exceptions pickle via self.args, which here is the formatted text only;
        # rebuild from the parts so errors survive multiprocessing.
        return (type(self), (self.file, self.index, self.case_id, self.field, self.message))
