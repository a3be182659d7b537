"""Evaluation on the cluster: the edit requests are a Ray Dataset scored by a pool of model actors.

Each actor loads the model once (the unedited base, or the base with the trained weights merged
in), on a GPU when it is given one, and runs `evaluate` (the same function the train loop's probe
uses) on batches of requests. Each request's row gains its metrics and the scores of its
locality probes, which the edited model's evaluation needs for EasyEdit locality. The results
stay on the cluster as a Dataset; the driver streams through them once, to write the per-edit
results and sum up the metrics. `eval.actors` replicas score in parallel; the driver never
loads the model for scoring.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time

import numpy as np

from ftedit.config import RunConfig
from ftedit.evaluate import Evaluation, evaluate, locality_probes
from ftedit.metrics import ProbeScore
from ftedit.edit_request import EditRequest

log = logging.getLogger(__name__)


def _encode_scores(scores: dict) -> str:
    return json.dumps([[list(probe), dataclasses.asdict(score)] for probe, score in scores.items()])


def _decode_scores(text: str) -> dict:
    return {tuple(probe): ProbeScore(nll=s["nll"], correct=tuple(s["correct"]), argmax=tuple(s["argmax"]))
            for probe, s in json.loads(text)}


class EvaluateRequests:
    """Ray Data actor: one model replica, evaluating batches of requests."""

    def __init__(self, model_path: str, trained, run: dict, kind: str):
        import torch

        from ftedit.checkpoint import trained_weights_here
        from ftedit.config import RunConfig, from_dict
        from ftedit.logs import show_progress
        from ftedit.placement import load_replica

        show_progress()  # the scored-batch and fluency lines below reach the driver's console
        cfg = from_dict(RunConfig, run)
        if not cfg.eval.gpus_per_actor:
            # Ray sets OMP_NUM_THREADS to the actor's CPUs (often 1); use this node's cores.
            torch.set_num_threads(cfg.eval.torch_threads or max(1, (os.cpu_count() or 1) // cfg.eval.actors))
        if trained is None:
            self.model, self.tokenizer = load_replica(model_path, cfg.model.dtype)
        else:
            with trained_weights_here(trained) as trained_dir:
                self.model, self.tokenizer = load_replica(model_path, cfg.model.dtype, trained_dir)
        self.settings, self.kind = cfg.eval, kind

    def __call__(self, batch: dict) -> dict:
        started = time.perf_counter()
        requests = [EditRequest.from_dict(json.loads(text)) for text in batch["request"]]
        reference = None
        if "reference" in batch:
            scores = {}
            for text in batch["reference"]:
                scores.update(_decode_scores(text))
            reference = Evaluation(records=[], summary={}, scores=scores)
        result = evaluate(self.model, self.tokenizer, requests, self.kind, self.settings, reference=reference)
        locality = [_encode_scores({p: result.scores[p] for p in locality_probes(r)}) for r in requests]
        kept = {k: v for k, v in batch.items() if k not in ("reference", "scores", "locality")}
        log.info("%s model: scored %d requests in %.0f s", "edited" if reference is not None else "unedited", len(requests),
                 time.perf_counter() - started)
        return {
            **kept,
            "scores": np.array([json.dumps(record) for record in result.records], dtype=object),
            "locality": np.array(locality, dtype=object),
        }


def evaluate_on_cluster(cfg: RunConfig, model_path, requests, kind: str, trained=None):
    """Score a Ray Dataset of requests on the base model (or the base with the trained weights of
    `trained`, the run's final Ray Train checkpoint) with `eval.actors` replicas; returns it
    materialized, with each request's metrics as JSON in `scores` and its locality probes' scores
    in `locality`.

    The edited model's evaluation takes the unedited one's output with `locality` renamed
    `reference` (EasyEdit locality compares the two models' top-1 tokens) and `scores` renamed
    `before` (carried through, for the per-edit results).
    """
    from ftedit.config import to_dict
    from ftedit.dataset import on_model_actors

    started = time.perf_counter()
    settings = cfg.eval
    scored = on_model_actors(requests, cfg, EvaluateRequests, (str(model_path), trained, to_dict(cfg), kind),
                             settings.requests_per_batch, count_rows=True).materialize()
    log.info("evaluated the requests on %d actor(s) in %.0f s", settings.actors, time.perf_counter() - started)
    return scored


def scored_rows(scored):
    """(request, before metrics, after metrics) per request of an edited model's evaluation, in
    order, streamed in batches (the driver holds one batch at a time).

    Only those three columns are read: the locality probes' scores are as big again, and every
    block the driver reads stays mapped in its memory (at 30,000 edits, 84 MB of the object
    store against 15 MB; BENCHMARKS.md, "The whole paper-scale job on CPU")."""
    columns = scored.select_columns(["request", "before", "scores"])
    for batch in columns.iter_batches(batch_size=1024, batch_format="numpy"):
        for request, before, after in zip(batch["request"], batch["before"], batch["scores"]):
            yield EditRequest.from_dict(json.loads(request)), json.loads(before), json.loads(after)
