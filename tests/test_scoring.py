"""Evaluation on Ray Data model actors gives exactly what `evaluate` gives in one process."""

import pytest

from ftedit.config import RunConfig, from_dict
from ftedit.evaluate import evaluate
from ftedit.model import load_causal_lm, load_edited, prepare_trainable, save_trained
from ftedit.requests import load_requests
from ftedit.scoring import evaluate_on_cluster
from tests.conftest import REPO

pytestmark = pytest.mark.timeout(600)


def test_actor_pool_scores_match_the_in_process_evaluation(tiny_model, tmp_path):
    import ray
    import torch

    requests = load_requests(REPO / "data" / "sample_edits.jsonl", limit=6).requests
    # 2 actors, 2 requests per batch: the requests are split over batches and replicas.
    cfg = from_dict(RunConfig, {"eval": {"actors": 2, "requests_per_batch": 2, "batch_size": 8,
                                         "torch_threads": 1, "cpus_per_actor": 0.5}})
    # An "edited" model: a LoRA adapter with random (non-zero) weights, saved as training saves it.
    model, tokenizer = load_causal_lm(tiny_model)
    lora = prepare_trainable(model, cfg.train, cfg.lora, seed=0)
    with torch.no_grad():
        for name, param in lora.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.5)
    save_trained(lora, tmp_path / "adapter", "lora")

    base, _ = load_causal_lm(tiny_model)
    edited, _ = load_edited(tiny_model, tmp_path / "adapter")
    before = evaluate(base, tokenizer, requests, "counterfact", cfg.eval)
    after = evaluate(edited, tokenizer, requests, "counterfact", cfg.eval, reference=before)

    ray.init(num_cpus=2, include_dashboard=False)
    try:
        before_cluster = evaluate_on_cluster(cfg, tiny_model, requests, "counterfact")
        after_cluster = evaluate_on_cluster(cfg, tiny_model, requests, "counterfact",
                                            trained_dir=tmp_path / "adapter", reference=before_cluster)
    finally:
        ray.shutdown()
    assert [r["case_id"] for r in after_cluster.records] == [r.case_id for r in requests]
    for ours, theirs in ((before_cluster, before), (after_cluster, after)):
        for key, value in theirs.summary.items():
            assert ours.summary[key] == pytest.approx(value, abs=1e-4), key
    # The edit moved the scores (the comparison is not between two identical models) and EasyEdit
    # locality, which needs the unedited model's tokens, came through the actors.
    assert after.summary["em"] != pytest.approx(before.summary["em"], abs=1e-3)
    assert after_cluster.summary["easyedit_locality"] == pytest.approx(after.summary["easyedit_locality"], abs=1e-6)
