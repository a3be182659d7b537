"""Score edit requests on a model, before and after editing, with the same code.

Each request becomes probes, (prompt, target) pairs, scored in batches: per probe the mean
per-token NLL of " " + target given the prompt, and the teacher-forced argmax of every target
token. Probes are de-duplicated across requests and packed end to end
into rows (no padding). Metrics (metrics.py) are then pure functions of these scores.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ftedit.config import EvalConfig
from ftedit.fluency import generate_greedy, generation_prompts
from ftedit.metrics import (
    ProbeScore,
    accuracy_record,
    counterfact_record,
    easyedit_locality_record,
    ngram_entropy,
    portability_record,
    summarize,
)
from ftedit.model import pad_token_id
from ftedit.placement import input_device
from ftedit.edit_request import EditRequest
from ftedit.loss import target_logits
from ftedit.tokenize import encode_examples, pack_batch

log = logging.getLogger(__name__)

Probe = tuple[str, str]  # (prompt, target)


def metric_kind(data_format: str, configured: str, missing_true: Sequence[str] = ()) -> str:
    """`counterfact` (probability comparisons) needs a true answer per request; zsRE uses accuracy.

    `missing_true`: case ids of (some of) the requests without target_true; empty if none lacks it.
    """
    if configured != "auto":
        kind = configured
    else:
        kind = "zsre" if data_format == "zsre" else "counterfact"
    if kind == "counterfact" and missing_true:
        if configured == "auto":
            return "zsre"  # no true answers: only accuracies can be computed
        raise ValueError(f"eval.kind=counterfact needs target_true; missing for case_id {list(missing_true)[:5]}")
    return kind


def locality_probes(request: EditRequest) -> list[Probe]:
    """Neighbourhood prompts with their gold answer (EasyEdit locality, zsRE specificity)."""
    answer = request.neighbourhood_answer or request.target_true
    return [(p, answer) for p in request.neighbourhood] if answer else []


def probes_of(request: EditRequest, kind: str) -> list[Probe]:
    probes = [(p, request.target_new) for p in (request.prompt, *request.paraphrases)]
    if kind == "counterfact":
        prompts = (request.prompt, *request.paraphrases, *request.neighbourhood)
        probes += [(p, request.target_new) for p in request.neighbourhood]
        probes += [(p, request.target_true) for p in prompts]
    return probes + locality_probes(request) + portability_probes(request, kind)


def portability_probes(request: EditRequest, kind: str) -> list[Probe]:
    """Multi-hop questions with the answer the edit should lead to (and, for probability
    comparisons, the answer before it)."""
    probes = [(q, request.portability_new) for q in request.portability]
    if kind == "counterfact" and request.portability_true:
        probes += [(q, request.portability_true) for q in request.portability]
    return probes


@torch.no_grad()
def score_probes(model, tokenizer, probes: list[Probe], batch_size: int, row_length: int) -> dict[Probe, ProbeScore]:
    """Mean target NLL and teacher-forced argmax per unique probe, `batch_size` probes per packed pass."""
    unique = list(dict.fromkeys(probes))
    encoded = encode_examples(tokenizer, [p for p, _ in unique], [t for _, t in unique])
    device = input_device(model)
    pad = pad_token_id(tokenizer)
    scores: dict[Probe, ProbeScore] = {}
    model.eval()
    started, n_batches = time.perf_counter(), (len(unique) + batch_size - 1) // batch_size
    for b, start in enumerate(range(0, len(unique), batch_size)):
        chunk = encoded[start : start + batch_size]
        batch = pack_batch([e["input_ids"] for e in chunk], [e["labels"] for e in chunk], pad, row_length)
        logits, labels, example = target_logits(model, {k: v.to(device) for k, v in batch.items()})
        nll = -torch.log_softmax(logits.float(), dim=-1).gather(-1, labels[:, None])[:, 0]
        correct = logits.argmax(-1)
        # Group the per-token values by probe (tokens of one probe keep their order).
        order = torch.argsort(example, stable=True)
        counts = torch.bincount(example, minlength=len(chunk)).tolist()
        for j, (token_nll, argmax, target) in enumerate(
            zip(nll[order].split(counts), correct[order].split(counts), labels[order].split(counts))
        ):
            scores[unique[start + j]] = ProbeScore(
                nll=token_nll.mean().item(),
                correct=tuple(bool(x) for x in (argmax == target).tolist()),
                argmax=tuple(argmax.tolist()),
            )
        if (b + 1) % 20 == 0 or b + 1 == n_batches:
            log.info("  scored %d/%d batches (%.0f s)", b + 1, n_batches, time.perf_counter() - started)
    return scores


@dataclass
class Evaluation:
    records: list[dict]  # per request: case_id and its metric values (fractions)
    summary: dict  # percent, as metrics.summarize reports it
    scores: dict[Probe, ProbeScore]  # kept so a later evaluation can compare argmax tokens


def evaluate(
    model, tokenizer, requests: list[EditRequest], kind: str, settings: EvalConfig, reference: Evaluation | None = None
) -> Evaluation:
    """Evaluate every request. `reference` (the unedited model's evaluation) gives EasyEdit locality."""
    probes = [probe for r in requests for probe in probes_of(r, kind)]
    scores = score_probes(model, tokenizer, probes, settings.batch_size, settings.pack_length)
    before = reference.scores if reference is not None else scores
    records = []
    for r in requests:
        if kind == "counterfact":

            def pairs(prompts):
                return [(scores[(p, r.target_new)], scores[(p, r.target_true)]) for p in prompts]

            values = counterfact_record(pairs([r.prompt]), pairs(r.paraphrases), pairs(r.neighbourhood))
        else:
            values = accuracy_record(
                [scores[(r.prompt, r.target_new)]],
                [scores[(p, r.target_new)] for p in r.paraphrases],
                [scores[probe] for probe in locality_probes(r)],
            )
        if r.portability:  # new-answer probes first, then the old answer's (if compared)
            found = [scores[probe] for probe in portability_probes(r, kind)]
            n = len(r.portability)
            values["portability"] = portability_record(found[:n], found[n:] or None)
        values["easyedit_locality"] = easyedit_locality_record(
            [(before[probe], scores[probe]) for probe in locality_probes(r)]
        )
        records.append({"case_id": r.case_id, **values})
    if settings.fluency_tokens:
        add_fluency(model, tokenizer, requests, records, settings)
    return Evaluation(records=records, summary=summarize(records, kind), scores=scores)


def add_fluency(model, tokenizer, requests: list[EditRequest], records: list[dict], settings: EvalConfig) -> None:
    """Per record: `fluency` (mean n-gram entropy of its generations) and the `generations`."""
    prompts = [generation_prompts(r, settings.fluency_prompts) for r in requests]
    flat = [p for ps in prompts for p in ps]
    texts = iter(generate_greedy(model, tokenizer, flat, settings.fluency_tokens, settings.batch_size))
    for record, ps in zip(records, prompts):
        generations = [next(texts) for _ in ps]
        record["fluency"] = sum(ngram_entropy(t) for t in generations) / len(generations)
        record["generations"] = [p + t for p, t in zip(ps, generations)]
