"""benchmarks/edit_quality.py: the columns that tell rows of the same config file apart."""

import sys

from tests.conftest import REPO

sys.path.insert(0, str(REPO / "benchmarks"))
from edit_quality import MAX_NAME, anchors, locality_mix, metric_cells, result_name, training_numerics  # noqa: E402
from host import machine  # noqa: E402


def test_rows_name_their_locality_mix():
    assert locality_mix({"n_random": 5, "n_similar": 5}) == "5 random + 5 similar"
    assert locality_mix({"n_random": 10, "n_similar": 0}) == "10 random"
    assert locality_mix({"n_random": 0, "n_similar": 0}) == "none"
    assert locality_mix({"n_random": 5, "n_similar": 0, "n_same_answer": 5}) == "5 random + 5 same-answer"


def test_rows_name_precision_and_training_attention_sdpa_for_runs_before_the_key():
    assert training_numerics({"precision": "bf16-mixed", "attention": "eager"}) == "bf16-mixed, eager"
    assert training_numerics({"precision": "fp32", "attention": None}) == "fp32, sdpa"
    assert training_numerics({"precision": "fp32"}) == "fp32, sdpa"  # resolved before the key existed
    assert training_numerics({"precision": "auto", "attention": "eager"}, "bf16-mixed") == "auto: bf16-mixed, eager"
    assert training_numerics({"precision": "auto", "attention": "eager"}) == "auto, eager"  # recorded before it was kept
    assert training_numerics({"precision": "fp32"}, "fp32") == "fp32, sdpa"


def test_score_cells_read_new_results_and_old_counterfact_only_ones():
    zsre = {"efficacy": 99.25, "generalization": 88.0, "locality": 23.0, "edit_score": 46.3, "fluency": 350.0}
    assert metric_cells(zsre) == "99.2 / 88.0 / 23.0 / 46.3"
    old_counterfact = {"es": 37.0, "ps": 36.0, "ns": 66.0, "edit_score": 42.9, "fluency": None}
    assert metric_cells(old_counterfact) == "37.0 / 36.0 / 66.0 / 42.9"
    mquake = {"efficacy": 100.0, "generalization": 76.4, "locality": None, "edit_score": 86.6, "fluency": 210.3}
    assert metric_cells(mquake) == "100.0 / 76.4 / n/a / 86.6"


def test_rows_name_their_anchors_and_how_the_loss_weighs_them():
    assert anchors({"continuation_tokens": 8}, {"anchor_weight": 0.2}) == "8 tokens, w 0.2"
    assert anchors({"continuation_tokens": 8}, {"anchor_weight": None}) == "8 tokens, pooled"
    assert anchors({"continuation_tokens": 0}, {"anchor_weight": 0.2}) == "-"
    assert anchors({}, {}) == "-"  # resolved before anchors existed


def test_rows_name_the_cpu_kernels_they_ran_on():
    """Float results depend on the kernel set (AVX2 vs AVX512), so a row says which one it used."""
    import torch

    host = machine()
    assert f"({torch.backends.cpu.get_cpu_capability()})" in host
    assert f"torch {torch.__version__}, {torch.get_num_threads()} threads" in host


def test_results_names_stay_within_file_name_limits_and_apart():
    assert result_name("configs/bench-zsre-smollm2.yaml", ["seed=1", "output.dir=runs/x"]) == \
        "bench-zsre-smollm2__seed-1__output_dir-runs_x"
    long = ["train.precision=fp32", "eval.fluency_tokens=50", "seed=3", "data.fact_pool=../shared/data/mquake/MQuAKE-CF.json",
            "augment.n_random=5", "augment.n_same_answer=5", "augment.continuation_tokens=8", "loss.anchor_weight=0.2"]
    a = result_name("configs/bench-mquake-smollm2.yaml", [*long, "output.dir=runs/a-seed3"])
    b = result_name("configs/bench-mquake-smollm2.yaml", [*long, "output.dir=runs/a-seed4"])
    assert len(a.encode()) <= MAX_NAME and len(b.encode()) <= MAX_NAME and a != b
    assert a.startswith("bench-mquake-smollm2__train_precision-fp32__")
