"""Speed benchmark, side by side in one run on the same model, examples and micro-batches:

1. training tokens/s of a plain single-process PyTorch loop (peft LoRA, torch AdamW) against
   the Ray Train + DeepSpeed path with 1 worker (`ftedit.train.fit`), whose start-up (Ray
   Train workers, model load, DeepSpeed initialisation, checkpointing) is reported separately;
   between them, the same DeepSpeed engine (the config's ZeRO stage) driven without Ray Train,
   which splits the gap into what DeepSpeed costs and what the Ray Train worker costs;
2. scoring throughput of the evaluation (`score_probes`) against forward-only passes of the
   same model over the same packed rows.

    python benchmarks/throughput.py --config configs/bench-counterfact-smollm2.yaml [--edits 30] [--repeats 3] [--output NAME] [--peak-tflops P] [key=value ...]

On a GPU node, `train.use_gpu=true` runs every path on the GPU (the plain loop and the engine on
this process's accelerator, Ray Train on a worker's GPU), and `--peak-tflops` (the device's dense
peak at the trained precision) adds MFU to the model FLOP/s every run reports.

Every training measurement starts in a fresh process, as the Ray Train worker does: the plain
loop and the DeepSpeed engine each run in a child process of this one (`--child`), over the
worker's micro-batches in the worker's seeded order, saved once, packed inside the timed loop as
the worker packs them. This process never trains: on the 2-core VMs here, a driver that had
trained in-process made the next Ray Train worker's first steps 2-3x slower (each page fault about
8x dearer; BENCHMARKS.md), which measured the driver, not the path.

The training paths are measured in alternation (plain, DeepSpeed, Ray Train, plain, ...) and each
ratio is that of the medians: on a small shared machine one measurement of each can differ by
more than the 10% the bar allows, and alternating spreads slow spells over all paths.

Writes benchmarks/results/NAME.json and the table between the `<!-- NAME:start -->` and
`<!-- NAME:end -->` markers in BENCHMARKS.md (NAME: `throughput` unless `--output` says otherwise,
e.g. for the same measurement with another `train.zero_stage`). Run it on an otherwise idle
machine: on 2 cores anything else running distorts it.
"""

import argparse
import datetime
import logging
import os
import pickle
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.markdown_table import publish, table_markers  # noqa: E402
from benchmarks.fresh_process import child_result, print_result  # noqa: E402
from benchmarks.host import machine  # noqa: E402
from ftedit.config import load_config  # noqa: E402
from ftedit.logs import show_progress  # noqa: E402

RESULTS = REPO / "benchmarks" / "results"
log = logging.getLogger("throughput")


def _trainable_model(cfg, model_path):
    """(model, params, optimizer, pad id) built as the train loop builds them, for both in-process paths."""
    import torch

    from ftedit.model import load_causal_lm, pad_token_id, prepare_for_training, trainable_parameters
    from ftedit.placement import accelerator_device

    train = cfg.train
    torch.manual_seed(cfg.seed)
    model, tokenizer = load_causal_lm(model_path, cfg.model.dtype, train.attention)
    if train.use_gpu:
        model.to(accelerator_device())  # where Ray Train's worker (and its DeepSpeed engine) trains
    model = prepare_for_training(model, train, cfg.lora, cfg.seed)  # as the train loop does
    params = trainable_parameters(model)
    optimizer = torch.optim.AdamW(params, lr=train.lr, weight_decay=train.weight_decay)
    return model, params, optimizer, pad_token_id(tokenizer)


def training_flops_per_token(model) -> dict:
    """Matmul FLOPs per trained token in the linear layers (the model FLOPs of MFU).

    Each linear weight costs 2 FLOPs per token forward and 2 backward for its input's gradient;
    a trainable one 2 more for its own gradient: 6N when every weight trains, LoRA 4N plus 6 per
    adapter weight. The output head counts as a linear layer (tied to the embeddings or not).
    Attention scores (QK^T, AV) are left out: they grow with the row length and are a few
    percent of this for edit-length rows.
    """
    import torch

    linear = trainable = 0
    for module in model.modules():
        if isinstance(module, torch.nn.Linear):  # peft's LoRA wrapper is not one; its parts are
            linear += module.weight.numel()
            trainable += module.weight.numel() if module.weight.requires_grad else 0
    return {"linear_params": linear, "trainable_linear_params": trainable, "flops_per_token": 4 * linear + 2 * trainable}


def epoch_micro_batches(cfg, dataset) -> list[list[dict]]:
    """Every epoch's micro-batches (token ids and labels, unpacked) in the train loop's seeded order."""
    from ftedit.train import micro_batches

    return [list(micro_batches(dataset, cfg.train, cfg.seed * 1000 + epoch)) for epoch in range(cfg.train.epochs)]


def _timed_steps(epochs: list[list[dict]], pad: int, pack_length: int, step) -> dict:
    """Packs each micro-batch (as the worker does, inside the timed loop) and runs `step` on it.

    Returns tokens, seconds and tokens/s, and the rate of the first 10 micro-steps apart: a
    fresh process's first steps are where the paths have differed.
    """
    from ftedit.tokenize import pack_batch

    tokens, micro_steps, started = 0, 0, time.perf_counter()
    first_10 = None
    for batches in epochs:
        for batch in batches:
            packed = pack_batch(batch["input_ids"], batch["labels"], pad, pack_length)
            step(packed)
            tokens += int((packed["example"] >= 0).sum())
            micro_steps += 1
            if micro_steps == 10:
                first_10 = tokens / (time.perf_counter() - started)
    seconds = time.perf_counter() - started
    return {"tokens": tokens, "seconds": seconds, "tokens_per_s": tokens / seconds, "first_10_tokens_per_s": first_10}


def plain_loop_tokens_per_s(cfg, model_path, epochs: list[list[dict]]) -> dict:
    """The training step without Ray or DeepSpeed: same model, LoRA, batches, packing, optimizer."""
    import torch

    from ftedit.loss import lm_loss

    train = cfg.train
    model, params, optimizer, pad = _trainable_model(cfg, model_path)
    device = next(model.parameters()).device
    mixed = torch.autocast(device.type, dtype=torch.bfloat16, enabled=train.precision == "bf16-mixed")
    model.train()
    micro_steps = 0

    def step(packed):
        nonlocal micro_steps
        with mixed:  # what DeepSpeed's torch_autocast does around the engine's forward
            loss = lm_loss(model, {k: v.to(device) for k, v in packed.items()}) / train.grad_accum_steps
        loss.backward()
        micro_steps += 1
        if micro_steps % train.grad_accum_steps == 0:
            torch.nn.utils.clip_grad_norm_(params, train.max_grad_norm)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        loss.item()  # as the train loop logs it (and on a GPU, waits for the step)

    return {**_timed_steps(epochs, pad, train.pack_length, step), **training_flops_per_token(model)}


def deepspeed_loop_tokens_per_s(cfg, model_path, epochs: list[list[dict]]) -> dict:
    """The plain loop's micro-batches through the train loop's DeepSpeed engine, without Ray Train.

    The same engine, ZeRO settings and step as `ftedit.train` (`deepspeed_config`): no Ray Train
    worker, no side thread, no Ray Data shard. Needs a torch.distributed group, which
    `join_single_process_group` sets up.
    """
    import deepspeed

    from ftedit.loss import lm_loss
    from ftedit.train import deepspeed_config

    model, _, optimizer, pad = _trainable_model(cfg, model_path)
    started = time.perf_counter()
    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, config=deepspeed_config(cfg.train))
    startup = time.perf_counter() - started
    engine.train()

    def step(packed):
        loss = lm_loss(engine, {k: v.to(engine.device) for k, v in packed.items()})  # the engine scales by grad accumulation
        engine.backward(loss)
        engine.step()
        loss.item()  # as the train loop logs it

    return {**_timed_steps(epochs, pad, cfg.train.pack_length, step), "startup_seconds": startup}


CHILD_PATHS = {"plain": plain_loop_tokens_per_s, "deepspeed": deepspeed_loop_tokens_per_s}


def with_resolved_precision(cfg):
    """`cfg` with `train.precision` as a Ray Train worker on this process's device would resolve
    it (`auto`), so the plain and DeepSpeed children train in the precision the Ray path does."""
    import torch

    from ftedit.placement import accelerator_device
    from ftedit.precision import with_precision_for

    return with_precision_for(cfg, accelerator_device() if cfg.train.use_gpu else torch.device("cpu"))


def run_child(path: str, cfg, model_path, batches_file: Path) -> None:
    """In a `--child` process: one measurement of `path` over the saved micro-batches, printed for
    the parent (`fresh_process.print_result`)."""
    import torch

    torch.set_num_threads(cfg.train.torch_threads or os.cpu_count() or 1)  # as the one worker sets it
    with open(batches_file, "rb") as f:
        epochs = pickle.load(f)  # written by this benchmark's parent process a moment ago
    if path == "deepspeed":
        join_single_process_group(cfg.train.use_gpu)
    print_result(CHILD_PATHS[path](cfg, model_path, epochs))


def measure_in_child(path: str, args, overrides: list[str], model_path, batches_file: Path) -> dict:
    """One measurement of `path` in a fresh process (this script with `--child`)."""
    command = [str(Path(__file__).resolve()), "--config", str(Path(args.config).resolve()),
               "--edits", str(args.edits), "--epochs", str(args.epochs), "--child", path,
               "--model-path", str(model_path), "--batches", str(batches_file), *overrides]
    return child_result(command, f"{path} measurement", show_progress=False)


def join_single_process_group(use_gpu: bool = False) -> None:
    """A one-process group on a free local port, for the DeepSpeed path without Ray Train: gloo
    on CPU, the accelerator's own backend (NCCL on NVIDIA GPUs) on a GPU, as Ray Train picks."""
    import socket

    import deepspeed

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", LOCAL_WORLD_SIZE="1",
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    if not use_gpu:
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    deepspeed.init_distributed(dist_backend=None if use_gpu else "gloo")  # None: DeepSpeed's accelerator's backend


def scoring_vs_forward(cfg, inputs, model, tokenizer) -> dict:
    """Evaluation scoring against bare forward passes over the same packed rows."""
    import torch

    from ftedit.evaluate import probes_of, score_probes
    from ftedit.model import pad_token_id
    from ftedit.tokenize import encode_example, pack_batch

    requests = inputs.source.head(inputs.source.n_requests)  # a benchmark-sized set, fine in memory
    probes = list(dict.fromkeys(p for r in requests for p in probes_of(r, inputs.kind)))
    encoded = [encode_example(tokenizer, p, t) for p, t in probes]
    tokens = sum(len(e["input_ids"]) for e in encoded)
    size, pad = cfg.eval.batch_size, pad_token_id(tokenizer)
    batches = [pack_batch([e["input_ids"] for e in encoded[i:i + size]], [e["labels"] for e in encoded[i:i + size]],
                          pad, cfg.eval.pack_length) for i in range(0, len(encoded), size)]
    device = next(model.parameters()).device
    model.eval()
    with torch.no_grad():
        # Untimed first pass: thread pools and allocator warm up here, not inside the timed
        # forward passes (timed first, they would otherwise pay for the scoring run after them).
        model(input_ids=batches[0]["input_ids"].to(device), position_ids=batches[0]["position_ids"].to(device),
              use_cache=False)
        started = time.perf_counter()
        for batch in batches:
            # Moved to the device inside the timed loop, as score_probes moves its batches;
            # .item() waits for the forward pass on a GPU, as score_probes's results do.
            logits = model(input_ids=batch["input_ids"].to(device), position_ids=batch["position_ids"].to(device),
                           use_cache=False).logits
            logits[0, 0, 0].item()
        forward = time.perf_counter() - started
    started = time.perf_counter()
    score_probes(model, tokenizer, probes, size, cfg.eval.pack_length)
    scoring = time.perf_counter() - started
    return {"probes": len(probes), "tokens": tokens, "forward_tokens_per_s": tokens / forward,
            "scoring_tokens_per_s": tokens / scoring}


def _spread(runs: list[dict]) -> str:
    values = sorted(r["tokens_per_s"] for r in runs)
    return f"{values[0]:.0f}-{values[-1]:.0f}" if len(values) > 1 else f"{values[0]:.0f}"


def _pairs(ratios: list[float]) -> str:
    return ", ".join(f"{x:.2f}" for x in ratios)


def model_flops(comparison: dict, peak_tflops: float | None) -> dict:
    """Model FLOP/s of each training path's median run, and MFU against `peak_tflops` (the
    device's dense peak at the precision trained, from its data sheet; None: not reported)."""
    per_token = comparison["plain"]["flops_per_token"]  # the plain child counted them on the same model
    tflops = {path: comparison[path]["tokens_per_s"] * per_token / 1e12 for path in ("plain", "deepspeed", "ray")}
    return {
        "flops_per_token": per_token,
        "linear_params": comparison["plain"]["linear_params"],
        "trainable_linear_params": comparison["plain"]["trainable_linear_params"],
        "tflops": tflops,
        "peak_tflops": peak_tflops,
        "mfu": {path: value / peak_tflops for path, value in tflops.items()} if peak_tflops else None,
    }


def _flops_line(f: dict) -> str:
    paths = (("plain loop", "plain"), ("DeepSpeed", "deepspeed"), ("Ray Train", "ray"))
    achieved = "; ".join(f"{name} {f['tflops'][path]:.3g} TFLOP/s" for name, path in paths)
    if f["mfu"]:
        mfu = ", ".join(f"{name} {100 * f['mfu'][path]:.3g}%" for name, path in paths)
        mfu = f"MFU against a peak of {f['peak_tflops']:g} TFLOP/s: {mfu}."
    else:
        mfu = "MFU: not reported (no `--peak-tflops` given for this device)."
    return (f"Model FLOPs: {f['flops_per_token'] / 1e9:.3g} GFLOP per trained token (4 per weight of the "
            f"{f['linear_params'] / 1e6:.1f}M in linear layers, 2 more per trainable one of "
            f"{f['trainable_linear_params'] / 1e6:.2f}M; attention scores left out); {achieved}. {mfu}")


def render_table(r: dict) -> str:
    n = len(r["plain_runs"])
    return "\n".join([
        f"| measurement | tokens/s (median of {n}) | range | ratio | bar |",
        "|---|---:|---:|---:|---|",
        f"| plain PyTorch training loop (a fresh process) | {r['plain']['tokens_per_s']:.0f} | {_spread(r['plain_runs'])} | 1.00 | |",
        f"| DeepSpeed ZeRO-{r['zero_stage']} engine, no Ray Train (a fresh process) | "
        f"{r['deepspeed']['tokens_per_s']:.0f} | {_spread(r['deepspeed_runs'])} | {r['deepspeed_ratio']:.2f} | |",
        f"| Ray Train + DeepSpeed ZeRO-{r['zero_stage']}, 1 worker | {r['ray']['tokens_per_s']:.0f} "
        f"| {_spread(r['ray_runs'])} | {r['train_ratio']:.2f} | >= 0.9 |",
        f"| forward-only passes over the evaluation's packed rows | {r['eval']['forward_tokens_per_s']:.0f} | | 1.00 | |",
        f"| evaluation scoring (`score_probes`) | {r['eval']['scoring_tokens_per_s']:.0f} | | {r['eval_ratio']:.2f} | >= 0.8 |",
        "",
        f"Ratio to the plain loop in each alternating round: DeepSpeed without Ray Train {_pairs(r['deepspeed_pair_ratios'])}; "
        f"Ray Train {_pairs(r['pair_ratios'])}. Outside the measured loops (medians): DeepSpeed initialisation "
        f"{r['deepspeed']['startup_seconds']:.1f} s; Ray Train start-up (workers, model load, DeepSpeed init) and "
        f"checkpointing {r['ray']['startup_seconds']:.0f} s. {r['n_edits']} edits, {r['examples']} examples, {r['epochs']} epoch(s) "
        f"per measurement; {r['machine']}; {r['date']}. Command: `{r['command']}`",
        *(["", _flops_line(r["model_flops"])] if r.get("model_flops") else []),
    ])


def median_run(runs: list[dict]) -> dict:
    """The run of median tokens/s (of an odd number of runs), with the median start-up."""
    ordered = sorted(runs, key=lambda r: r["tokens_per_s"])
    run = dict(ordered[(len(ordered) - 1) // 2])
    if "startup_seconds" in run:
        run["startup_seconds"] = statistics.median(r["startup_seconds"] for r in runs)
    return run


def training_comparison(plain_runs: list[dict], deepspeed_runs: list[dict], ray_runs: list[dict]) -> dict:
    """Every path's runs, their median runs, each round's ratios to the plain loop and the ratios
    of medians (`train_ratio`: Ray Train against the plain loop, the bar)."""
    plain, deepspeed, ray = median_run(plain_runs), median_run(deepspeed_runs), median_run(ray_runs)

    def pairs(runs):
        return [r["tokens_per_s"] / p["tokens_per_s"] for p, r in zip(plain_runs, runs)]

    return {
        "plain": plain,
        "deepspeed": deepspeed,
        "ray": ray,
        "plain_runs": plain_runs,
        "deepspeed_runs": deepspeed_runs,
        "ray_runs": ray_runs,
        "deepspeed_pair_ratios": pairs(deepspeed_runs),
        "pair_ratios": pairs(ray_runs),
        "deepspeed_ratio": deepspeed["tokens_per_s"] / plain["tokens_per_s"],
        "train_ratio": ray["tokens_per_s"] / plain["tokens_per_s"],
    }


# Variables that change how fast torch runs on CPU (allocator, OpenMP); the ones set are written
# into the recorded command, so a table measured under them says so and can be reproduced.
SPEED_ENV_PREFIXES = ("LD_PRELOAD", "MALLOC_", "OMP_", "GOMP_", "KMP_", "MKL_")


def speed_environment(environ=os.environ) -> list[str]:
    """`NAME=value` for each set variable that changes CPU speed, sorted."""
    return sorted(f"{k}={v}" for k, v in environ.items() if k.startswith(SPEED_ENV_PREFIXES))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True)
    parser.add_argument("--edits", type=int, default=30, help="edit requests (examples follow from the config)")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3, help="alternating measurements of each training path (odd)")
    parser.add_argument("--output", default="throughput", metavar="NAME",
                        help="results/NAME.json and the BENCHMARKS.md table between the NAME markers")
    parser.add_argument("--peak-tflops", type=float, metavar="TFLOPS",
                        help="the device's dense peak at the trained precision (data sheet), for MFU; "
                             "e.g. 989 for an H100 SXM in bf16")
    parser.add_argument("--child", choices=sorted(CHILD_PATHS), help=argparse.SUPPRESS)  # one measurement, internal
    parser.add_argument("--model-path", help=argparse.SUPPRESS)
    parser.add_argument("--batches", help=argparse.SUPPRESS)
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    fixed = [f"data.limit={args.edits}", f"train.epochs={args.epochs}", "train.num_workers=1", "eval.probe_edits=0"]
    if args.child:
        cfg = load_config(args.config, [*args.overrides, *fixed])
        run_child(args.child, with_resolved_precision(cfg), args.model_path, Path(args.batches))
        return
    if args.repeats < 1 or args.repeats % 2 == 0:
        parser.error("--repeats must be odd (1, 3, 5, ...): the median is then one measured run of each path")
    if args.peak_tflops is not None and args.peak_tflops <= 0:
        parser.error(f"--peak-tflops must be > 0, got {args.peak_tflops}")
    try:
        markers = table_markers(args.output)
    except ValueError as error:
        parser.error(str(error))
    show_progress()

    from ftedit.placement import load_replica
    from ftedit.pipeline import load_inputs, prepare_augmentation, training_dataset
    from ftedit.train import fit

    with tempfile.TemporaryDirectory() as tmp:
        cfg = load_config(args.config, [*args.overrides, *fixed, f"output.dir={tmp}/run"])
        inputs = load_inputs(cfg)
        augmentation = prepare_augmentation(cfg, inputs)
        dataset, counts = training_dataset(cfg, inputs, augmentation)
        batches_file = Path(tmp) / "micro_batches.pkl"
        with open(batches_file, "wb") as f:
            pickle.dump(epoch_micro_batches(cfg, dataset), f)

        plain_runs, deepspeed_runs, ray_runs = [], [], []
        for repeat in range(args.repeats):
            for path, runs in (("plain", plain_runs), ("deepspeed", deepspeed_runs)):
                runs.append(measure_in_child(path, args, args.overrides, inputs.model_path, batches_file))
                log.info("%s %d/%d: %s", path, repeat + 1, args.repeats, runs[-1])
            started = time.perf_counter()
            _, metrics = fit(cfg, inputs.model_path, dataset, counts["examples"], Path(tmp) / f"ray{repeat}")
            wall = time.perf_counter() - started
            ray_runs.append({"tokens": metrics["train_tokens"], "seconds": metrics["train_seconds"],
                             "tokens_per_s": metrics["train_tokens_per_s"],
                             "startup_seconds": wall - metrics["train_seconds"]})
            log.info("ray train %d/%d: %s", repeat + 1, args.repeats, ray_runs[-1])

        # Scoring last, after every training measurement: it runs the model in this process.
        # As a scoring actor places it (on the CPU unless the run trains on GPUs).
        model, tokenizer = load_replica(inputs.model_path, cfg.model.dtype, devices=None if cfg.train.use_gpu else [])
        evaluation = scoring_vs_forward(cfg, inputs, model, tokenizer)
        log.info("scoring: %s", evaluation)

    comparison = training_comparison(plain_runs, deepspeed_runs, ray_runs)
    result = {
        "config": args.config,
        "command": " ".join([*speed_environment(), "python benchmarks/throughput.py", *sys.argv[1:]]),
        "n_edits": inputs.source.n_requests,
        "examples": counts["examples"],
        "epochs": args.epochs,
        "zero_stage": cfg.train.zero_stage,
        **comparison,
        "model_flops": model_flops(comparison, args.peak_tflops),
        "eval": evaluation,
        "eval_ratio": evaluation["scoring_tokens_per_s"] / evaluation["forward_tokens_per_s"],
        "machine": machine(),
        "date": datetime.date.today().isoformat(),
    }
    publish(result, RESULTS / f"{args.output}.json", markers, render_table(result))


if __name__ == "__main__":
    main()
