"""The one training loop: Ray Train's TorchTrainer runs it with the DeepSpeed engine on 1..N workers.

Each worker loads the model, marks what trains (LoRA or layers), wraps it with DeepSpeed (ZeRO
stage from the config, a plain torch AdamW so no fused op is compiled) and iterates its shard of
the tokenized Ray Dataset. The global batch is fixed by the config; gradient accumulation is
derived, so 1 worker and 8 workers take the same optimizer steps. Rank 0 logs loss, tokens/s and
progress. Every few epochs (or steps) all ranks report a resumable checkpoint (checkpoint.py),
from which a restarted worker group or a re-submitted job continues; at the end the trained
weights (adapter or layers) are reported as the run's final checkpoint.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import os
import time
from pathlib import Path

from ftedit.config import RunConfig, TrainConfig, from_dict, to_dict
from ftedit.logs import show_progress
from ftedit.metrics import SUMMARY_KEYS

log = logging.getLogger(__name__)


def deepspeed_config(train: TrainConfig) -> dict:
    zero: dict = {"stage": train.zero_stage}
    if train.offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu"}
    if train.offload_params:
        zero["offload_param"] = {"device": "cpu"}
    if train.zero_stage == 3:
        zero["stage3_gather_16bit_weights_on_model_save"] = True
    return {
        "train_batch_size": train.batch_size,
        "train_micro_batch_size_per_gpu": train.micro_batch_size,
        "gradient_accumulation_steps": train.grad_accum_steps,
        "gradient_clipping": train.max_grad_norm,
        "zero_optimization": zero,
        "bf16": {"enabled": train.precision == "bf16"},
        "fp16": {"enabled": train.precision == "fp16"},
        # The engine's forward runs under torch.autocast; weights, gradients and AdamW stay fp32.
        "torch_autocast": {"enabled": train.precision == "bf16-mixed", "dtype": "bfloat16"},
        # We pass torch's AdamW; DeepSpeed would otherwise insist on its own CPU Adam when offloading.
        "zero_force_ds_cpu_optimizer": False,
        "steps_per_print": 10**9,  # we log progress ourselves
    }


def extensions_root() -> Path:
    """Where torch builds and caches C++ extensions such as DeepSpeed's ops."""
    from torch.utils.cpp_extension import get_default_build_root

    return Path(os.environ.get("TORCH_EXTENSIONS_DIR") or get_default_build_root())


def cpu_comm_op_built() -> bool:
    """Whether DeepSpeed's shared-memory allreduce, which it compiles on first use on CPU, is
    already built on this machine (under the extensions root, or a per-build subfolder of it)."""
    root = extensions_root()
    return any(root.glob("deepspeed_shm_comm/*.so")) or any(root.glob("*/deepspeed_shm_comm/*.so"))


def stale_build_locks(max_age_s: float = 600.0) -> list[Path]:
    """Lock files of torch C++ extension builds (DeepSpeed's ops) older than `max_age_s`.

    DeepSpeed JIT-compiles ops (on CPU, its shared-memory allreduce) through torch, which holds a
    `lock` file in the op's build folder while compiling and waits, without a timeout, for any
    lock it finds. A build killed midway leaves its lock behind, and every later run then hangs
    at `deepspeed.initialize`. No build takes this long, so an old lock is a leftover.
    """
    root = extensions_root()
    stale = []
    for lock in [*root.glob("*/lock"), *root.glob("*/*/lock")]:
        try:
            if time.time() - lock.stat().st_mtime > max_age_s:
                stale.append(lock)
        except FileNotFoundError:  # a build just finished and released it
            pass
    return sorted(stale)


def lr_lambda(schedule: str, warmup_steps: int, total_steps: int):
    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        if schedule == "linear":
            return max(0.0, 1.0 - progress)
        if schedule == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
        return 1.0

    return factor


def optimizer_steps(n_examples: int, train: TrainConfig) -> int:
    """Optimizer steps per epoch, as every worker counts them on its equal shard."""
    per_worker = n_examples // train.num_workers
    micro_steps = math.ceil(per_worker / train.micro_batch_size)
    return max(1, micro_steps // train.grad_accum_steps)


def micro_batches(shard, train: TrainConfig, seed: int):
    """One epoch of a worker's shard as micro-batches of `micro_batch_size` examples, shuffled.

    Every worker cuts its equal shard the same way, so all take the same number of steps,
    which DeepSpeed's collectives require.
    """
    size = train.micro_batch_size
    for batch in shard.iter_batches(
        batch_size=size, batch_format="numpy", local_shuffle_buffer_size=max(4 * size, 256), local_shuffle_seed=seed
    ):
        yield {key: batch[key] for key in ("input_ids", "labels", "anchor_tokens") if key in batch}


def train_loop_per_worker(loop_config: dict) -> None:
    """Runs on every Ray Train worker. `loop_config`: the run config as a dict, model path, counts."""
    cfg: RunConfig = from_dict(RunConfig, loop_config["run"])
    train = cfg.train
    if not train.use_gpu:
        os.environ.setdefault("DS_ACCELERATOR", "cpu")  # skip DeepSpeed's accelerator probing

    import deepspeed
    import ray.train
    import ray.train.torch
    import torch
    from transformers.integrations import HfDeepSpeedConfig

    from ftedit.checkpoint import (latest_progress, load_engine_state, report_final, report_finished_again,
                                   report_resumable)
    from ftedit.model import load_causal_lm, pad_token_id, prepare_for_training, trainable_parameters
    from ftedit.precision import with_precision_for
    from ftedit.edit_request import EditRequest
    from ftedit.loss import lm_loss
    from ftedit.tokenize import pack_batch

    show_progress()

    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    # Ray sets OMP_NUM_THREADS to the worker's CPU resource (often 1); use the node's cores.
    threads = train.torch_threads or max(1, (os.cpu_count() or 1) // context.get_local_world_size())
    torch.set_num_threads(threads)
    torch.manual_seed(cfg.seed)
    # `auto` precision becomes what this worker's device computes fast; explicit bf16 on a device
    # without it stops here, before anything is loaded or written.
    device = ray.train.torch.get_device()
    resolved = with_precision_for(cfg, device)
    if resolved.train.precision != train.precision and rank == 0:
        log.info("train.precision=%s: training in %s on %s", train.precision, resolved.train.precision, device)
    cfg, train = resolved, resolved.train

    # A restarted worker group (a worker died) or a re-submitted job resumes from the latest
    # checkpoint: weights, optimizer and scheduler state, and where in the epochs it stood. A
    # restart after the final checkpoint only reports it again, without building the model.
    progress, restored = latest_progress()
    if restored is not None and progress.finished:
        report_finished_again(restored, rank)
        return

    if not train.use_gpu and rank == 0 and not cpu_comm_op_built():
        # Else the job is silent for the length of the build, and looks hung the first time.
        log.info("compiling DeepSpeed's CPU allreduce op, once per machine (under a minute on 2 cores; "
                 "kept in %s)", extensions_root())
    for lock in stale_build_locks():
        log.warning("%s was left by an interrupted op build, and DeepSpeed will wait on it for ever: "
                    "if nothing is compiling, delete the folder %s", lock, lock.parent)
    ds_config = deepspeed_config(train)
    # ZeRO-3: transformers sees this live config during from_pretrained and builds the model under
    # deepspeed.zero.Init, each worker holding only its share of the weights: a 70B model never
    # sits whole in one worker's memory. It must stay alive until the engine exists.
    zero3_loading = None
    if train.zero_stage == 3:
        deepspeed.init_distributed()  # joins Ray Train's process group: zero.Init must see every worker
        zero3_loading = HfDeepSpeedConfig(ds_config)
    model, tokenizer = load_causal_lm(loop_config["model_path"], cfg.model.dtype, train.attention)
    if zero3_loading is not None and rank == 0:
        loaded_partitioned = all(hasattr(p, "ds_id") for p in model.parameters())
        log.info("ZeRO-3: every weight built partitioned over %d worker(s) by zero.Init: %s", world, loaded_partitioned)
    model = prepare_for_training(model, train, cfg.lora, cfg.seed)
    params = trainable_parameters(model)
    steps_per_epoch = optimizer_steps(loop_config["n_examples"], train)
    total_steps = steps_per_epoch * train.epochs
    optimizer = torch.optim.AdamW(params, lr=train.lr, weight_decay=train.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lr_lambda(train.schedule, int(train.warmup_ratio * total_steps), total_steps)
    )
    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, lr_scheduler=scheduler, config=ds_config)
    del zero3_loading
    device = engine.device
    pad = pad_token_id(tokenizer)
    if rank == 0:
        n_trainable = sum(getattr(p, "ds_numel", p.numel()) for p in params)  # ZeRO-3: p holds a share
        log.info(
            "training %s params (%s) on %d worker(s), %d threads each: %d epochs x %d steps, global batch %d",
            f"{n_trainable:,}", train.tuning, world, threads, train.epochs, steps_per_epoch, train.batch_size,
        )
        if world == 1 and train.zero_stage in (1, 2) and not train.offload_optimizer:
            log.info("ZeRO-%d partitions over workers, and with one worker it only adds copies of the gradients "
                     "and weights; train.zero_stage=0 trains the same without them (BENCHMARKS.md, speed)",
                     train.zero_stage)

    probe = [EditRequest.from_dict(d) for d in loop_config.get("probe", [])]
    shard = ray.train.get_dataset_shard("train")
    if restored is not None:
        load_engine_state(engine, restored)
        if rank == 0:
            log.info("resumed from checkpoint %s: epoch %d, micro-batch %d of it (restart %d)",
                     restored.path, progress.epoch + 1, progress.micro_step, progress.restarts)
    started = time.perf_counter()
    train_seconds_before = progress.train_seconds  # time of earlier attempts
    probe_seconds = 0.0
    window = {"tokens": 0, "padded": 0, "loss": 0.0, "data_wait": 0.0, "start": started}
    epoch_metrics: dict = {"epoch": progress.epoch}
    engine.train()

    def elapsed_training() -> float:
        return train_seconds_before + time.perf_counter() - started - probe_seconds

    for epoch in range(progress.epoch, train.epochs):
        # Each epoch re-reads the shard in a new seeded order (the same order after a restart).
        batches = iter(micro_batches(shard, train, cfg.seed * 1000 + epoch))
        for _ in range(progress.micro_step):  # trained before the mid-epoch checkpoint
            next(batches)
        while True:
            waited = time.perf_counter()
            batch = next(batches, None)
            if batch is None:
                break
            # Anchors are marked only when the loss weighs them apart; pooled, they are labels like any.
            anchors = batch.get("anchor_tokens") if cfg.loss.anchor_weight is not None else None
            packed = pack_batch(batch["input_ids"], batch["labels"], pad, train.pack_length, anchors)
            tensors = {k: v.to(device) for k, v in packed.items()}
            window["data_wait"] += time.perf_counter() - waited
            loss = lm_loss(engine, tensors, cfg.loss.anchor_weight)
            engine.backward(loss)
            engine.step()
            n_tokens = int((tensors["example"] >= 0).sum())
            progress.micro_step += 1
            progress.micro_steps += 1
            progress.tokens_seen += n_tokens
            window["tokens"] += n_tokens
            window["padded"] += tensors["example"].numel()
            window["loss"] += loss.item()
            step, at_boundary = divmod(progress.micro_steps, train.grad_accum_steps)
            if at_boundary:
                continue
            if step % train.log_every == 0:
                now = time.perf_counter()
                if rank == 0:
                    log.info(
                        "epoch %d/%d step %d/%d loss %.4f lr %.2e | %.0f tokens/s (this worker), "
                        "%.0f%% of the batch is padding, %.0f%% waiting for data | elapsed %.0f s",
                        epoch + 1, train.epochs, step, total_steps,
                        window["loss"] / (train.log_every * train.grad_accum_steps), scheduler.get_last_lr()[0],
                        window["tokens"] / max(now - window["start"], 1e-9),
                        100 * (1 - window["tokens"] / max(window["padded"], 1)),
                        100 * window["data_wait"] / max(now - window["start"], 1e-9), now - started,
                    )
                window = {"tokens": 0, "padded": 0, "loss": 0.0, "data_wait": 0.0, "start": now}
            if train.checkpoint_every_steps and step % train.checkpoint_every_steps == 0:
                progress.train_seconds = elapsed_training()
                report_resumable(engine, progress, {"step": step}, rank)

        scored = time.perf_counter()
        epoch_metrics = {"epoch": epoch + 1, **_probe_metrics(engine, tokenizer, probe, loop_config, cfg, rank)}
        probe_seconds += time.perf_counter() - scored
        progress.epoch, progress.micro_step = epoch + 1, 0
        if epoch + 1 == train.epochs:
            break  # the last epoch reports with the trained weights, below
        if train.checkpoint_every_epochs and (epoch + 1) % train.checkpoint_every_epochs == 0:
            progress.train_seconds = elapsed_training()
            report_resumable(engine, progress, epoch_metrics, rank)
        else:
            ray.train.report(epoch_metrics)

    progress.train_seconds = elapsed_training()
    tokens = progress.tokens_seen * world  # each worker saw its own shard; shards are equal
    metrics = {
        **epoch_metrics,
        "train_seconds": progress.train_seconds,
        "train_tokens": tokens,
        "train_tokens_per_s": tokens / max(progress.train_seconds, 1e-9),
        "optimizer_steps": engine.global_steps,
        "restarts": progress.restarts,
        "precision": train.precision,  # as trained: `auto` resolved on the workers
    }
    report_final(lambda directory: _save_from_engine(engine, directory, train, rank), progress, metrics, rank)


def _probe_metrics(engine, tokenizer, probe: list, loop_config: dict, cfg: RunConfig, rank: int) -> dict:
    """Edit metrics of the model in training on the probe edits, as `probe_<metric>`.

    Every rank scores (under ZeRO-3 each forward needs all ranks); rank 0 logs. No unedited
    reference here, so no EasyEdit column.
    """
    if not probe:
        return {}
    from ftedit.evaluate import evaluate

    import torch

    started = time.perf_counter()
    settings = dataclasses.replace(cfg.eval, fluency_tokens=0)  # scores only: generation is slow
    # Scored in the training precision: under bf16-mixed the frozen weights are held in bf16.
    mixed = cfg.train.precision == "bf16-mixed"
    with torch.autocast(torch.device(engine.device).type, dtype=torch.bfloat16, enabled=mixed):
        summary = evaluate(engine.module, tokenizer, probe, loop_config["metric_kind"], settings).summary
    engine.train()
    if rank == 0:
        log.info(
            "probe (%d edits): %s (%.0f s)", len(probe),
            ", ".join(f"{k} " + ("n/a" if summary[k] is None else f"{summary[k]:.1f}") for k in SUMMARY_KEYS),
            time.perf_counter() - started,
        )
    return {f"probe_{k}": v for k, v in summary.items() if isinstance(v, (int, float)) and k not in ("n_records", "n_locality")}


def _save_from_engine(engine, out_dir: Path, train: TrainConfig, rank: int) -> None:
    """Rank 0 writes the trained weights. Under ZeRO-3 every rank must join the gather first."""
    from ftedit.model import save_trained, trainable_parameters

    model = engine.module
    if train.zero_stage == 3:
        import deepspeed

        with deepspeed.zero.GatheredParameters(trainable_parameters(model), modifier_rank=None):
            if rank == 0:
                save_trained(model, out_dir, train.tuning)
    elif rank == 0:
        save_trained(model, out_dir, train.tuning)


@contextlib.contextmanager
def controller_poll(train: TrainConfig):
    """Ray Train's controller reads its poll interval from this variable of the driver's
    environment when `fit` starts it; set it for that call only and put back what was there."""
    name = "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"
    before = os.environ.get(name)
    os.environ[name] = str(train.controller_poll_s)
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = before


def worker_runtime_env(train) -> dict | None:
    """Ray Train's worker runtime env: `train.worker_env` as strings. Ray Train adds these to the
    env vars it passes its workers anyway, so the job's own runtime env still applies; None when
    the config sets none."""
    return {"env_vars": {k: str(v) for k, v in train.worker_env.items()}} if train.worker_env else None


def fit(cfg: RunConfig, model_path: Path, dataset, n_examples: int, storage_dir: Path,
        probe: list | None = None, metric_kind: str = "counterfact", callbacks: list | tuple = (),
        inputs_digest: str = ""):
    """Run the train loop on Ray Train workers; returns (final checkpoint, metrics).

    Checkpoints live in `train.storage_path` (or `storage_dir`) under the run's name, so a
    restarted worker group and a re-submitted job with the same config and inputs
    (`inputs_digest`, `checkpoint.run_name`) resume from the latest.
    `probe`: edit requests scored after every epoch; `callbacks`: Ray Train callbacks (a sweep
    passes Tune's, which forwards every report to the trial).
    """
    import ray.train
    from ray.train.torch import TorchTrainer

    from ftedit.checkpoint import run_name

    train = cfg.train
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={
            "run": to_dict(cfg),
            "model_path": str(model_path),
            "n_examples": n_examples,
            "probe": [r.to_dict() for r in probe or []],
            "metric_kind": metric_kind,
        },
        scaling_config=ray.train.ScalingConfig(
            num_workers=train.num_workers,
            use_gpu=train.use_gpu,
            resources_per_worker={"CPU": train.cpus_per_worker},
        ),
        datasets={"train": dataset},
        run_config=ray.train.RunConfig(
            name=run_name(cfg, inputs_digest),
            storage_path=train.storage_path or str(storage_dir.resolve()),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=train.keep_checkpoints),
            failure_config=ray.train.FailureConfig(max_failures=train.max_failures),
            callbacks=list(callbacks),
            worker_runtime_env=worker_runtime_env(train),
        ),
    )
    with controller_poll(train):  # at Ray's 2 s, every epoch's report would wait up to 2 s
        result = trainer.fit()
    if result.checkpoint is None or Path(result.checkpoint.path).name != "final":
        raise RuntimeError(f"training ended without its final checkpoint: {result.error}")
    return result.checkpoint, result.metrics
