from dataclasses import replace

import pytest

from ftedit.augment import (
    DigestSet,
    PoolIndex,
    answer_index,
    augment_request,
    filter_fact_pool,
    generate_prefixes,
    never_train_on,
    normalize,
    with_prefix,
)
from ftedit.config import AugmentConfig
from ftedit.requests import EditRequest, Fact, load_fact_pool, load_requests

EDIT = EditRequest(
    case_id="1",
    prompt="The mother tongue of Danielle Darrieux is",
    subject="Danielle Darrieux",
    target_new="English",
    target_true="French",
    paraphrases=("Danielle Darrieux grew up speaking",),
    neighbourhood=("Michel Rocard is a native speaker of",),
)
OTHER = EditRequest(
    case_id="2",
    prompt="Apple was founded by Steve",
    subject="Apple",
    target_new="Wozniak",
    target_true="Jobs",
    paraphrases=("The founder of Apple is Steve",),
    neighbourhood=("The founder of NeXT was Steve",),
)
POOL = [
    Fact("The capital of Spain is", "Madrid", "Spain"),
    Fact("Michel Rocard is a native speaker of", "French", "Michel Rocard"),  # EDIT's neighbourhood prompt
    Fact("The founder of Apple is Steve", "Jobs", "Apple Inc."),  # OTHER's paraphrase prompt
    Fact("Danielle Darrieux was born in", "Bordeaux", "Danielle Darrieux"),  # edited subject
    Fact("The birthplace of danielle darrieux is", "Bordeaux", "the actress"),  # subject inside the prompt
    Fact("Apple was founded by Steve", "Jobs", "Apple (company)"),  # an edit prompt, with its old answer
    Fact("The capital of Italy is", "Rome", "Italy"),
]


def test_pool_facts_that_are_evaluation_prompts_or_about_edited_subjects_are_dropped():
    kept = filter_fact_pool(POOL, [EDIT, OTHER])
    assert [f.prompt for f in kept] == ["The capital of Spain is", "The capital of Italy is"]
    # Asked batch by batch (as the Ray Data stage does), the facts to drop are the same.
    index = PoolIndex(POOL)
    assert index.facts_to_drop([EDIT]) | index.facts_to_drop([OTHER]) == index.facts_to_drop([EDIT, OTHER]) == {1, 2, 3, 4, 5}
    # A short subject is not searched inside prompts ("Rome" is in no prompt as a subject here).
    assert PoolIndex(POOL).facts_to_drop([EditRequest("3", "US is in", "US", "Asia")]) == set()


def test_digest_set_membership():
    texts = [f"prompt {i}" for i in range(1000)]
    digests = DigestSet.of(texts + texts[:10])
    assert len(digests) == 1000
    assert all(t in digests for t in texts) and "prompt 1000" not in digests and "" not in digests
    assert "x" not in DigestSet()


def test_no_evaluation_prompt_of_any_edit_is_ever_trained_on(shared_data):
    """Real data: 200 CounterFact edits with the real pool; no training prompt is an eval prompt."""
    requests = load_requests(shared_data / "counterfact" / "counterfact-edit.json", limit=200).requests
    forbidden = never_train_on(requests)
    eval_prompts = {normalize(p) for r in requests for p in r.eval_prompts()}
    pool = filter_fact_pool(load_fact_pool(shared_data / "counterfact" / "counterfact-train.json"), requests)
    # Add every eval prompt to the pool on purpose, answered with the edit's old answer (the true
    # answer of its neighbourhood prompts): the filter must catch them all, or same-answer draws
    # would pick them.
    planted = [Fact(p, r.target_true, "planted") for r in requests for p in r.eval_prompts()]
    pool = filter_fact_pool(pool + planted, requests)
    cfg = AugmentConfig(n_paraphrase=3, prefix_bank=5, n_random=20, n_same_answer=10)
    by_answer = answer_index(pool)
    prefixes = ["I", "The", "You", "Because", "Therefore"]
    examples = [e for r in requests for e in augment_request(r, prefixes, pool, [], cfg, 0, forbidden, by_answer=by_answer)]
    trained = {normalize(e["prompt"]) for e in examples}
    assert trained and not (trained & eval_prompts)
    assert sum(e["kind"] == "same_answer" for e in examples) > 1000
    subjects = {normalize(r.subject) for r in requests}
    for e in examples:
        if e["kind"] in ("random", "same_answer"):
            assert not any(s in normalize(e["prompt"]) for s in subjects if len(s) >= 4)


def test_augmented_prompts_equal_to_an_eval_prompt_are_not_trained():
    # This request's paraphrase is exactly what prefix "I" would make of its prompt.
    request = EditRequest("9", "speaking", "speaking", "x", paraphrases=(with_prefix("I", "speaking"),))
    cfg = AugmentConfig(n_paraphrase=1, prefix_bank=1, n_random=0)
    forbidden = never_train_on([request])
    examples = augment_request(request, ["I"], [], [], cfg, 0, forbidden)
    assert [e["kind"] for e in examples] == ["edit"]  # the prefixed copy is an eval prompt: dropped
    assert len(augment_request(request, ["I"], [], [], cfg, 0)) == 2  # without the exclusion it would be trained


def test_counts_kinds_and_targets():
    cfg = AugmentConfig(n_paraphrase=2, prefix_bank=3, n_random=2, n_similar=1)
    pool = [POOL[0], POOL[6], Fact("The capital of Peru is", "Lima", "Peru")]
    examples = augment_request(EDIT, ["A b", "C d", "E f"], pool, [2, 0], cfg, seed=0)
    kinds = [e["kind"] for e in examples]
    assert kinds == ["edit", "paraphrase", "paraphrase", "similar", "random", "random"]
    assert all(e["target"] == "English" for e in examples if e["kind"] in ("edit", "paraphrase"))
    assert examples[3]["prompt"] == "The capital of Peru is" and examples[3]["target"] == "Lima"
    # random facts are drawn among those not already chosen as similar
    assert {e["prompt"] for e in examples[4:]} == {"The capital of Spain is", "The capital of Italy is"}
    assert all(e["prompt"].endswith(". " + EDIT.prompt) for e in examples[1:3])
    # A continuation follows the edit's own examples only; locality facts keep their bare answer.
    anchored = augment_request(EDIT, ["A b", "C d", "E f"], pool, [2, 0], cfg, seed=0, continuation=". She")
    assert [e["continuation"] for e in anchored] == [". She"] * 3 + [""] * 3
    assert [e["continuation"] for e in examples] == [""] * 6
    # continuation_on=edit: the edit prompt alone is anchored, its prefixed copies keep the bare target
    only_edit = augment_request(EDIT, ["A b", "C d", "E f"], pool, [2, 0], replace(cfg, continuation_on="edit"), seed=0,
                                continuation=". She")
    assert [(e["kind"], e["continuation"]) for e in only_edit[:3]] == [
        ("edit", ". She"), ("paraphrase", ""), ("paraphrase", "")]


def test_same_answer_facts_share_the_edits_old_answer_and_leave_other_draws_alone():
    pool = [
        Fact("The capital of Spain is", "Madrid", "Spain"),
        Fact("Edith Piaf spoke", "French", "Edith Piaf"),
        Fact("Victor Hugo wrote in", "french", "Victor Hugo"),  # the answer compares normalized
        Fact("Gerard Depardieu's mother tongue is", "French", "Gerard Depardieu"),
        Fact("The capital of Italy is", "Rome", "Italy"),
        Fact("Sophia Loren spoke", "Italian", "Sophia Loren"),
    ]
    by_answer = answer_index(pool)
    assert by_answer["french"] == [1, 2, 3]
    base = AugmentConfig(n_paraphrase=1, prefix_bank=2, n_random=2, n_similar=1)
    cfg = AugmentConfig(n_paraphrase=1, prefix_bank=2, n_random=2, n_similar=1, n_same_answer=2)
    without = augment_request(EDIT, ["a", "b"], pool, [1], base, seed=0, by_answer=by_answer)
    examples = augment_request(EDIT, ["a", "b"], pool, [1], cfg, seed=0, by_answer=by_answer)
    # The other kinds are drawn exactly as without the option; the new facts come after them.
    assert examples[: len(without)] == without
    same = examples[len(without):]
    assert [e["kind"] for e in same] == ["same_answer"] * len(same)
    # Only facts answering the edit's old answer ("French"), none already drawn as another kind.
    taken = {e["prompt"] for e in without}
    assert all(e["target"].lower() == "french" and e["prompt"] not in taken for e in same)
    assert len(same) == min(2, len({1, 2, 3} - {pool.index(f) for f in pool if f.prompt in taken}))
    # Asking for more than there are gives what there is; an edit without an old answer gets none.
    many = AugmentConfig(n_paraphrase=0, prefix_bank=2, n_random=0, n_same_answer=10)
    assert sorted(e["prompt"] for e in augment_request(EDIT, [], pool, [], many, 0, by_answer=by_answer)
                  if e["kind"] == "same_answer") == sorted(f.prompt for f in pool[1:4])
    no_true = EditRequest("5", "The mother tongue of X is", "X", "English")
    assert [e["kind"] for e in augment_request(no_true, [], pool, [], many, 0, by_answer=by_answer)] == ["edit"]


def test_augmentation_is_seeded_per_request_not_per_batch():
    cfg = AugmentConfig(n_paraphrase=2, prefix_bank=4, n_random=2)
    prefixes, pool = ["a", "b", "c", "d"], POOL
    alone = augment_request(EDIT, prefixes, pool, [], cfg, seed=3)
    again = augment_request(EDIT, prefixes, pool, [], cfg, seed=3)
    other_seed = [augment_request(EDIT, prefixes, pool, [], cfg, seed=s) for s in range(4, 10)]
    assert alone == again
    assert any(x != alone for x in other_seed)


def test_prefixes_are_generated_by_the_model_and_reproducible(tiny_model):
    from ftedit.model import load_causal_lm

    model, tok = load_causal_lm(tiny_model)
    cfg = AugmentConfig(prefix_bank=6, n_paraphrase=2, prefix_tokens=5, prefix_starts=["The", "I"])
    first = generate_prefixes(model, tok, cfg, seed=1)
    assert first == generate_prefixes(model, tok, cfg, seed=1)
    assert first != generate_prefixes(model, tok, cfg, seed=2)
    assert len(first) == 6 and sum(p.startswith("The") for p in first) == 3
    assert all("\n" not in p and "{" not in p for p in first)


def test_prefix_sampling_with_the_cache_draws_what_sampling_the_whole_sequence_draws(tiny_model):
    """`_sample` feeds one token per step and reuses the cache: the tokens must be those of
    running the model on the whole sequence at every step, as it did before (same seed)."""
    import torch

    from ftedit.augment import _sample
    from ftedit.model import load_causal_lm

    model, _ = load_causal_lm(tiny_model)
    model.eval()

    def whole_sequence(ids, new_tokens, generator, top_k=5):
        for _ in range(new_tokens):
            top = torch.topk(model(input_ids=ids).logits[:, -1, :].float(), top_k, dim=-1)
            pick = torch.multinomial(torch.softmax(top.values, dim=-1), 1, generator=generator)
            ids = torch.cat([ids, top.indices.gather(-1, pick)], dim=-1)
        return ids

    start = torch.tensor([[5, 17, 3]] * 4)
    with torch.no_grad():
        cached = _sample(model, start, 6, torch.Generator().manual_seed(3))
        reference = whole_sequence(start, 6, torch.Generator().manual_seed(3))
    assert cached.shape == (4, 9) and torch.equal(cached, reference)
    assert len({tuple(row) for row in cached.tolist()}) > 1  # the rows were sampled, not all alike


def test_the_job_generates_its_prefixes_on_a_ray_worker_as_this_process_would(tiny_model):
    """The driver never loads the model: prefixes come from a Ray task, the same as made here."""
    import ray

    from ftedit.config import ConfigError, RunConfig, from_dict
    from ftedit.model import load_causal_lm
    from ftedit.pipeline import check_model_and_generate_prefixes

    cfg = from_dict(RunConfig, {"seed": 4, "augment": {"prefix_bank": 6, "n_paraphrase": 2, "prefix_tokens": 5}})
    model, tok = load_causal_lm(tiny_model)
    here = generate_prefixes(model, tok, cfg.augment, cfg.seed)
    ray.init(num_cpus=2, include_dashboard=False, ignore_reinit_error=True)
    try:
        there = check_model_and_generate_prefixes(cfg, tiny_model)  # the packing check passes on a Llama
        none = check_model_and_generate_prefixes(from_dict(RunConfig, {"augment": {"n_paraphrase": 0}}), tiny_model)
        # A layer the model lacks fails here, before any stage runs, as the config error it is
        # (the job's exit code 2), not in the training workers after the unedited evaluation.
        with pytest.raises(ConfigError) as layers:
            check_model_and_generate_prefixes(from_dict(RunConfig, {"train": {"layers": [0, 7]}}), tiny_model)
        with pytest.raises(ConfigError) as targets:  # peft's rule: a name or a dotted suffix of one
            check_model_and_generate_prefixes(
                from_dict(RunConfig, {"lora": {"target_modules": ["self_attn.q_proj", "v_proj", "lm_head", "qproj"]}}), tiny_model)
        # Full fine-tuning trains whole layers: LoRA's target modules play no part.
        full = check_model_and_generate_prefixes(
            from_dict(RunConfig, {"augment": {"n_paraphrase": 0}, "train": {"tuning": "full"},
                                  "lora": {"target_modules": ["qproj"]}}), tiny_model)
    finally:
        ray.shutdown()
    assert there == here and len(here) == 6
    assert none == [] and full == []
    assert str(layers.value) == "train.layers: [7] out of range, the model has 2 layers (0..1)"
    assert targets.value.key == "lora.target_modules" and targets.value.message.startswith(
        "['qproj'] match no module of the model (the linear layers of its decoder layers: ['down_proj', 'gate_proj', "
    ), targets.value


def test_skip_over_draws_what_sampling_the_list_of_candidates_draws():
    import random

    from ftedit.augment import skip_over

    for trial in range(300):
        rng = random.Random(trial)
        # Small pools (random.sample copies the population) and large ones (it picks indices).
        n = rng.randint(1, 60) if trial % 2 else rng.randint(200, 3000)
        excluded = set(rng.sample(range(n), rng.randint(0, min(n - 1, 40))))
        k = rng.randint(0, min(n - len(excluded), 15))
        candidates = [i for i in range(n) if i not in excluded]  # what augmentation built before, per edit
        expected = random.Random(f"draw{trial}").sample(candidates, k)
        assert skip_over(random.Random(f"draw{trial}").sample(range(len(candidates)), k), excluded) == expected


def _draws_as_before(request, pool, similar, cfg, seed, by_answer):
    """The unedited-fact draws as augmentation made them before 2026-12-07, filtering the pool
    and the answer group per edit: the faster draws must pick exactly these facts."""
    import random

    rng = random.Random(f"{seed}:{request.case_id}")
    chosen, drawn = set(similar[: cfg.n_similar]), [("similar", i) for i in similar[: cfg.n_similar]]
    candidates = [i for i in range(len(pool)) if i not in chosen] if chosen else range(len(pool))
    for index in rng.sample(candidates, min(cfg.n_random, len(candidates))):
        chosen.add(index)
        drawn.append(("random", index))
    same_rng = random.Random(f"{seed}:{request.case_id}:same_answer")
    same = [i for i in by_answer.get(normalize(request.target_true), ()) if i not in chosen]
    drawn += [("same_answer", i) for i in same_rng.sample(same, min(cfg.n_same_answer, len(same)))]
    return drawn


def test_random_and_same_answer_draws_are_those_of_filtering_the_pool_per_edit():
    import random

    rng = random.Random(0)
    for trial in range(60):
        # A pool where one answer dominates (the case that made per-edit filtering slow).
        pool = [Fact(f"Fact {i} is about", rng.choice(["English"] * 6 + ["French", "Dutch"]), f"S{i}")
                for i in range(rng.randint(5, 400))]
        by_answer = answer_index(pool)
        similar = rng.sample(range(len(pool)), min(len(pool), rng.randint(0, 6)))
        cfg = AugmentConfig(n_paraphrase=0, prefix_bank=2, n_random=rng.randint(0, 8),
                            n_similar=len(similar), n_same_answer=rng.randint(0, 8))
        request = replace(EDIT, case_id=str(trial), target_true=rng.choice(["English", "French", "Dutch"]))
        examples = augment_request(request, [], pool, similar, cfg, seed=trial, by_answer=by_answer)
        got = [(e["kind"], int(e["prompt"].split()[1])) for e in examples if e["kind"] != "edit"]
        assert got == _draws_as_before(request, pool, similar, cfg, trial, by_answer), trial
