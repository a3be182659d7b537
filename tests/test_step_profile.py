"""benchmarks/step_profile.py: every variant trains the tiny model on benchmark-shaped batches."""

import sys

import pytest

from ftedit.config import load_config
from tests.conftest import REPO

sys.path.insert(0, str(REPO / "benchmarks"))
from step_profile import benchmark_batches, measure, render_table, variants  # noqa: E402


def test_bf16_casts_are_varied_under_bf16_mixed_only():
    assert variants() == [("bf16-mixed", "sdpa", False), ("bf16-mixed", "sdpa", True),
                          ("bf16-mixed", "eager", False), ("bf16-mixed", "eager", True)]
    assert variants(("fp32", "bf16-mixed"), ("eager",)) == [
        ("fp32", "eager", False), ("bf16-mixed", "eager", False), ("bf16-mixed", "eager", True)]


@pytest.mark.parametrize("precision, attention, prepare",
                         [("bf16-mixed", "sdpa", False), ("bf16-mixed", "eager", True), ("fp32", "eager", False)])
def test_each_variant_runs_benchmark_shaped_steps(tiny_model, precision, attention, prepare):
    cfg = load_config(REPO / "configs" / "smoke.yaml", ["train.num_workers=1", "train.micro_batch_size=8", "train.batch_size=8"])
    from transformers import AutoTokenizer

    batches = benchmark_batches(4, cfg.train, pad_id=0, vocab_size=len(AutoTokenizer.from_pretrained(tiny_model)))
    # 8 examples of 10-22 tokens, packed into 64-token rows: no row is all filler
    assert all(8 * 10 <= int((b["example"] >= 0).sum()) <= 8 * 22 for b in batches)
    result = measure(cfg, tiny_model, attention, prepare, batches, ops=False, precision=precision)
    assert result["tokens_per_s"] > 0 and result["seconds_per_step"] > 0


def test_the_table_compares_each_variant_with_the_first():
    rows = [{"attention": "sdpa", "prepare": False, "runs": [100.0, 110.0, 90.0], "tokens_per_s": 100.0},  # older
            {"precision": "fp32", "attention": "eager", "prepare": False, "runs": [150.0, 160.0, 140.0],
             "tokens_per_s": 150.0}]
    table = render_table({"variants": rows, "steps": 8, "tokens_per_step": 500.0, "machine": "test",
                          "date": "2026-12-01", "command": "python benchmarks/step_profile.py"})
    assert "| bf16-mixed | sdpa | no | 100 | 100 / 110 / 90 | 1.00x |" in table
    assert "| fp32 | eager | no | 150 | 150 / 160 / 140 | 1.50x |" in table


def test_a_model_built_from_its_config_json_trains_in_bf16_and_counts_its_flops(tiny_model):
    """`--model-config`: random weights from a config.json (no checkpoint), here the tiny model's."""
    cfg = load_config(REPO / "configs" / "smoke.yaml", ["train.num_workers=1", "train.micro_batch_size=8", "train.batch_size=8"])
    batches = benchmark_batches(3, cfg.train, pad_id=0, vocab_size=256)
    result = measure(cfg, None, "eager", False, batches, ops=False, precision="bf16",
                     model_config=str(tiny_model / "config.json"))
    assert result["tokens_per_s"] > 0
    # LoRA r=8 on the 2-layer model's linear layers: 4 FLOPs per linear weight plus 2 per adapter weight
    assert result["flops_per_token"] == 4 * result["linear_params"] + 2 * result["trainable_linear_params"]
    assert 0 < result["trainable_linear_params"] < result["linear_params"]


def test_with_a_peak_the_table_adds_model_flops_and_mfu():
    rows = [{"precision": "bf16", "attention": "sdpa", "prepare": False, "runs": [1000.0], "tokens_per_s": 1000.0,
             "flops_per_token": 2e10, "peak_memory_gib": 20.5}]
    table = render_table({"variants": rows, "steps": 30, "tokens_per_step": 500.0, "machine": "test", "date": "2026-12-04",
                          "command": "python benchmarks/step_profile.py", "peak_tflops": 100.0,
                          "model": "llama built from `llama3-8b.json` with random weights"})
    # 1000 tokens/s x 20 GFLOP = 20 TFLOP/s: 20% of a 100 TFLOP/s peak
    assert "| bf16 | sdpa | no | 1000 | 1000 | 1.00x | 20.0 | 20.0% | 20.5 |" in table
    assert "Model: llama built from `llama3-8b.json` with random weights." in table
