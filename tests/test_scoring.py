"""Evaluation on Ray Data model actors gives exactly what `evaluate` gives in one process."""

import json
import re

import pytest

from ftedit.config import RunConfig, from_dict
from ftedit.evaluate import evaluate
from ftedit.model import load_causal_lm, load_edited, prepare_trainable, save_trained
from ftedit.report import write_per_edit
from ftedit.request_dataset import open_requests
from ftedit.requests import load_requests
from ftedit.scoring import evaluate_on_cluster, scored_rows
from ftedit import unedited
from tests.conftest import REPO

pytestmark = pytest.mark.timeout(600)


def test_actor_pool_scores_match_the_in_process_evaluation(tiny_model, tmp_path):
    import pyarrow.fs
    import ray
    import torch
    from ray.train import Checkpoint

    # The sample edits, two of them with multi-hop (portability) questions as MQuAKE gives them.
    records = [json.loads(line) for line in (REPO / "data" / "sample_edits.jsonl").read_text().splitlines()[:6]]
    for i in (0, 3):
        records[i].update(portability=[f"The capital of the country of {records[i]['subject']} is",
                                       f"People near {records[i]['subject']} mostly speak"],
                          portability_new="Rome", portability_true="Paris")
    path = tmp_path / "edits.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    requests = load_requests(path).requests
    # 2 actors, 2 requests per batch: the requests are split over batches and replicas.
    cfg = from_dict(RunConfig, {"data": {"requests": str(path), "limit": 6},
                                "eval": {"actors": 2, "requests_per_batch": 2, "batch_size": 8,
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
    ray.data.DataContext.get_current().execution_options.preserve_order = True  # as the job's init_ray sets it
    try:
        source = open_requests(cfg.data)  # the requests as the job reads them: a Ray Dataset
        before_cluster = evaluate_on_cluster(cfg, tiny_model, source.dataset, "counterfact")
        # Saved in the run directory and read back, as the job does between the two evaluations.
        unedited.save(before_cluster, tmp_path / "unedited", {"model": str(tiny_model)})
        reference = unedited.load(tmp_path / "unedited").rename_columns({"scores": "before", "locality": "reference"})
        # The actors read the trained weights from the run's checkpoint storage, here a file
        # system other than the local one, as S3 is: each actor downloads the checkpoint.
        storage = pyarrow.fs.SubTreeFileSystem(str(tmp_path), pyarrow.fs.LocalFileSystem())
        checkpoint = Checkpoint("adapter", filesystem=storage)
        after_cluster = evaluate_on_cluster(cfg, tiny_model, reference, "counterfact", trained=checkpoint)
        rows = list(scored_rows(after_cluster))
        stats = [scored.stats() for scored in (before_cluster, after_cluster)]  # Ray Data's execution report
        summaries = write_per_edit(tmp_path / "per_edit.jsonl", rows, "counterfact")
    finally:
        ray.shutdown()
    assert [request for request, _, _ in rows] == requests  # every request once, in file order
    # The one-block file was cut so that both replicas get work: 3 calls of 2 requests, not 1.
    for report in stats:
        assert re.search(r"MapBatches\(EvaluateRequests\): 3 tasks executed", report), report
    for (_, *ours), theirs in zip(rows, zip(before.records, after.records)):
        for our, their in zip(ours, theirs):  # before, after
            assert our.keys() == their.keys() and our["case_id"] == their["case_id"]
            assert all(our[k] == pytest.approx(their[k], abs=1e-5) for k in our if k != "case_id")
    for ours, theirs in zip(summaries, (before, after)):
        for key, value in theirs.summary.items():
            assert ours[key] == pytest.approx(value, abs=1e-4), key
    assert len((tmp_path / "per_edit.jsonl").read_text().splitlines()) == len(requests)
    # The edit moved the scores (the comparison is not between two identical models) and EasyEdit
    # locality, which needs the unedited model's tokens, came through the actors.
    assert after.summary["em"] != pytest.approx(before.summary["em"], abs=1e-3)
    assert summaries[1]["easyedit_locality"] == pytest.approx(after.summary["easyedit_locality"], abs=1e-6)
    # Portability is scored for the two records with questions only, and summed over those.
    assert [("portability" in after_record) for _, _, after_record in rows] == [True, False, False, True, False, False]
    assert summaries[1]["portability"] == pytest.approx(after.summary["portability"], abs=1e-6)


@pytest.mark.slow
def test_a_scoring_actor_killed_mid_evaluation_is_replaced_and_nothing_is_lost(tiny_model, shared_data):
    """A GPU node lost mid-scoring (spot instances): Ray Data restarts the actor and retries its
    batch, and every request is scored once, as in an undisturbed evaluation."""
    import threading
    import time

    import psutil
    import ray

    cfg = from_dict(RunConfig, {
        "data": {"requests": str(shared_data / "counterfact" / "counterfact-edit.json"), "limit": 40},
        # One request per batch and long generations: the evaluation takes seconds, not a blink.
        "eval": {"actors": 1, "requests_per_batch": 1, "batch_size": 8, "torch_threads": 1, "cpus_per_actor": 1,
                 "fluency_tokens": 200}})
    ray.init(num_cpus=2, include_dashboard=False)
    ray.data.DataContext.get_current().execution_options.preserve_order = True
    try:
        source = open_requests(cfg.data)
        undisturbed = evaluate_on_cluster(cfg, tiny_model, source.dataset, "counterfact").take_all()
        outcome = {}
        evaluation = threading.Thread(
            target=lambda: outcome.update(rows=evaluate_on_cluster(cfg, tiny_model, source.dataset, "counterfact").take_all()))
        seen_before = {p.pid for p in psutil.process_iter(["cmdline"]) if "EvaluateRequests" in " ".join(p.info["cmdline"] or [])}
        evaluation.start()
        actor, deadline = None, time.monotonic() + 120
        while actor is None and time.monotonic() < deadline:
            actor = next((p for p in psutil.process_iter(["cmdline"]) if p.pid not in seen_before
                          and "EvaluateRequests" in " ".join(p.info["cmdline"] or [])), None)
            time.sleep(0.1)
        assert actor is not None, "no scoring actor started"
        time.sleep(2)  # the model is loaded and scoring its first batches
        assert evaluation.is_alive(), "the evaluation ended before the actor could be killed"
        actor.kill()  # SIGKILL, as when a node is lost
        evaluation.join(timeout=300)
        replacements = [p for p in psutil.process_iter(["cmdline"]) if p.pid not in seen_before | {actor.pid}
                        and "EvaluateRequests" in " ".join(p.info["cmdline"] or [])]
    finally:
        ray.shutdown()
    assert replacements, "no actor replaced the killed one"
    rows = outcome["rows"]
    assert len({json.loads(r["request"])["case_id"] for r in rows}) == len(rows) == 40
    assert [r["request"] for r in rows] == [r["request"] for r in undisturbed]  # each request once, in order
    assert [r["scores"] for r in rows] == [r["scores"] for r in undisturbed]
