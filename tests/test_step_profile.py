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
