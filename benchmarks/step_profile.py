"""Where a training step's time goes: the plain PyTorch step (no Ray, no DeepSpeed) of a config's
model and LoRA, on packed micro-batches shaped like the CounterFact benchmark's, with and without
each speed setting of bf16-mixed training:

- `train.attention`: transformers' SDPA against eager attention;
- `prepare_for_autocast` (what the train loop does under bf16-mixed): frozen linear weights
  held in bf16, no LoRA input up-cast. It changes no loss or gradient bit (tests/test_model.py);
- `--precisions fp32 bf16-mixed bf16`: the fp32 step beside them (does bf16 pay on this
  machine?), and `bf16` (weights, LoRA and optimizer in bf16, no autocast) as large models train.

    python benchmarks/step_profile.py --config configs/bench-counterfact-smollm2.yaml [--repeats 3] [--ops] \
        [--precisions bf16-mixed fp32 bf16] [--attentions sdpa eager] [--model-config config.json] \
        [--peak-tflops P] [--output NAME] [key=value ...]

`train.use_gpu=true` runs the steps on this process's accelerator. `--model-config` takes a
Hugging Face `config.json` and builds the model from it with random weights, directly on the
device: a step costs the same whatever the weights hold, so a 6-8B model's step and MFU can be
measured where no checkpoint of it can be fetched. `--peak-tflops` (the device's dense peak at
the trained precision) adds MFU, counted as `throughput.py` counts model FLOPs.

Variants are measured in alternation, `--repeats` times each, and reported by their median; the
batches are random tokens with the benchmark's lengths (prompt 9-18 tokens with its prefix,
target 1-4, 32 examples per micro-batch: about 500 tokens). `--ops` also prints the top
operators of one profiled step per variant (torch.profiler). Writes
benchmarks/results/NAME.json and the table between the NAME markers in BENCHMARKS.md (NAME:
`--output`, default step-profile). Run it on an otherwise idle machine.
"""

import argparse
import datetime
import random
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.host import machine  # noqa: E402
from benchmarks.markdown_table import publish, table_markers  # noqa: E402
from ftedit.config import load_config  # noqa: E402

RESULTS = REPO / "benchmarks" / "results"
PRECISIONS = ("bf16-mixed", "fp32", "bf16")
ATTENTIONS = ("sdpa", "eager")


def variants(precisions=("bf16-mixed",), attentions=ATTENTIONS) -> list[tuple[str, str, bool]]:
    """(precision, attention, prepare_for_autocast) to measure; the bf16 casts apply to bf16-mixed only."""
    return [(precision, attention, prepare) for precision in precisions for attention in attentions
            for prepare in ((False, True) if precision == "bf16-mixed" else (False,))]


def benchmark_batches(n: int, train, pad_id: int, vocab_size: int, seed: int = 0) -> list[dict]:
    from ftedit.tokenize import IGNORE_INDEX, pack_batch

    rng = random.Random(seed)
    batches = []
    for _ in range(n):
        ids, labels = [], []
        for _ in range(train.micro_batch_size):
            prompt, target = rng.randint(9, 18), rng.randint(1, 4)
            row = [rng.randrange(1, vocab_size) for _ in range(prompt + target)]
            ids.append(row)
            labels.append([IGNORE_INDEX] * prompt + row[prompt:])
        batches.append(pack_batch(ids, labels, pad_id, train.pack_length))
    return batches


def load_model(cfg, model_path, model_config, attention: str, device):
    """The config's checkpoint, or a model built from `model_config` with random weights on `device`."""
    from ftedit.model import load_causal_lm

    if model_config is None:
        model, _ = load_causal_lm(model_path, cfg.model.dtype, attention)
        return model.to(device)
    from benchmarks.random_checkpoint import random_model

    return random_model(model_config, cfg.seed, device, cfg.model.dtype, attention)  # built where it trains


def measure(cfg, model_path, attention: str, prepare: bool, batches: list[dict], ops: bool,
            precision: str = "bf16-mixed", model_config: str | None = None) -> dict:
    """Tokens/s of the optimizer steps over `batches` (the first two warm up, untimed)."""
    import torch

    from benchmarks.throughput import training_flops_per_token
    from ftedit.loss import lm_loss
    from ftedit.model import prepare_for_autocast, prepare_trainable, trainable_parameters
    from ftedit.placement import accelerator_device

    device = accelerator_device() if cfg.train.use_gpu else torch.device("cpu")
    model = load_model(cfg, model_path, model_config, attention, device)
    if precision == "bf16":
        model.to(torch.bfloat16)  # everything in bf16, LoRA and optimizer state too
    model = prepare_trainable(model, cfg.train, cfg.lora, cfg.seed).to(device)  # LoRA weights where the model is
    if prepare:
        prepare_for_autocast(model)
    params = trainable_parameters(model)
    optimizer = torch.optim.AdamW(params, lr=cfg.train.lr)
    model.train()
    on_device = [{k: v.to(device) for k, v in b.items()} for b in batches]

    def step(batch):
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16-mixed"):
            loss = lm_loss(model, batch)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss

    for batch in on_device[:2]:
        step(batch).item()
    started = time.perf_counter()
    for batch in on_device[2:]:
        loss = step(batch)
    loss.item()  # waits for the last step on an accelerator (steps queue behind one another)
    seconds = time.perf_counter() - started
    tokens = sum(int((b["example"] >= 0).sum()) for b in batches[2:])
    result = {"tokens_per_s": tokens / seconds, "seconds_per_step": seconds / (len(batches) - 2),
              **training_flops_per_token(model)}
    if device.type != "cpu" and hasattr(torch.accelerator, "max_memory_allocated"):  # torch >= 2.8
        result["peak_memory_gib"] = torch.accelerator.max_memory_allocated() / 2**30
    if ops:
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CPU]) as prof:
            step(on_device[0])
        print(f"\n## {precision}, {attention}, prepare_for_autocast={prepare}\n")
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12))
    del model, optimizer, on_device
    if device.type != "cpu" and hasattr(torch.accelerator, "empty_cache"):
        torch.accelerator.empty_cache()  # the next variant builds its own model
        torch.accelerator.reset_peak_memory_stats()
    return result


def render_table(result: dict) -> str:
    base = result["variants"][0]["tokens_per_s"]
    peak = result.get("peak_tflops")
    extra = " | model TFLOP/s | MFU | peak memory GiB" if peak else ""
    lines = [f"| precision | attention | frozen linears in bf16, no LoRA input cast | tokens/s (median) | runs "
             f"| vs first row{extra} |", "|---|---|---|---:|---|---:" + ("|---:|---:|---:" if peak else "") + "|"]
    for v in result["variants"]:
        runs = " / ".join(f"{t:.0f}" for t in v["runs"])
        precision = v.get("precision", "bf16-mixed")  # results from before the fp32 rows
        row = (f"| {precision} | {v['attention']} | {'yes' if v['prepare'] else 'no'} | {v['tokens_per_s']:.0f} "
               f"| {runs} | {v['tokens_per_s'] / base:.2f}x")
        if peak:
            tflops = v["tokens_per_s"] * v["flops_per_token"] / 1e12
            memory = v.get("peak_memory_gib")
            row += f" | {tflops:.1f} | {100 * tflops / peak:.1f}% | {f'{memory:.1f}' if memory else ''}"
        lines.append(row + " |")
    model = result.get("model")
    if model:
        lines.append(f"\nModel: {model}.")
    flops = result["variants"][0].get("flops_per_token")
    if flops and peak:
        lines.append(f"Model FLOPs {flops / 1e9:.3g} GFLOP per trained token (as `throughput.py` counts them); "
                     f"MFU against a dense peak of {peak:g} TFLOP/s.")
    lines.append(f"\n{result['steps']} timed steps of ~{result['tokens_per_step']:.0f} tokens per run, "
                 f"{result['machine']}, {result['date']}. Command: `{result['command']}`")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True)
    parser.add_argument("--steps", type=int, default=8, help="timed optimizer steps per run")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--ops", action="store_true", help="print the top operators of each variant")
    parser.add_argument("--precisions", nargs="+", choices=PRECISIONS, default=["bf16-mixed"])
    parser.add_argument("--attentions", nargs="+", choices=ATTENTIONS, default=list(ATTENTIONS))
    parser.add_argument("--model-config", metavar="CONFIG_JSON",
                        help="a Hugging Face config.json: measure that model with random weights (no checkpoint)")
    parser.add_argument("--peak-tflops", type=float, metavar="TFLOPS",
                        help="the device's dense peak at the trained precision (data sheet), for MFU")
    parser.add_argument("--output", default="step-profile", metavar="NAME",
                        help="results/NAME.json and the BENCHMARKS.md table between the NAME markers")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    try:
        markers = table_markers(args.output)
    except ValueError as error:
        parser.error(str(error))

    import torch

    from transformers import AutoTokenizer

    from ftedit.assets import resolve_model_path
    from ftedit.model import pad_token_id

    if args.peak_tflops is not None and args.peak_tflops <= 0:
        parser.error(f"--peak-tflops must be > 0, got {args.peak_tflops}")
    cfg = load_config(args.config, args.overrides)
    torch.set_num_threads(cfg.train.torch_threads or torch.get_num_threads())
    if args.model_config:
        from transformers import AutoConfig

        model_path, config = None, AutoConfig.from_pretrained(args.model_config)
        pad_id, vocab_size = 0, config.vocab_size  # random tokens: any id pads (padded positions are masked)
        described = f"{config.model_type} built from `{args.model_config}` with random weights"
    else:
        model_path = resolve_model_path(cfg.model.path, cfg.model.cache_dir)
        tokenizer = AutoTokenizer.from_pretrained(model_path)  # the batches need its ids, not the model
        pad_id, vocab_size = pad_token_id(tokenizer), len(tokenizer)
        described = None
    batches = benchmark_batches(args.steps + 2, cfg.train, pad_id, vocab_size, cfg.seed)
    measured = variants(args.precisions, args.attentions)
    runs: dict = {variant: [] for variant in measured}
    details: dict = {}  # the last run of each variant: its FLOPs per token and peak memory
    for repeat in range(args.repeats):
        for precision, attention, prepare in measured:
            r = measure(cfg, model_path, attention, prepare, batches, args.ops and repeat == 0, precision,
                        args.model_config)
            runs[(precision, attention, prepare)].append(r["tokens_per_s"])
            details[(precision, attention, prepare)] = r
            print(f"{precision:10s} {attention:6s} prepare={prepare!s:5s} run {repeat + 1}: "
                  f"{r['tokens_per_s']:.0f} tokens/s", flush=True)
    result = {
        "command": " ".join(["python benchmarks/step_profile.py", *sys.argv[1:]]),
        "steps": args.steps,
        "tokens_per_step": sum(int((b["example"] >= 0).sum()) for b in batches[2:]) / args.steps,
        "model": described,
        "peak_tflops": args.peak_tflops,
        "variants": [{"precision": pr, "attention": a, "prepare": p, "runs": runs[(pr, a, p)],
                      "tokens_per_s": statistics.median(runs[(pr, a, p)]),
                      "flops_per_token": details[(pr, a, p)]["flops_per_token"],
                      "peak_memory_gib": details[(pr, a, p)].get("peak_memory_gib")} for pr, a, p in measured],
        "machine": machine(),
        "date": datetime.date.today().isoformat(),
    }
    publish(result, RESULTS / f"{args.output}.json", markers, render_table(result))


if __name__ == "__main__":
    main()
