"""Edit requests -> training examples: the paper's two augmentations.

1. Pseudo-paraphrases: the edit prompt behind random short prefixes that the model itself
   generated (ROME-style context templates), target = the new answer. They teach the edit to
   hold in other contexts (generalization).
2. Locality facts: unedited facts from a pool (random ones, ones similar to the edit prompt, and
   ones sharing the edit's old answer) trained to keep their answers (locality).

Everything here is pure and seeded per request (the random choices of a request depend only on
the run seed and its case id), so the same examples come out however Ray Data batches and
shards the requests. Evaluation prompts of every edit in the run are never trained on.
"""

from __future__ import annotations

import logging
import random
import time
from bisect import bisect_left
from collections import defaultdict

import numpy as np

from ftedit.config import AugmentConfig
from ftedit.requests import EditRequest, Fact, text_key

log = logging.getLogger(__name__)

# Example kinds: "edit", "paraphrase" (train the new target), and the locality facts below.
LOCALITY_KINDS = ("random", "similar", "same_answer")


def normalize(prompt: str) -> str:
    """Prompts compare equal regardless of case and spacing."""
    return " ".join(prompt.lower().split())


class DigestSet:
    """A set of strings held as sorted 8-byte keys (`requests.text_key`).

    Every evaluation prompt of a 100,000-edit run is a million strings; as keys they take 8 MB
    and travel to the Ray Data tasks that augment the requests.
    """

    def __init__(self, keys=()):
        self.keys = np.unique(np.asarray(keys, dtype=np.int64))

    @classmethod
    def of(cls, texts) -> "DigestSet":
        return cls(np.fromiter((text_key(t) for t in texts), dtype=np.int64))

    def __contains__(self, text: str) -> bool:
        key = text_key(text)
        i = int(np.searchsorted(self.keys, key))
        return i < len(self.keys) and int(self.keys[i]) == key

    def __len__(self) -> int:
        return len(self.keys)


def eval_prompt_keys(requests: list[EditRequest]) -> np.ndarray:
    """Keys of the normalized evaluation prompts of `requests` (see `never_train_on`)."""
    return np.fromiter((text_key(normalize(p)) for r in requests for p in r.eval_prompts()), dtype=np.int64)


def never_train_on(requests: list[EditRequest]) -> DigestSet:
    """Normalized prompts that must never be trained on: every evaluation prompt of the run."""
    return DigestSet(eval_prompt_keys(requests))


class PoolIndex:
    """The fact pool indexed for `facts_to_drop`: built once, asked once per batch of requests."""

    def __init__(self, pool: list[Fact]):
        self.prompts = [normalize(f.prompt) for f in pool]
        self.by_prompt: dict[str, list[int]] = defaultdict(list)
        self.by_subject: dict[str, list[int]] = defaultdict(list)
        for i, (prompt, fact) in enumerate(zip(self.prompts, pool)):
            self.by_prompt[prompt].append(i)
            self.by_subject[normalize(fact.subject)].append(i)

    def facts_to_drop(self, requests: list[EditRequest]) -> set[int]:
        """Pool facts the run must not train on, given some of its requests: facts whose prompt is
        an edit or evaluation prompt, and facts about an edited subject (named as the fact's
        subject, or inside its prompt). Requests can be given in batches: the union is the same."""
        drop: set[int] = set()
        for r in requests:
            for prompt in (r.prompt, *r.eval_prompts()):
                drop.update(self.by_prompt.get(normalize(prompt), ()))
            drop.update(self.by_subject.get(normalize(r.subject), ()))
        # The pool's subject field may name something else while the prompt mentions an edited
        # subject. Subjects shorter than 4 characters ("I", "US") would match anywhere.
        by_head: dict[str, list[str]] = defaultdict(list)
        for subject in {normalize(r.subject) for r in requests}:
            if len(subject) >= 4:
                by_head[subject[:4]].append(subject)
        if by_head:
            for i, prompt in enumerate(self.prompts):
                if i not in drop and _mentions(prompt, by_head):
                    drop.add(i)
        return drop


def _mentions(prompt: str, by_head: dict[str, list[str]]) -> bool:
    """Whether `prompt` contains one of the subjects (indexed by their first 4 characters)."""
    for start in range(len(prompt) - 3):
        for subject in by_head.get(prompt[start : start + 4], ()):
            if prompt.startswith(subject, start):
                return True
    return False


def filter_fact_pool(pool: list[Fact], requests: list[EditRequest]) -> list[Fact]:
    """Drop pool facts that are evaluation prompts, edit prompts, or about an edited subject."""
    drop = PoolIndex(pool).facts_to_drop(requests)
    return [fact for i, fact in enumerate(pool) if i not in drop]


def answer_index(pool: list[Fact]) -> dict[str, list[int]]:
    """Pool indices by normalized answer, for `n_same_answer` (built once, shipped with the pool)."""
    index: dict[str, list[int]] = defaultdict(list)
    for i, fact in enumerate(pool):
        index[normalize(fact.target)].append(i)
    return dict(index)


def with_prefix(prefix: str, prompt: str) -> str:
    return f"{prefix}. {prompt}"


def skip_over(positions: list[int], excluded: set[int]) -> list[int]:
    """Each position of a sequence with the positions `excluded` taken out, as a position of the
    whole sequence, in order.

    `rng.sample(range(n - len(excluded)), k)` then `skip_over` draws exactly what sampling the
    list of non-excluded items would, without building that list: per edit, O(k x excluded)
    instead of O(pool), which at 100,000 edits and a 100,000-fact pool is the difference
    between milliseconds and hours.
    """
    taken = sorted(excluded)
    indices = []
    for position in positions:
        index = position
        for t in taken:  # ascending: each excluded index at or below the running index moves it up one
            if t <= index:
                index += 1
            else:
                break
        indices.append(index)
    return indices


def augment_request(
    request: EditRequest,
    prefixes: list[str],
    pool: list[Fact],
    similar: list[int],
    cfg: AugmentConfig,
    seed: int,
    forbidden_prompts: DigestSet | frozenset[str] = frozenset(),
    continuation: str = "",
    by_answer: dict[str, list[int]] | None = None,
) -> list[dict]:
    """The training examples of one edit: dicts with case_id, prompt, target, continuation, kind.

    `similar` holds pool indices nearest to the edit prompt (best first); `forbidden_prompts`
    are normalized evaluation prompts that must not appear as a training prompt. `continuation`
    (the unedited model's text after the new fact, `ftedit.continuation`) follows the target of
    the edit prompt and, with `cfg.continuation_on == "all"`, of its prefixed copies; locality
    facts have none. `by_answer` is the pool's
    `answer_index`, needed for `cfg.n_same_answer`.
    """
    rng = random.Random(f"{seed}:{request.case_id}")
    examples = []

    def add(prompt: str, target: str, kind: str, after: str = "") -> None:
        if normalize(prompt) not in forbidden_prompts:
            examples.append({"case_id": request.case_id, "prompt": prompt, "target": target,
                             "continuation": after, "kind": kind})

    if cfg.keep_edit_prompt:
        add(request.prompt, request.target_new, "edit", continuation)
    for prefix in rng.sample(prefixes, min(cfg.n_paraphrase, len(prefixes))):
        add(with_prefix(prefix, request.prompt), request.target_new, "paraphrase",
            continuation if cfg.continuation_on == "all" else "")

    chosen: set[int] = set()
    for index in similar[: cfg.n_similar]:
        chosen.add(index)
        add(pool[index].prompt, pool[index].target, "similar")
    # Random facts are drawn among those not already chosen as similar ones.
    n_candidates = len(pool) - len(chosen)
    for index in skip_over(rng.sample(range(n_candidates), min(cfg.n_random, n_candidates)), chosen):
        chosen.add(index)
        add(pool[index].prompt, pool[index].target, "random")
    if cfg.n_same_answer and request.target_true and by_answer:
        # A generator of its own: adding these facts leaves the other draws of a seed unchanged.
        same_rng = random.Random(f"{seed}:{request.case_id}:same_answer")
        group = by_answer.get(normalize(request.target_true), [])  # ascending pool indices
        # Positions of the facts already chosen within the group, found by bisection: the group of a
        # common answer ("English") can be a large share of the pool, too long to filter per edit.
        taken = {at for at in (bisect_left(group, i) for i in chosen) if at < len(group) and group[at] in chosen}
        n_same = len(group) - len(taken)
        for at in skip_over(same_rng.sample(range(n_same), min(cfg.n_same_answer, n_same)), taken):
            index = group[at]
            add(pool[index].prompt, pool[index].target, "same_answer")
    return examples


def generate_prefixes(model, tokenizer, cfg: AugmentConfig, seed: int) -> list[str]:
    """`cfg.prefix_bank` short texts sampled from the model, as ROME builds context templates.

    Sampled once per run (seeded) and saved with it. Each prefix starts with one of
    `cfg.prefix_starts`, is cut to one line, and has braces removed.
    """
    import torch

    from ftedit.placement import input_device

    started = time.perf_counter()
    generator = torch.Generator().manual_seed(seed)
    device = input_device(model)
    prefixes: list[str] = []
    starts = [cfg.prefix_starts[i % len(cfg.prefix_starts)] for i in range(cfg.prefix_bank)]
    model.eval()
    with torch.no_grad():
        for start in sorted(set(starts), key=starts.index):
            count = starts.count(start)
            ids = tokenizer(start, add_special_tokens=False, return_tensors="pt")["input_ids"].to(device)
            ids = ids.repeat(count, 1)
            out = _sample(model, ids, cfg.prefix_tokens, generator)
            for row in out:
                text = tokenizer.decode(row, skip_special_tokens=True)
                text = text.replace("{", " ").replace("}", " ").splitlines()[0].strip() if text.strip() else start
                prefixes.append(text or start)
    log.info("sampled %d prefixes of up to %d tokens for the pseudo-paraphrases (%.0f s)", len(prefixes),
             cfg.prefix_tokens, time.perf_counter() - started)
    return prefixes


def _sample(model, ids, new_tokens: int, generator, top_k: int = 5):
    """Top-k sampling with an explicit generator, so prefixes are reproducible from the seed.

    Each step feeds only the token just drawn and reuses the keys and values of the ones before
    (the rows share their start, so there is no padding to mask). The draws are the same as when
    every step ran the whole sequence again, in half the time: 6 s against 12 s for the default
    50 prefixes of SmolLM2-135M on 2 CPU cores. A model that returns no cache gets the whole
    sequence each step.
    """
    import torch

    step_ids, past = ids, None
    for _ in range(new_tokens):
        out = model(input_ids=step_ids, past_key_values=past, use_cache=True)
        logits = out.logits[:, -1, :].float()
        top = torch.topk(logits, top_k, dim=-1)
        probs = torch.softmax(top.values, dim=-1).cpu()
        pick = torch.multinomial(probs, 1, generator=generator).to(ids.device)
        drawn = top.indices.gather(-1, pick)
        ids = torch.cat([ids, drawn], dim=-1)
        past = getattr(out, "past_key_values", None)
        step_ids = drawn if past is not None else ids
    return ids
