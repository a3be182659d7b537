"""benchmarks/throughput.py: medians of alternating measurements and the table built from them."""

import sys

import pytest

from benchmarks.markdown_table import table_markers
from tests.conftest import REPO

sys.path.insert(0, str(REPO / "benchmarks"))
from throughput import (  # noqa: E402
    median_run,
    model_flops,
    render_table,
    speed_environment,
    training_comparison,
    training_flops_per_token,
)


def test_the_median_run_is_the_middle_one_with_the_median_startup():
    runs = [{"tokens_per_s": 150.0, "startup_seconds": 30.0}, {"tokens_per_s": 120.0, "startup_seconds": 20.0},
            {"tokens_per_s": 170.0, "startup_seconds": 10.0}]
    assert median_run(runs) == {"tokens_per_s": 150.0, "startup_seconds": 20.0}
    assert median_run([{"tokens_per_s": 5.0}]) == {"tokens_per_s": 5.0}


def test_the_table_shows_every_path_with_medians_ranges_and_each_round():
    plain = [{"tokens_per_s": t} for t in (160.0, 200.0, 180.0)]
    deepspeed = [{"tokens_per_s": t, "startup_seconds": s} for t, s in ((150.0, 0.5), (176.0, 0.9), (162.0, 0.7))]
    ray = [{"tokens_per_s": t, "startup_seconds": 20.0} for t in (150.0, 140.0, 171.0)]
    result = {**training_comparison(plain, deepspeed, ray), "zero_stage": 2, "n_edits": 30, "examples": 630,
              "epochs": 1, "eval": {"forward_tokens_per_s": 300.0, "scoring_tokens_per_s": 360.0}, "eval_ratio": 1.2,
              "machine": "test", "date": "2026-12-01", "command": "python benchmarks/throughput.py"}
    assert result["deepspeed_ratio"] == 162.0 / 180.0 and result["train_ratio"] == 150.0 / 180.0
    table = render_table(result)
    assert "| plain PyTorch training loop (a fresh process) | 180 | 160-200 | 1.00 | |" in table
    assert "| DeepSpeed ZeRO-2 engine, no Ray Train (a fresh process) | 162 | 150-176 | 0.90 | |" in table
    assert "| Ray Train + DeepSpeed ZeRO-2, 1 worker | 150 | 140-171 | 0.83 | >= 0.9 |" in table
    assert "DeepSpeed without Ray Train 0.94, 0.88, 0.90; Ray Train 0.94, 0.70, 0.95." in table
    assert "DeepSpeed initialisation 0.7 s" in table


def test_a_named_output_needs_its_markers_before_anything_is_measured(tmp_path):
    md = tmp_path / "BENCHMARKS.md"
    md.write_text("<!-- throughput:start -->\n<!-- throughput:end -->\n<!-- throughput-zero1:start -->\n")
    assert table_markers("throughput", md) == ("<!-- throughput:start -->", "<!-- throughput:end -->")
    with pytest.raises(ValueError, match="no <!-- throughput-zero1:end --> line for the table of --output throughput-zero1"):
        table_markers("throughput-zero1", md)
    with pytest.raises(ValueError, match="no <!-- other:start --> and no <!-- other:end --> line"):
        table_markers("other", md)


def test_publish_writes_the_json_and_replaces_only_its_own_table(tmp_path, capsys):
    import json

    from benchmarks.markdown_table import publish

    md = tmp_path / "BENCHMARKS.md"
    md.write_text("intro\n<!-- a:start -->\nold a\n<!-- a:end -->\n<!-- b:start -->\nold b\n<!-- b:end -->\n")
    publish({"x": 1}, tmp_path / "results" / "a.json", ("<!-- a:start -->", "<!-- a:end -->"), "| new a |",
            benchmarks_md=md)
    assert json.loads((tmp_path / "results" / "a.json").read_text()) == {"x": 1}
    assert md.read_text() == "intro\n<!-- a:start -->\n| new a |\n<!-- a:end -->\n<!-- b:start -->\nold b\n<!-- b:end -->\n"
    assert "| new a |" in capsys.readouterr().out


def test_the_recorded_command_names_the_speed_variables_that_were_set():
    environ = {"MALLOC_MMAP_THRESHOLD_": "33554432", "LD_PRELOAD": "/lib/libjemalloc.so.2", "HOME": "/root",
               "OMP_NUM_THREADS": "2", "PATH": "/bin"}
    assert speed_environment(environ) == [
        "LD_PRELOAD=/lib/libjemalloc.so.2", "MALLOC_MMAP_THRESHOLD_=33554432", "OMP_NUM_THREADS=2"]
    assert speed_environment({"HOME": "/root"}) == []


@pytest.mark.slow
def test_each_path_trains_the_same_saved_micro_batches_in_a_fresh_process(tiny_model, tmp_path):
    """The plain loop and the DeepSpeed engine run as child processes of the benchmark, over the
    micro-batches it saved, and count the same tokens: every non-filler token of every batch."""
    import argparse
    import pickle
    import random

    from throughput import measure_in_child

    rng = random.Random(0)
    epochs = [[{"input_ids": [[rng.randrange(3, 200) for _ in range(n)] for n in rng.choices(range(6, 14), k=8)]}
               for _ in range(10)]]
    for batch in epochs[0]:
        batch["labels"] = [[-100] * (len(row) - 2) + row[-2:] for row in batch["input_ids"]]
    batches_file = tmp_path / "micro_batches.pkl"
    batches_file.write_bytes(pickle.dumps(epochs))
    args = argparse.Namespace(config=str(REPO / "configs" / "smoke.yaml"), edits=6, epochs=1)
    overrides = ["train.micro_batch_size=8", "train.batch_size=16", "train.zero_stage=0"]
    expected = sum(len(row) for batch in epochs[0] for row in batch["input_ids"])
    for path in ("plain", "deepspeed"):
        result = measure_in_child(path, args, overrides, tiny_model, batches_file)
        assert result["tokens"] == expected, path
        assert result["tokens_per_s"] > 0 and result["first_10_tokens_per_s"] > 0
        if path == "plain":  # the model FLOPs of every path are counted on the plain loop's model
            assert result["flops_per_token"] > 4 * result["linear_params"] > 0
    assert result["startup_seconds"] >= 0  # the DeepSpeed engine's initialisation, reported apart


def test_a_failed_child_measurement_raises_with_its_error(tmp_path):
    import argparse

    from throughput import measure_in_child

    args = argparse.Namespace(config=str(REPO / "configs" / "smoke.yaml"), edits=6, epochs=1)
    with pytest.raises(RuntimeError, match="the plain measurement failed"):
        measure_in_child("plain", args, [], tmp_path / "no-model", tmp_path / "no-batches.pkl")


def _tiny_linear_weights(vocab: int, rank: int = 0) -> tuple[int, int]:
    """(every linear weight, LoRA adapter weights) of ftedit.tiny's Llama, from its dimensions:
    hidden 64, MLP 128, 2 layers, 4 heads of 16, 2 key/value heads (32 wide), tied output head."""
    shapes = [(64, 64), (64, 32), (64, 32), (64, 64), (64, 128), (64, 128), (128, 64)]  # q k v o gate up down
    base = 2 * sum(i * o for i, o in shapes) + vocab * 64
    adapters = 2 * sum(rank * (i + o) for i, o in shapes)  # lora_A: in x r, lora_B: r x out; no head
    return base, adapters


@pytest.mark.parametrize("tuning", ["lora", "full"])
def test_model_flops_count_each_linear_weight_four_times_and_trainable_ones_six(tiny_model, tuning):
    from ftedit.config import load_config
    from ftedit.model import load_causal_lm, prepare_for_training

    cfg = load_config(REPO / "configs" / "smoke.yaml", [f"train.tuning={tuning}", "lora.rank=4"])
    model, tokenizer = load_causal_lm(tiny_model)
    model = prepare_for_training(model, cfg.train, cfg.lora, cfg.seed)
    base, adapters = _tiny_linear_weights(len(tokenizer), rank=4 if tuning == "lora" else 0)
    counted = training_flops_per_token(model)
    if tuning == "lora":  # frozen base: 4 FLOPs per weight; adapters also get their own gradient
        assert counted == {"linear_params": base + adapters, "trainable_linear_params": adapters,
                           "flops_per_token": 4 * (base + adapters) + 2 * adapters}
    else:  # the decoder layers train, the (tied) output head stays frozen
        blocks = base - len(tokenizer) * 64
        assert counted == {"linear_params": base, "trainable_linear_params": blocks, "flops_per_token": 4 * base + 2 * blocks}


def test_model_flops_and_mfu_follow_the_median_runs_and_the_given_peak():
    counts = {"flops_per_token": 2e9, "linear_params": 4e8, "trainable_linear_params": 1e8}
    plain = [{"tokens_per_s": t, **counts} for t in (1000.0, 3000.0, 2000.0)]
    deepspeed = [{"tokens_per_s": t, "startup_seconds": 1.0} for t in (1500.0, 1900.0, 1700.0)]
    ray = [{"tokens_per_s": t, "startup_seconds": 9.0} for t in (1800.0, 1600.0, 1200.0)]
    comparison = training_comparison(plain, deepspeed, ray)
    with_peak = model_flops(comparison, peak_tflops=400.0)
    assert with_peak["tflops"] == pytest.approx({"plain": 4.0, "deepspeed": 3.4, "ray": 3.2})
    assert with_peak["mfu"] == pytest.approx({"plain": 0.01, "deepspeed": 0.0085, "ray": 0.008})
    assert model_flops(comparison, peak_tflops=None)["mfu"] is None

    result = {**comparison, "zero_stage": 0, "n_edits": 30, "examples": 630, "epochs": 1,
              "eval": {"forward_tokens_per_s": 300.0, "scoring_tokens_per_s": 360.0}, "eval_ratio": 1.2,
              "machine": "test", "date": "2026-12-04", "command": "python benchmarks/throughput.py"}
    line = render_table({**result, "model_flops": with_peak}).splitlines()[-1]
    assert line.startswith("Model FLOPs: 2 GFLOP per trained token (4 per weight of the 400.0M in linear layers, "
                           "2 more per trainable one of 100.00M; attention scores left out); plain loop 4 TFLOP/s; "
                           "DeepSpeed 3.4 TFLOP/s; Ray Train 3.2 TFLOP/s.")
    assert line.endswith("MFU against a peak of 400 TFLOP/s: plain loop 1%, DeepSpeed 0.85%, Ray Train 0.8%.")
    without = render_table({**result, "model_flops": model_flops(comparison, None)})
    assert without.endswith("MFU: not reported (no `--peak-tflops` given for this device).")
