"""Edit-evaluation metrics over per-prompt scores (pure functions, no model).

Reproduces:
  * CounterFact ES/PS/NS and EM/PM/NM exactly as kmeng01/memit
    ``experiments/summarize.py`` computes them: first a mean over the prompts of
    one record, then a mean over records, reported x100.
  * zsRE efficacy / generalization / specificity as MEMIT's
    ``experiments/py/eval_utils_zsre.py`` computes them: teacher-forced top-1
    token accuracy, averaged over target tokens, then prompts, then records.
  * EasyEdit locality: fraction of target positions where the post-edit argmax
    token equals the pre-edit argmax token (``compute_locality_quality``).
  * The MEMIT "Score": harmonic mean of efficacy, generalization and locality.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Iterable, Optional, Sequence

import numpy as np

__all__ = [
    "ProbeScore",
    "counterfact_record",
    "accuracy_record",
    "agreement",
    "easyedit_locality_record",
    "portability_record",
    "harmonic_mean",
    "ngram_entropy",
    "summarize",
    "MetricTotals",
]


@dataclass(frozen=True)
class ProbeScore:
    """Score of one target string on one prompt.

    nll: mean per-token negative log-likelihood of the target tokens
         (" " + target) given the prompt.
    correct: per target token, whether the teacher-forced argmax equals it.
    argmax: per target token, the teacher-forced argmax token id.
    """

    nll: float
    correct: tuple[bool, ...]
    argmax: tuple[int, ...]


Pair = tuple[ProbeScore, ProbeScore]  # (score of target_new, score of target_true)


def _mean(values: Sequence[float]) -> Optional[float]:
    """Mean as a Python float, or None for an empty sequence."""
    if len(values) == 0:
        return None
    return float(np.mean(np.asarray(values, dtype=np.float64)))


def _success(pairs: Sequence[Pair], new_wins: bool) -> Optional[float]:
    # MEMIT: rewrite/paraphrase success = target_true > target_new (NLLs);
    # neighbourhood success = target_true < target_new.
    if new_wins:
        return _mean([float(t.nll > n.nll) for n, t in pairs])
    return _mean([float(t.nll < n.nll) for n, t in pairs])


def _magnitude(pairs: Sequence[Pair], new_wins: bool) -> Optional[float]:
    # MEMIT: rewrite/paraphrase diff = exp(-nll_new) - exp(-nll_true);
    # neighbourhood diff = exp(-nll_true) - exp(-nll_new).
    sign = 1.0 if new_wins else -1.0
    return _mean([sign * (math.exp(-n.nll) - math.exp(-t.nll)) for n, t in pairs])


def counterfact_record(
    rewrite: Sequence[Pair], paraphrase: Sequence[Pair], neighbourhood: Sequence[Pair]
) -> dict:
    """CounterFact metrics for one edit record (MEMIT ``summarize.py``, per case).

    Each argument lists (score_new, score_true) pairs, one per prompt.
    es/ps: fraction of rewrite/paraphrase prompts with nll_true > nll_new.
    ns: fraction of neighbourhood prompts with nll_true < nll_new.
    em/pm: mean exp(-nll_new) - exp(-nll_true); nm: mean exp(-nll_true) - exp(-nll_new).
    An empty group gives None for its two keys. Values are fractions (not x100).
    """
    return {
        "es": _success(rewrite, True),
        "ps": _success(paraphrase, True),
        "ns": _success(neighbourhood, False),
        "em": _magnitude(rewrite, True),
        "pm": _magnitude(paraphrase, True),
        "nm": _magnitude(neighbourhood, False),
    }


def _token_accuracy(scores: Sequence[ProbeScore]) -> Optional[float]:
    per_prompt = []
    for s in scores:
        if len(s.correct) == 0:
            raise ValueError("ProbeScore has no target tokens")
        per_prompt.append(float(np.mean(np.asarray(s.correct, dtype=np.float64))))
    return _mean(per_prompt)


def accuracy_record(
    efficacy: Sequence[ProbeScore],
    generalization: Sequence[ProbeScore],
    locality: Sequence[ProbeScore],
) -> dict:
    """zsRE metrics for one record (MEMIT ``eval_utils_zsre.py``).

    Teacher-forced top-1 token accuracy: per prompt the mean of ``correct`` over
    its target tokens, per group the mean over prompts (None when empty).
    efficacy: src prompts vs. new target; generalization: rephrases vs. new
    target; specificity: loc prompts vs. the gold loc answer.
    """
    return {
        "efficacy": _token_accuracy(efficacy),
        "generalization": _token_accuracy(generalization),
        "specificity": _token_accuracy(locality),
    }


def portability_record(new: Sequence[ProbeScore], true: Optional[Sequence[ProbeScore]] = None) -> Optional[float]:
    """Share of a record's multi-hop questions answered with the new fact.

    With the pre-edit answer's scores (`true`, one per question) a question counts when the new
    answer is the more likely one (as ES compares targets); without them, the teacher-forced
    token accuracy of the new answer (as zsRE's efficacy).
    """
    if true is None:
        return _token_accuracy(new)
    if len(true) != len(new):
        raise ValueError(f"{len(new)} new-answer scores but {len(true)} true-answer scores")
    return _success(list(zip(new, true)), True)


def agreement(pre: ProbeScore, post: ProbeScore) -> float:
    """EasyEdit locality for one prompt: fraction of target positions where
    the post-edit argmax token equals the pre-edit argmax token."""
    if len(pre.argmax) != len(post.argmax):
        raise ValueError(
            f"argmax length mismatch: pre {len(pre.argmax)} vs post {len(post.argmax)}"
        )
    if len(pre.argmax) == 0:
        raise ValueError("ProbeScore has no target tokens")
    same = [float(a == b) for a, b in zip(pre.argmax, post.argmax)]
    return float(np.mean(same))


def easyedit_locality_record(pairs: Sequence[tuple[ProbeScore, ProbeScore]]) -> Optional[float]:
    """Mean EasyEdit agreement over a record's neighbourhood prompts, given
    (pre, post) pairs; None if there are none."""
    return _mean([agreement(pre, post) for pre, post in pairs])


def harmonic_mean(values: Iterable[Optional[float]]) -> float:
    """Harmonic mean of positive numbers (MEMIT's Score = hmean(ES, PS, NS)).

    None entries are ignored; any 0 gives 0.0; negative values or nothing left
    raise ValueError.
    """
    vals = [float(v) for v in values if v is not None]
    if not vals:
        raise ValueError("harmonic_mean of no values")
    if any(v < 0 for v in vals):
        raise ValueError("harmonic_mean requires non-negative values")
    if any(v == 0 for v in vals):
        return 0.0
    return len(vals) / sum(1.0 / v for v in vals)


_WORD = re.compile(r"\w+|[^\w\s]")


def ngram_entropy(text: str, ns: Sequence[int] = (2, 3), weights: Sequence[float] = (2 / 3, 4 / 3)) -> float:
    """ROME/MEMIT generation entropy (fluency) of one text: the weighted mean, over n in `ns`, of
    the entropy in bits of its n-gram frequency distribution. Repetitive text scores low.

    Words and punctuation are split by a regex where ROME uses nltk's word_tokenize; on ordinary
    English the tokens agree.
    """
    words = _WORD.findall(text)
    values = []
    for n, weight in zip(ns, weights):
        grams = [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]
        if not grams:
            values.append(0.0)
            continue
        _, counts = np.unique(np.array([" ".join(g) for g in grams]), return_counts=True)
        freqs = counts / counts.sum()
        values.append(weight * float(-(freqs * np.log2(freqs)).sum()))
    return float(np.mean(values))


_KEYS = {
    "counterfact": ("es", "ps", "ns", "em", "pm", "nm"),
    "zsre": ("efficacy", "generalization", "specificity"),
}
# The edit score's terms (harmonic mean) and the score: the keys every summary has, whatever the data.
EDIT_SCORE_TERMS = ("efficacy", "generalization", "locality")
SUMMARY_KEYS = (*EDIT_SCORE_TERMS, "edit_score")
# The dataset-neutral names of each kind's three scores (what summaries and reports call them).
COMMON_KEYS = {
    "counterfact": {"efficacy": "es", "generalization": "ps", "locality": "ns"},
    "zsre": {"efficacy": "efficacy", "generalization": "generalization", "locality": "specificity"},
}

# Reported beside the edit score, never part of it; summarized where the records carry them.
_EXTRA = ("easyedit_locality", "portability", "fluency")


class MetricTotals:
    """Running sums behind `summarize`: records are added one by one (streamed), never held."""

    def __init__(self, kind: str):
        if kind not in _KEYS:
            raise ValueError(f"unknown kind {kind!r}; expected one of {sorted(_KEYS)}")
        self.kind = kind
        self.keys = list(_KEYS[kind]) + list(_EXTRA)
        self.sums = dict.fromkeys(self.keys, 0.0)
        self.counts = dict.fromkeys(self.keys, 0)
        self.present: set[str] = set()
        self.n_records = 0

    def add(self, record: dict) -> None:
        self.n_records += 1
        for key in self.keys:
            if key in record:
                self.present.add(key)
                if record[key] is not None:
                    self.sums[key] += float(record[key])
                    self.counts[key] += 1

    def summary(self) -> dict:
        """As `summarize` describes it."""
        keys = list(_KEYS[self.kind]) + [k for k in _EXTRA if k in self.present]
        out: dict = {key: 100.0 * self.sums[key] / self.counts[key] if self.counts[key] else None for key in keys}
        for common, src in COMMON_KEYS[self.kind].items():
            if common not in out:
                out[common] = out[src]
        present = [out[k] for k in EDIT_SCORE_TERMS if out[k] is not None]
        out["edit_score"] = harmonic_mean(present) if present else None
        out["n_records"] = self.n_records
        out["n_locality"] = self.counts[COMMON_KEYS[self.kind]["locality"]]  # records with locality prompts
        return out


def summarize(records: Sequence[dict], kind: str) -> dict:
    """Average per-record metrics over records, x100 (as MEMIT reports them).

    Each key is averaged over the records where it is not None (None if it is
    None everywhere); magnitudes em/pm/nm are also x100. Adds the common keys
    efficacy/generalization/locality, ``easyedit_locality`` and ``fluency`` if present (fluency
    x100 too, as MEMIT's generation entropy),
    ``portability`` where records carry it (x100),
    ``edit_score`` = harmonic mean of the non-None common keys, ``n_records``, and ``n_locality``
    (how many records have locality prompts, hence count in the locality mean).
    """
    totals = MetricTotals(kind)
    for record in records:
        totals.add(record)
    return totals.summary()
