"""Neighbourhood prompts for MQuAKE edits, built from the file's own unedited facts.

MQuAKE cases carry no locality prompts, so an edit score of efficacy and generalization alone
cannot see an edit that spills over: after "Ellie Kemper is a citizen of Croatia" a model may
answer "Croatia" for every American. CounterFact measures exactly that with its neighbourhood
prompts (other subjects with the edit's relation and old answer; NS: P(true) > P(new)). Every
MQuAKE case lists the facts of its chain of hops as Wikidata triples (`orig.triples`) with a
cloze statement each (`single_hops[i].cloze`), so the same prompts can be drawn from the file:
for a rewrite (relation r, old answer o), the cloze statements of other subjects' (s, r, o)
facts that no case in the file edits (`orig.edit_triples`), hence that no run on the file
edits either. Records without these fields give no candidates; they are never an error.
"""

from __future__ import annotations

import zlib
from collections import defaultdict
from collections.abc import Iterable
from typing import Any


def _get(value: Any, *keys):
    """value[k0][k1]..., or None where a level is missing or of the wrong type."""
    for key in keys:
        if isinstance(value, dict):
            value = value.get(key)
        elif isinstance(value, list) and isinstance(key, int) and -len(value) <= key < len(value):
            value = value[key]
        else:
            return None
    return value


def _triples(record: Any, key: str) -> list[tuple[str, str, str] | None]:
    """The [subject, relation, object] id triples of `record["orig"][key]`, None for a malformed
    one (kept in place: `triples` must stay aligned with `single_hops`)."""
    items = _get(record, "orig", key)
    if not isinstance(items, list):
        return []
    return [tuple(t) if isinstance(t, list) and len(t) == 3 and all(isinstance(x, str) for x in t) else None
            for t in items]


class NeighbourIndex:
    """Cloze statements of unedited facts, by (relation id, object id), from MQuAKE records."""

    def __init__(self, records: Iterable[Any], per_edit: int):
        records = list(records)
        self.per_edit = per_edit
        edited = {(t[0], t[1]) for record in records for t in _triples(record, "edit_triples") if t}
        self.candidates: dict[tuple[str, str], list[str]] = defaultdict(list)
        seen: set[tuple[str, str]] = set()
        for record in records:
            hops = _get(record, "single_hops")
            triples = _triples(record, "triples")
            if not isinstance(hops, list) or len(hops) != len(triples):
                continue  # hops and triples must align one to one
            for hop, triple in zip(hops, triples):
                cloze = _get(hop, "cloze")
                if triple is None or not isinstance(cloze, str) or not cloze.strip():
                    continue
                subject, relation, obj = triple
                if (subject, relation) in edited or (subject, relation) in seen:
                    continue
                seen.add((subject, relation))
                self.candidates[(relation, obj)].append(cloze)

    def prompts_for(self, rewrite: Any) -> tuple[str, ...]:
        """Up to `per_edit` neighbourhood prompts for one `requested_rewrite` item: its relation
        and old answer (`target_true.id`), other subjects. Which ones is fixed by the rewrite's
        subject, so a run scores the same prompts every time and different edits sharing a
        relation and answer get different neighbours where the file has enough."""
        relation, obj = _get(rewrite, "relation_id"), _get(rewrite, "target_true", "id")
        pool = self.candidates.get((relation, obj), []) if self.per_edit > 0 else []
        if not pool:
            return ()
        start = zlib.crc32(str(_get(rewrite, "subject")).encode()) % len(pool)  # crc32: stable across processes
        return tuple((pool[start:] + pool[:start])[: self.per_edit])
