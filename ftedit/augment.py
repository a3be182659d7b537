"""Edit requests -> training examples: the paper's two augmentations.

1. Pseudo-paraphrases: the edit prompt behind random short prefixes that the model itself
   generated (ROME-style context templates), target = the new answer. They teach the edit to
   hold in other contexts (generalization).
2. Locality facts: unedited facts from a pool (random ones, and ones similar to the edit prompt)
   trained to keep their answers (locality).

Everything here is pure and seeded per request (the random choices of a request depend only on
the run seed and its case id), so the same examples come out however Ray Data batches and
shards the requests. Evaluation prompts of every edit in the run are never trained on.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from ftedit.config import AugmentConfig
from ftedit.requests import EditRequest, Fact

# Example kinds: "edit", "paraphrase" (train the new target), and the locality facts below.
LOCALITY_KINDS = ("random", "similar")


def normalize(prompt: str) -> str:
    """Prompts compare equal regardless of case and spacing."""
    return " ".join(prompt.lower().split())


@dataclass(frozen=True)
class Exclusions:
    """What must never be trained on: every evaluation prompt, and facts about edited subjects."""

    eval_prompts: frozenset[str]
    edit_prompts: frozenset[str]
    subjects: frozenset[str]
    # Subjects long enough to search for inside a pool prompt ("I" or "US" would match anywhere).
    searchable_subjects: tuple[str, ...]

    @classmethod
    def of(cls, requests: list[EditRequest]) -> "Exclusions":
        subjects = frozenset(normalize(r.subject) for r in requests)
        return cls(
            eval_prompts=frozenset(normalize(p) for r in requests for p in r.eval_prompts()),
            edit_prompts=frozenset(normalize(r.prompt) for r in requests),
            subjects=subjects,
            searchable_subjects=tuple(sorted(s for s in subjects if len(s) >= 4)),
        )

    def allows(self, fact: Fact) -> bool:
        prompt = normalize(fact.prompt)
        if prompt in self.eval_prompts or prompt in self.edit_prompts:
            return False
        if normalize(fact.subject) in self.subjects:
            return False
        # The pool's subject field may name something else while the prompt mentions an edited subject.
        return not any(s in prompt for s in self.searchable_subjects)


def filter_fact_pool(pool: list[Fact], exclusions: Exclusions) -> list[Fact]:
    """Drop pool facts that are evaluation prompts, edit prompts, or about an edited subject."""
    return [fact for fact in pool if exclusions.allows(fact)]


def with_prefix(prefix: str, prompt: str) -> str:
    return f"{prefix}. {prompt}"


def augment_request(
    request: EditRequest,
    prefixes: list[str],
    pool: list[Fact],
    similar: list[int],
    cfg: AugmentConfig,
    seed: int,
    forbidden_prompts: frozenset[str] = frozenset(),
) -> list[dict]:
    """The training examples of one edit: dicts with case_id, prompt, target, kind.

    `similar` holds pool indices nearest to the edit prompt (best first); `forbidden_prompts`
    are normalized evaluation prompts that must not appear as a training prompt.
    """
    rng = random.Random(f"{seed}:{request.case_id}")
    examples = []

    def add(prompt: str, target: str, kind: str) -> None:
        if normalize(prompt) not in forbidden_prompts:
            examples.append({"case_id": request.case_id, "prompt": prompt, "target": target, "kind": kind})

    if cfg.keep_edit_prompt:
        add(request.prompt, request.target_new, "edit")
    for prefix in rng.sample(prefixes, min(cfg.n_paraphrase, len(prefixes))):
        add(with_prefix(prefix, request.prompt), request.target_new, "paraphrase")

    chosen: set[int] = set()
    for index in similar[: cfg.n_similar]:
        chosen.add(index)
        add(pool[index].prompt, pool[index].target, "similar")
    # Random facts are drawn among those not already chosen as similar ones.
    candidates = [i for i in range(len(pool)) if i not in chosen] if chosen else range(len(pool))
    for index in rng.sample(candidates, min(cfg.n_random, len(candidates))):
        add(pool[index].prompt, pool[index].target, "random")
    return examples


def generate_prefixes(model, tokenizer, cfg: AugmentConfig, seed: int) -> list[str]:
    """`cfg.prefix_bank` short texts sampled from the model, as ROME builds context templates.

    Sampled once per run (seeded) and saved with it. Each prefix starts with one of
    `cfg.prefix_starts`, is cut to one line, and has braces removed.
    """
    import torch

    generator = torch.Generator().manual_seed(seed)
    device = next(model.parameters()).device
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
    return prefixes


def _sample(model, ids, new_tokens: int, generator, top_k: int = 5):
    """Top-k sampling with an explicit generator, so prefixes are reproducible from the seed."""
    import torch

    for _ in range(new_tokens):
        logits = model(input_ids=ids).logits[:, -1, :].float()
        top = torch.topk(logits, top_k, dim=-1)
        probs = torch.softmax(top.values, dim=-1).cpu()
        pick = torch.multinomial(probs, 1, generator=generator).to(ids.device)
        ids = torch.cat([ids, top.indices.gather(-1, pick)], dim=-1)
    return ids
