import json

import numpy as np

from ftedit.config import AugmentConfig
from ftedit.dataset import OwnAnswers, augment_batch, first_clause
from ftedit.requests import EditRequest, Fact


def _greedy_alone(stage, prompt: str, gold: str = "") -> str:
    """What OwnAnswers should answer for `prompt`: greedy decoding of the prompt alone."""
    import torch

    ids = stage.tokenizer(prompt, add_special_tokens=False, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        alone = stage.model.generate(ids, max_new_tokens=3, do_sample=False, pad_token_id=0)
    return first_clause(stage.tokenizer.decode(alone[0, ids.shape[1]:], skip_special_tokens=True)) or gold


def test_own_answers_are_the_unedited_models_greedy_answers(tiny_model):
    stage = OwnAnswers(str(tiny_model), "float32", max_new_tokens=3)
    stage.tokenizer.add_bos_token = True  # as Llama's: answers must still come from the training context
    prompts = ["The capital of Spain is", "Paris lies on the"]
    out = stage({"prompt": np.array(prompts, dtype=object)})  # different lengths: one left-padded batch
    assert list(out["prompt"]) == prompts
    assert list(out["answer"]) == [_greedy_alone(stage, p) for p in prompts]


def test_locality_facts_get_the_models_own_answer_computed_once_per_distinct_prompt(tiny_model, caplog):
    import logging

    import ray

    from ftedit.config import RunConfig, from_dict
    from ftedit.dataset import with_own_answers

    rows = [("edit", "The capital of France is", "Rome"), ("random", "The capital of Spain is", "Madrid"),
            ("similar", "The capital of Spain is", "Madrid"), ("random", "Paris lies on the", "Seine"),
            ("paraphrase", "I see. The capital of France is", "Rome"), ("same_answer", "Paris lies on the", "Seine")]
    cfg = from_dict(RunConfig, {"model": {"dtype": "float32"}, "augment": {"locality_target": "model",
                                                                            "locality_target_tokens": 3}})
    ray.init(num_cpus=2, include_dashboard=False, ignore_reinit_error=True)
    ray.data.DataContext.get_current().execution_options.preserve_order = True
    try:
        ds = ray.data.from_items([{"case_id": str(i // 3), "kind": k, "prompt": p, "target": t}
                                  for i, (k, p, t) in enumerate(rows)], override_num_blocks=2)
        with caplog.at_level(logging.INFO, logger="ftedit.dataset"):
            out = with_own_answers(ds, cfg, str(tiny_model)).take_all()
    finally:
        ray.shutdown()
    # Two distinct prompts among four locality facts (across both blocks): two answers generated.
    assert "the unedited model answers 2 distinct prompts (4 locality facts)" in caplog.text
    stage = OwnAnswers(str(tiny_model), "float32", max_new_tokens=3)
    expected = [t if k in ("edit", "paraphrase") else _greedy_alone(stage, p, gold=t) for k, p, t in rows]
    assert [r["target"] for r in out] == expected  # edits keep their new target; rows keep their order
    assert [r["kind"] for r in out] == [k for k, _, _ in rows]


def test_first_clause_cuts_a_generated_answer_at_its_first_line_or_sentence_end():
    assert first_clause(" Madrid. It is the capital") == "Madrid"
    assert first_clause(" Paris,\nand") == "Paris"
    assert first_clause("\nParis") == ""


def test_continuations_are_the_unedited_models_greedy_text_after_the_new_target(tiny_model):
    import torch

    from ftedit.continuation import Continuations

    requests = [EditRequest("a", "The capital of France is", "France", "Rome"),
                EditRequest("b", "Apple was founded by Steve", "Apple", "Wozniak")]
    stage = Continuations(str(tiny_model), "float32", max_new_tokens=4, batch_size=2)  # one left-padded batch
    # A tokenizer that adds BOS (Llama's): the continuation is still generated in the context it is
    # trained in, "prompt + target" tokenized without special tokens.
    stage.tokenizer.add_bos_token = True
    out = stage({"request": np.array([json.dumps(r.to_dict()) for r in requests], dtype=object)})
    for request, continuation in zip(requests, out["continuation"]):
        ids = stage.tokenizer(f"{request.prompt} {request.target_new}", add_special_tokens=False,
                              return_tensors="pt")["input_ids"]
        with torch.no_grad():
            alone = stage.model.generate(ids, max_new_tokens=4, do_sample=False, pad_token_id=0)
        expected = stage.tokenizer.decode(alone[0, ids.shape[1]:], skip_special_tokens=True).split("\n")[0]
        assert continuation == expected and "\n" not in continuation


def test_augment_batch_expands_request_rows():
    requests = [EditRequest("a", "The capital of France is", "France", "Rome"),
                EditRequest("b", "Apple was founded by Steve", "Apple", "Wozniak")]
    # Request rows as the request Dataset holds them; `similar` as the SimilarFacts stage adds it.
    batch = {
        "position": np.array([0, 1]),
        "request": np.array([json.dumps(r.to_dict()) for r in requests], dtype=object),
        "similar": np.array(["[0]", "[]"], dtype=object),
    }
    pool = [Fact("The capital of Spain is", "Madrid", "Spain"), Fact("The capital of Peru is", "Lima", "Peru")]
    cfg = AugmentConfig(n_paraphrase=1, prefix_bank=2, n_random=1, n_similar=1)
    out = augment_batch(batch, ["I see", "You"], pool, cfg, seed=0, forbidden=frozenset())
    assert list(out["kind"]) == ["edit", "paraphrase", "similar", "random", "edit", "paraphrase", "random"]
    assert out["prompt"][2] == "The capital of Spain is" and out["target"][2] == "Madrid"
    assert out["prompt"][3] == "The capital of Peru is"  # the similar fact is not drawn again at random
    assert set(out["case_id"]) == {"a", "b"}
    assert set(out["continuation"]) == {""}  # no continuation stage ran
    # With the continuation stage's column, an edit's own examples carry its continuation.
    out = augment_batch({**batch, "continuation": np.array([". It is", ""], dtype=object)}, ["I see", "You"],
                        pool, cfg, seed=0, forbidden=frozenset())
    assert list(out["continuation"]) == [". It is", ". It is", "", "", "", "", ""]
    # Without the similar-facts stage (n_similar 0) the rows have no `similar` column.
    del batch["similar"]
    out = augment_batch(batch, ["I see", "You"], pool, AugmentConfig(n_paraphrase=1, prefix_bank=2, n_random=1), 0, frozenset())
    assert list(out["kind"]) == ["edit", "paraphrase", "random", "edit", "paraphrase", "random"]


def test_example_counts_sum_per_kind_and_tokens():
    import ray

    from ftedit.dataset import example_counts

    ray.init(num_cpus=1, include_dashboard=False, ignore_reinit_error=True)
    try:
        rows = [{"kind": k, "n_tokens": n} for k, n in [("edit", 5), ("random", 3), ("edit", 7), ("paraphrase", 9)]]
        ds = ray.data.from_items(rows, override_num_blocks=2)
        assert example_counts(ds) == {"examples": 4, "tokens": 24, "by_kind": {"edit": 2, "paraphrase": 1, "random": 1}}
    finally:
        ray.shutdown()


def test_model_actor_stages_cut_a_one_block_file_so_every_replica_gets_work():
    import ray

    from ftedit.config import RunConfig, from_dict
    from ftedit.dataset import on_model_actors, spread_over_actors

    class _PassThrough:  # a model-actor stage without a model (local: pickled by value for the workers)
        def __call__(self, batch: dict) -> dict:
            return batch

    cfg = from_dict(RunConfig, {"eval": {"actors": 2, "cpus_per_actor": 1}})  # the actors hold every CPU
    ray.init(num_cpus=2, include_dashboard=False, ignore_reinit_error=True)
    ray.data.DataContext.get_current().execution_options.preserve_order = True  # as the job's init_ray sets it
    try:
        one_block = ray.data.from_items([{"row": i} for i in range(10)]).repartition(1).materialize()
        assert one_block.num_blocks() == 1  # as a requests file arrives
        outputs, calls = [], []
        for most, count in ((4, False), (256, True)):
            outputs.append(on_model_actors(one_block, cfg, _PassThrough, (), most, count_rows=count).materialize())
            calls.append(spread_over_actors(one_block, 2, most, count_rows=count)[1])
        assert spread_over_actors(one_block, 1, 4) == (one_block, 4)  # one actor: left as it is
        rows = [[r["row"] for r in ds.take_all()] for ds in outputs]
        stats = [ds.stats() for ds in outputs]
    finally:
        ray.shutdown()
    assert rows == [list(range(10))] * 2  # every row once, in order
    # At most 4 rows per call: 3 calls. 256 allowed, but 10 rows over 2 replicas: 2 calls of 5.
    assert calls == [4, 5]
    assert "MapBatches(_PassThrough): 3 tasks executed" in stats[0], stats[0]
    assert "MapBatches(_PassThrough): 2 tasks executed" in stats[1], stats[1]
