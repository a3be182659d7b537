"""The training data as a Ray Dataset: requests -> augmented examples -> token ids, on the cluster.

Augmentation and tokenization run as Ray Data `map_batches` stages, so they spread over the
cluster's CPUs; the result is shuffled with the run seed and each Ray Train worker streams its
own shard of it.
"""

from __future__ import annotations

import json
import logging

import numpy as np

from ftedit.augment import LOCALITY_KINDS, DigestSet, answer_index, augment_request
from ftedit.config import RunConfig
from ftedit.edit_request import EditRequest, Fact
from ftedit.tokenize import TokenizeBatch

log = logging.getLogger(__name__)


def augment_batch(batch: dict, prefixes, pool, cfg, seed, forbidden, by_answer=None) -> dict:
    """Ray Data stage: a batch of request rows -> a batch of example rows."""
    rows = []
    n = len(batch["request"])
    similar = batch["similar"] if "similar" in batch else [None] * n
    continuations = batch["continuation"] if "continuation" in batch else [""] * n
    for text, nearest, after in zip(batch["request"], similar, continuations):
        request = EditRequest.from_dict(json.loads(text))
        nearest = json.loads(nearest) if nearest else []
        rows += augment_request(request, prefixes, pool, nearest, cfg, seed, forbidden, continuation=after,
                                by_answer=by_answer)
    keys = ("case_id", "prompt", "target", "continuation", "kind")
    return {key: np.array([row[key] for row in rows], dtype=object) for key in keys}


class OwnAnswers:
    """Ray Data stage (locality_target=model): the unedited model's own answer to each prompt.

    Greedy-decodes a few tokens per prompt (in left-padded batches, in the context training uses:
    no special tokens) and cuts at the first line break or sentence end, so the model is trained
    to keep saying what it said. Rows in: `prompt`; out: `prompt`, `answer`.
    """

    def __init__(self, model_path: str, dtype: str, max_new_tokens: int, batch_size: int = 32):
        from ftedit.placement import load_replica

        self.model, self.tokenizer = load_replica(model_path, dtype)
        self.max_new_tokens = max_new_tokens
        self.batch_size = batch_size

    def answers(self, prompts: list[str]) -> list[str]:
        from ftedit.fluency import generate_greedy

        generated = generate_greedy(self.model, self.tokenizer, prompts, self.max_new_tokens, self.batch_size,
                                    full_length=False, add_special_tokens=False)
        return [first_clause(text) for text in generated]

    def __call__(self, batch: dict) -> dict:
        answers = self.answers([str(p) for p in batch["prompt"]])
        return {"prompt": batch["prompt"], "answer": np.array(answers, dtype=object)}


def _locality_prompts(batch: dict) -> dict:
    """Ray Data stage: the distinct prompts of a batch's locality facts, and how many rows they fill."""
    local = np.isin(batch["kind"].astype(str), LOCALITY_KINDS)
    prompts, rows = np.unique(batch["prompt"][local].astype(str), return_counts=True)
    return {"prompt": prompts.astype(object), "rows": rows.astype(np.int64)}


def _with_answers(batch: dict, answers: dict[str, str]) -> dict:
    """Ray Data stage: locality facts' targets set to the model's answers (an empty answer keeps the gold one)."""
    targets = batch["target"].copy()
    for i, (kind, prompt) in enumerate(zip(batch["kind"], batch["prompt"])):
        if kind in LOCALITY_KINDS:
            targets[i] = answers.get(prompt) or targets[i]
    return {**batch, "target": targets}


def with_own_answers(ds, cfg: RunConfig, model_path: str):
    """The examples with their locality facts' targets replaced by the unedited model's own answers.

    Each distinct locality prompt is answered once, however many edits drew it: 10,000 edits
    with 10 facts each from a pool of 8,000 draw most pool facts a dozen times, and generation is
    what costs. The distinct prompts (at most the usable pool, which the driver holds already)
    and their answers pass through the driver; the examples stay on the cluster.
    """
    import ray

    ds = ds.materialize()  # read twice: for its locality prompts, then to set their targets
    prompts: set[str] = set()
    uses = 0
    for batch in ds.map_batches(_locality_prompts, batch_size=4096).iter_batches(batch_size=None, batch_format="numpy"):
        prompts.update(batch["prompt"].tolist())
        uses += int(batch["rows"].sum())
    if not prompts:
        return ds
    log.info("locality targets: the unedited model answers %d distinct prompts (%d locality facts)", len(prompts), uses)
    distinct = ray.data.from_items([{"prompt": p} for p in sorted(prompts)])
    answered = on_model_actors(distinct, cfg, OwnAnswers, (model_path, cfg.model.dtype, cfg.augment.locality_target_tokens),
                               256, count_rows=True)
    answers = {str(row["prompt"]): str(row["answer"]) for row in answered.iter_rows()}
    return ds.map_batches(_with_answers, fn_kwargs={"answers": answers}, batch_size=1024)


def first_clause(text: str) -> str:
    """A generated answer up to its first line break or sentence end, without trailing punctuation."""
    return text.split("\n")[0].split(". ")[0].strip().rstrip(".,;:")


def spread_over_actors(ds, actors: int, most_per_call: int, count_rows: bool = False):
    """`ds` re-cut into blocks of one actor call each when `actors` > 1, and the rows per call: at
    most `most_per_call`; with `count_rows` (cheap on a materialized dataset) fewer, where that
    keeps a small run from leaving some actors idle.

    A requests file arrives as one block, and a Ray Data actor pool hands out whole blocks: left
    as it is, one replica would do all the work while the others (each holding a model, on a GPU
    of its own) sat idle. The rows keep their order. The re-cut is materialized on its own:
    streamed beside actor stages, its tasks can wait forever for a CPU the actors hold (a Ray
    Data deadlock seen on a 2-CPU cluster). With one actor nothing changes.
    """
    if actors == 1:
        return ds, most_per_call
    per_call = max(1, min(most_per_call, -(-ds.count() // actors))) if count_rows else most_per_call
    return ds.repartition(target_num_rows_per_block=per_call).materialize(), per_call


def on_model_actors(ds, cfg: RunConfig, stage, constructor_args: tuple, most_per_call: int, count_rows: bool = False):
    """`ds` mapped by `stage`, a class that loads a model, on the scoring actors' pool:
    `eval.actors` replicas with `eval.gpus_per_actor` GPUs each (on a GPU cluster, generation
    for 10,000 edits of a large model belongs on GPUs, not on a CPU actor), cut by
    `spread_over_actors` so that every replica gets work."""
    from ray.data import ActorPoolStrategy

    ds, per_call = spread_over_actors(ds, cfg.eval.actors, most_per_call, count_rows)
    return ds.map_batches(
        stage,
        fn_constructor_args=constructor_args,
        batch_size=per_call,
        compute=ActorPoolStrategy(size=cfg.eval.actors),
        num_cpus=cfg.eval.cpus_per_actor,
        num_gpus=cfg.eval.gpus_per_actor or None,
    )


def build_training_dataset(
    cfg: RunConfig,
    requests,
    prefixes: list[str],
    pool: list[Fact],
    forbidden_prompts: DigestSet,
    model_path: str,
    embedder_path: str | None = None,
):
    """A materialized, shuffled Ray Dataset of tokenized training examples.

    `requests` is the run's request Dataset (`request_dataset.RequestSource.dataset`); the pool
    is already filtered, and `embedder_path` is needed when augment.n_similar > 0.
    """
    from ray.data import ActorPoolStrategy

    ds = requests
    own_answers = cfg.augment.locality_target == "model" and cfg.augment.n_unedited
    if cfg.augment.n_similar and pool:
        from ftedit.similarity import SimilarFacts

        # One actor embeds the pool, on all of its node's cores: the same vectors bit for bit as
        # on one core, in 0.55x the time on 2 cores (BENCHMARKS.md).
        ds = ds.map_batches(
            SimilarFacts,
            fn_constructor_args=(embedder_path, [f.prompt for f in pool], cfg.augment.n_similar),
            fn_constructor_kwargs={"ray_stage": True},
            batch_size=1024,
            compute=ActorPoolStrategy(size=1),
        )
    if cfg.augment.continuation_tokens:
        from ftedit.continuation import Continuations

        ds = on_model_actors(ds, cfg, Continuations, (model_path, cfg.model.dtype, cfg.augment.continuation_tokens), 64)
    ds = ds.map_batches(
        augment_batch,
        fn_kwargs={
            "prefixes": prefixes,
            "pool": pool,
            "cfg": cfg.augment,
            "seed": cfg.seed,
            "forbidden": forbidden_prompts,
            "by_answer": answer_index(pool) if cfg.augment.n_same_answer else None,
        },
        batch_size=256,
    )
    if own_answers:
        ds = with_own_answers(ds, cfg, model_path)
    if cfg.eval.actors > 1 and cfg.augment.continuation_tokens:
        # Several replicas may hold every CPU of a small cluster: let them finish before the
        # tokenizer's actor and the shuffle's tasks ask for one (Ray Data would wait forever).
        ds = ds.materialize()
    ds = ds.map_batches(
        TokenizeBatch,
        fn_constructor_args=(model_path, cfg.loss.mode == "conditional"),
        batch_size=1024,
        compute=ActorPoolStrategy(size=1),
    )
    return ds.random_shuffle(seed=cfg.seed).materialize()


def _count_block(batch: dict) -> dict:
    kinds, counts = np.unique(batch["kind"].astype(str), return_counts=True)
    tokens = [int(batch["n_tokens"][batch["kind"] == kind].sum()) for kind in kinds]
    return {"kind": kinds, "count": counts, "tokens": np.array(tokens, dtype=np.int64)}


def example_counts(ds) -> dict:
    """Examples per kind and token total, for the report and the scheduler.

    Counted per block on the cluster and summed here: only a few rows per block reach the driver.
    """
    by_kind: dict[str, int] = {}
    tokens = 0
    for row in ds.select_columns(["kind", "n_tokens"]).map_batches(_count_block, batch_size=None).take_all():
        by_kind[str(row["kind"])] = by_kind.get(str(row["kind"]), 0) + int(row["count"])
        tokens += int(row["tokens"])
    return {"examples": sum(by_kind.values()), "tokens": tokens, "by_kind": dict(sorted(by_kind.items()))}
