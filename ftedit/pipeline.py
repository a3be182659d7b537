"""The mass-edit job, stage by stage: requests -> augment -> tokenize -> train -> evaluate -> report.

Inputs are validated before anything is written. The run directory is built under
`<output.dir>.incomplete` and renamed to `<output.dir>` only once every output is written, so an
interrupted or failed run never leaves a directory that looks complete.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from ftedit.assets import resolve_model_path
from ftedit.augment import DigestSet
from ftedit.checkpoint import check_storage, copy_trained_weights, remove_run_checkpoints
from ftedit.config import ConfigError, RunConfig, dump_config, load_config
from ftedit.evaluate import metric_kind
from ftedit.merge import save_merged
from ftedit.report import render_markdown, write_json, write_per_edit
from ftedit.request_dataset import RequestSource, open_requests, pool_exclusions
from ftedit.requests import Fact, load_fact_pool
from ftedit.scoring import evaluate_on_cluster, scored_rows
from ftedit.unedited import evaluation_identity, reusable_from, unedited_evaluation

log = logging.getLogger(__name__)


class InputError(ValueError):
    """Bad input found before any work started (nothing was written)."""


# Skipped records named one by one on the console; the report and summary.json list them all.
SKIPPED_SHOWN = 10


class StageClock:
    """Wall seconds of each stage of a run, for the report: where a big job's time goes."""

    def __init__(self):
        self.seconds: dict[str, float] = {}
        self._last = time.perf_counter()

    def lap(self, stage: str) -> None:
        now = time.perf_counter()
        self.seconds[stage] = round(now - self._last, 1)
        self._last = now


def staging_dir(out_dir: Path) -> Path:
    return out_dir.with_name(out_dir.name + ".incomplete")


def init_ray(cfg: RunConfig, plan: bool = False) -> None:
    """Join the cluster this job was submitted to, or start a local Ray instance, which must have
    the GPUs the config asks for (`check_local_gpus`) unless the job only plans (`plan`)."""
    import ray
    from ray.data import DataContext

    if not ray.is_initialized():
        if os.environ.get("RAY_ADDRESS"):
            ray.init()  # inside `ray job submit`: resources belong to the cluster
        else:
            ray.init(num_cpus=cfg.ray.num_cpus)  # dashboard on: watch the job at http://127.0.0.1:8265
            # Without RAY_ADDRESS, ray.init also joins a cluster `ray start` began on this machine,
            # which an autoscaler may grow: only an instance this call started is checked. (Ray
            # keeps that fact in private state; if it moves, no check is made.)
            node = getattr(ray._private.worker, "_global_node", None)
            if not plan and getattr(node, "ray_init_cluster", False):
                try:
                    check_local_gpus(cfg, int(ray.cluster_resources().get("GPU", 0)))
                except ConfigError:
                    ray.shutdown()
                    raise
    context = DataContext.get_current()
    context.execution_options.preserve_order = True  # same seed, same examples, same order
    context.enable_progress_bars = False  # our own progress lines are easier to read in job logs
    # Ray Data would log two long lines (its start, its operator plan) each time a dataset runs,
    # some 30 in the quickstart, around our own; its "execution finished in N s" line stays.
    context.print_on_execution_start = False


def check_local_gpus(cfg: RunConfig, gpus: int) -> None:
    """Refuse, before any work, a config that asks a local Ray instance with `gpus` GPUs for more.

    Nothing adds GPUs to a machine, and Ray would wait for them for ever: Ray Train retries
    starting its worker group every minute, after the requests were read, the prefixes sampled and
    the unedited model scored. (A cluster's autoscaler may still add GPU nodes: a submitted job is
    not checked.)"""
    where = f"the local Ray instance this job started has {gpus} GPU(s)" + (
        "" if gpus else "; run without GPUs (train.use_gpu=false eval.gpus_per_actor=0), or submit the job to a "
                        "GPU cluster with `ray job submit` (README, 'On a Ray cluster')")
    if cfg.train.use_gpu and cfg.train.num_workers > gpus:
        raise ConfigError("train.num_workers" if gpus else "train.use_gpu",
                          f"{cfg.train.num_workers} training worker(s) with a GPU each, but {where}")
    if cfg.eval.gpus_per_actor > gpus:
        raise ConfigError("eval.gpus_per_actor", f"{cfg.eval.gpus_per_actor:g} GPU(s) per model replica, but {where}")


def _same_config(path: Path, cfg: RunConfig) -> bool:
    """Whether an interrupted run's saved config is this one (then its checkpoints are ours)."""
    try:
        return path.is_file() and load_config(path) == cfg
    except ConfigError:
        return False


@dataclass
class Inputs:
    """A run's validated inputs: the edit requests (on the cluster), their metrics, the fact pool,
    the model."""

    source: RequestSource
    kind: str
    pool: list[Fact]
    model_path: Path


@dataclass
class Augmentation:
    """What augmenting the requests needs: prefixes, usable pool facts, prompts never to train on,
    the sentence embedder for similar facts."""

    prefixes: list[str]
    pool: list[Fact]
    forbidden_prompts: DigestSet
    embedder_path: str | None


def warn_skipped(skipped: list) -> None:
    """Name the first skipped records on the console and count the rest: a big file with thousands
    of bad records must not bury the run's progress (the report and summary.json list them all)."""
    for error in skipped[:SKIPPED_SHOWN]:
        log.warning("skipped invalid request: %s", error)
    if len(skipped) > SKIPPED_SHOWN:
        log.warning("... and %d more skipped invalid requests (%d in all; the run's report.md and summary.json "
                    "list them)", len(skipped) - SKIPPED_SHOWN, len(skipped))


def load_inputs(cfg: RunConfig) -> Inputs:
    """Read and validate everything a run reads, before anything is written or trained.

    The requests are read and validated on the cluster (`request_dataset.open_requests`).
    """
    init_ray(cfg)
    source = open_requests(cfg.data)
    warn_skipped(source.skipped)
    if not source.n_requests:
        raise InputError(f"{cfg.data.requests}: no valid edit requests")
    kind = metric_kind(source.format, cfg.eval.kind, source.missing_true)
    pool = load_fact_pool(cfg.data.fact_pool, cfg.data.fact_pool_format, cfg.data.fact_pool_limit) if cfg.data.fact_pool else []
    if cfg.augment.n_unedited and not pool:
        raise InputError("augment.n_random/n_similar/n_same_answer > 0 need data.fact_pool with at least one fact")
    model_path = resolve_model_path(cfg.model.path, cfg.model.cache_dir)
    log.info("%d edit requests (%s, metrics: %s), fact pool %d", source.n_requests, source.format, kind, len(pool))
    return Inputs(source, kind, pool, model_path)


def unedited_identity(cfg: RunConfig, inputs: Inputs) -> dict:
    """What the unedited model's evaluation of this run is computed from (`unedited.py`)."""
    return evaluation_identity(cfg, inputs.model_path, inputs.kind, inputs.source.dataset, inputs.source.n_requests)


def training_inputs_digest(identity: dict, augmentation: Augmentation) -> str:
    """A digest of the data a run trains on besides its config: the requests (from the unedited
    evaluation's `identity`) and the usable pool facts. It goes into the Ray Train run name
    (`checkpoint.run_name`), so a job re-submitted after its requests or pool file changed does
    not resume checkpoints trained on the old ones. Files' times are left out (the model's
    digest has them): a job re-submitted after its head node was replaced reads a fresh copy of
    the same model and must still find its checkpoints."""
    total = hashlib.sha256(identity["requests_digest"].encode())
    for fact in augmentation.pool:
        total.update(f"{fact.prompt}\t{fact.target}\t{fact.subject}\n".encode())
    return total.hexdigest()


def score_unedited(cfg: RunConfig, directory: Path) -> Path:
    """Score the unedited model on `cfg`'s requests into `directory`, or keep the matching scores
    an earlier call saved there: what a sweep's trials then share through `eval.unedited_from`."""
    inputs = load_inputs(cfg)
    unedited_evaluation(cfg, inputs.model_path, inputs.source.dataset, inputs.kind, directory,
                        unedited_identity(cfg, inputs))
    return directory


def check_usable_pool(cfg: RunConfig, inputs: Inputs, usable: list[Fact]) -> None:
    """Say how much of the fact pool the run may train on, and refuse a run whose unedited facts
    would all be gone: a pool made of the edits' own facts keeps nothing once the facts about
    edited subjects and the evaluation prompts are dropped."""
    if not inputs.pool:
        return
    log.info("fact pool: %d of %d facts usable (the others are edit or evaluation prompts, or about an "
             "edited subject)", len(usable), len(inputs.pool))
    if not cfg.augment.n_unedited:
        return
    if not usable:
        raise InputError(f"{cfg.data.fact_pool}: none of its {len(inputs.pool)} facts is usable as an unedited "
                         "fact (each is an edit or evaluation prompt, or about an edited subject); use a pool "
                         "that the edits do not cover, or set augment.n_random/n_similar/n_same_answer=0")
    n_edits = inputs.source.n_requests
    if len(usable) < n_edits:
        log.warning("%d edits draw their unedited facts from only %d usable pool facts: each pool fact is "
                    "trained about %.0f times per epoch, each edit once; a bigger data.fact_pool spreads locality "
                    "over more facts", n_edits, len(usable), n_edits * min(cfg.augment.n_unedited, len(usable)) / len(usable))


def _check_model_and_generate_prefixes(model_path: str, cfg: RunConfig) -> tuple[list[str], Exception | None]:
    """(prefixes, None), or ([], the error): `train.layers` past the model's last layer or LoRA
    target modules it lacks (a ConfigError), or a model that cannot be trained on packed rows (a
    RuntimeError). A Ray task; the error is returned, not raised, so that the driver raises it as
    it is."""
    from ftedit.augment import generate_prefixes
    from ftedit.logs import show_progress
    from ftedit.loss import check_packing
    from ftedit.model import check_layers, check_lora_targets, decoder_layers, pad_token_id
    from ftedit.placement import assigned_devices, load_replica

    show_progress()  # the prefix line reaches the driver's console: a dry run's CPU reads all the weights 50 times
    if not assigned_devices():  # no GPU configured, or a dry run
        import torch

        # Ray sets OMP_NUM_THREADS to the task's CPUs (often 1); it runs alone, so use the node's
        # cores, as a driver would: the same prefixes as generated there.
        torch.set_num_threads(cfg.eval.torch_threads or os.cpu_count() or 1)
    model, tokenizer = load_replica(model_path, cfg.model.dtype)
    try:
        layers = decoder_layers(model)[1]
        check_layers(cfg.train.layers, len(layers))
        if cfg.train.tuning == "lora":
            check_lora_targets(cfg.lora, model)
        check_packing(model, pad_token_id(tokenizer))
    except (ConfigError, RuntimeError) as exc:
        return [], exc
    return (generate_prefixes(model, tokenizer, cfg.augment, cfg.seed) if cfg.augment.n_paraphrase else []), None


def check_model_and_generate_prefixes(cfg: RunConfig, model_path: Path, use_gpus: bool = True) -> list[str]:
    """Fail before any work if `train.layers` or `lora.target_modules` name what the model lacks or
    the model would mix packed rows (`loss.check_packing`), and sample the pseudo-paraphrase
    prefixes with it.

    Both run on a Ray worker with a scoring actor's resources (`eval.gpus_per_actor`), not in the
    driver: the driver, on a CPU head node, never loads the model, whose weights (140 GB for a
    70B model in bf16) need not fit its memory. `use_gpus=False` (a dry run, which plans a job
    before anyone pays for GPU nodes, and may run where there are none) asks for one CPU only.
    """
    import ray

    resources = {"num_cpus": cfg.eval.cpus_per_actor, "num_gpus": cfg.eval.gpus_per_actor or None} if use_gpus else {
        "num_cpus": min(1.0, cfg.eval.cpus_per_actor)}
    # An explicit strategy: inside a sweep trial the task would otherwise go into the trial's
    # placement group, which holds a sliver of CPU for the trial's driver and nothing more.
    task = ray.remote(_check_model_and_generate_prefixes).options(**resources, scheduling_strategy="DEFAULT")
    prefixes, error = ray.get(task.remote(str(model_path), cfg))
    if error is not None:
        raise error
    return prefixes


def prepare_augmentation(cfg: RunConfig, inputs: Inputs, use_gpus: bool = True) -> Augmentation:
    """Exclude evaluation prompts and edited subjects from the pool (on the cluster), check the
    model and generate the prefixes with it (on a Ray worker; with GPUs unless `use_gpus` is False)."""
    pool, forbidden = pool_exclusions(inputs.source, inputs.pool)
    check_usable_pool(cfg, inputs, pool)
    prefixes = check_model_and_generate_prefixes(cfg, inputs.model_path, use_gpus)
    embedder = None
    if cfg.augment.n_similar:
        embedder = str(resolve_model_path(cfg.augment.embedding_model, cfg.model.cache_dir))
    return Augmentation(prefixes, pool, forbidden, embedder)


def training_dataset(cfg: RunConfig, inputs: Inputs, augmentation: Augmentation):
    """(the tokenized training examples as a Ray Dataset, their counts by kind and tokens)."""
    from ftedit.dataset import build_training_dataset, example_counts

    init_ray(cfg)
    dataset = build_training_dataset(
        cfg, inputs.source.dataset, augmentation.prefixes, augmentation.pool,
        augmentation.forbidden_prompts, str(inputs.model_path), augmentation.embedder_path,
    )
    counts = example_counts(dataset)
    log.info("training examples: %s", counts)
    held_back = inputs.source.n_requests - counts["by_kind"].get("edit", 0)
    if cfg.augment.keep_edit_prompt and held_back > 0:
        # Evaluation prompts are never trained on, or the scores would measure memorised probes:
        # CounterFact has edits whose prompt is another edit's neighbourhood prompt, or its own paraphrase.
        log.warning("%d edit prompt(s) are also evaluation prompts of this run (another edit's neighbourhood or "
                    "paraphrase prompt, or the edit's own): they are trained only behind their pseudo-paraphrase "
                    "prefixes%s", held_back, "" if cfg.augment.n_paraphrase else ", and this run has none")
    if cfg.augment.continuation_tokens:  # show what the edits are anchored with (a few rows)
        from ray.data.expressions import col

        shown = dataset.filter(expr=col("kind") == "edit").select_columns(["prompt", "target", "continuation"])
        for row in shown.take_batch(3, batch_format="pandas").itertuples():
            log.info("continuation anchor: %r + %r -> %r", row.prompt, row.target, row.continuation)
    return dataset, counts


def plan_run(cfg: RunConfig) -> dict:
    """A dry run: validate, augment and tokenize on Ray Data, count; no training, nothing written
    (but a file written to `train.storage_path` and removed, to check it takes checkpoints).

    What a big job will train on (examples by kind, tokens, optimizer steps) before paying for it.
    """
    from ftedit.train import optimizer_steps

    started = time.perf_counter()
    # What the job would refuse at its start is refused here too: a plan that passed them would lie.
    check_storage(cfg.train.storage_path)
    init_ray(cfg, plan=True)  # GPUs not needed: a plan is made before paying for GPU nodes
    inputs = load_inputs(cfg)
    reuse = None
    if cfg.eval.unedited_from:
        reuse = reusable_from(cfg, unedited_identity(cfg, inputs))
    augmentation = prepare_augmentation(cfg, inputs, use_gpus=False)  # no GPU node started for a plan
    _, counts = training_dataset(cfg, inputs, augmentation)
    steps = optimizer_steps(counts["examples"], cfg.train)
    return {
        "n_edits": inputs.source.n_requests,
        "skipped": [str(e) for e in inputs.source.skipped],
        "metric_kind": inputs.kind,
        "unedited_from": reuse and str(reuse),
        "fact_pool": len(augmentation.pool),
        "prefixes": len(augmentation.prefixes),
        "examples": counts,
        "epochs": cfg.train.epochs,
        "optimizer_steps": steps * cfg.train.epochs,
        "train_tokens": counts["tokens"] * cfg.train.epochs,
        "wall_seconds": time.perf_counter() - started,
    }


def run_mass_edit(cfg: RunConfig, train_callbacks: list | tuple = ()) -> dict:
    """Edit every request of `cfg.data.requests` into the model; returns the summary.

    `train_callbacks` go to Ray Train (a sweep trial passes Tune's report callback).
    """
    started = time.perf_counter()
    clock = StageClock()
    out_dir = Path(cfg.output.dir)

    # 1. Inputs, all validated before anything is written or trained. A taken run directory is
    # refused first, before Ray starts: that mistake should cost the user seconds, not a minute.
    if out_dir.exists() and not cfg.output.overwrite:
        raise InputError(f"output.dir {out_dir} exists; pick another or set output.overwrite=true")
    check_storage(cfg.train.storage_path)
    inputs = load_inputs(cfg)
    source, kind = inputs.source, inputs.kind
    identity = unedited_identity(cfg, inputs)
    reuse = reusable_from(cfg, identity)  # eval.unedited_from, checked against this run's model and requests
    # 2. Augmentation inputs: excluded pool facts and prompts, model-generated prefixes (a pool
    # with no usable fact, or a model that would mix packed rows, is refused here, before the run
    # directory exists).
    augmentation = prepare_augmentation(cfg, inputs)
    clock.lap("read requests, prefixes")

    staging = staging_dir(out_dir)
    if staging.exists() and not _same_config(staging / "config.yaml", cfg):
        shutil.rmtree(staging)  # left by an interrupted run of another config
    elif staging.exists():
        log.info("resuming the interrupted run in %s (same config): training restarts from its latest checkpoint", staging)
    staging.mkdir(parents=True, exist_ok=True)
    dump_config(cfg, staging / "config.yaml")
    write_json(staging / "prefixes.json", augmentation.prefixes)

    # 3. Similar facts, augment, tokenize: on Ray Data.
    dataset, counts = training_dataset(cfg, inputs, augmentation)
    clock.lap("training examples")

    # 4. The unedited model, scored by the same code (on Ray Data model actors) as the edited one,
    # and saved in the run directory, where a resumed run finds it (or taken from eval.unedited_from).
    before, unedited_origin = unedited_evaluation(cfg, inputs.model_path, source.dataset, kind, staging / "unedited",
                                                  identity, reuse)
    clock.lap("unedited evaluation")

    # 5. Train on Ray Train + DeepSpeed.
    from ftedit.train import fit

    checkpoint, train_metrics = fit(
        cfg, inputs.model_path, dataset, counts["examples"], staging / "ray",
        probe=source.head(cfg.eval.probe_edits), metric_kind=kind, callbacks=train_callbacks,
        inputs_digest=training_inputs_digest(identity, augmentation),
    )
    trained_dir = staging / ("adapter" if cfg.train.tuning == "lora" else "trained_layers")
    shutil.rmtree(trained_dir, ignore_errors=True)  # from an interrupted attempt
    copy_trained_weights(checkpoint, trained_dir)  # the run's own copy, on the driver's node
    clock.lap("training")

    # 6. The edited model: merged and saved here, evaluated on the scoring actors, which read
    # the trained weights from the checkpoint's storage (they may be on other nodes).
    if cfg.output.save_merged:  # tensor by tensor: the driver never holds the whole model
        save_merged(inputs.model_path, trained_dir, staging / "model", cfg.model.dtype)
        clock.lap("merged model saved")
    log.info("evaluating the edited model")
    reference = before.rename_columns({"scores": "before", "locality": "reference"})
    after = evaluate_on_cluster(cfg, inputs.model_path, reference, kind, trained=checkpoint)
    before_summary, after_summary = write_per_edit(staging / "per_edit.jsonl", scored_rows(after), kind)
    # The run now has its own copy of the trained weights: its checkpoints (in the bucket, on the
    # shared mount or, by default, in staging/ray) are deleted; nothing is left to resume.
    remove_run_checkpoints(checkpoint)
    shutil.rmtree(staging / "ray", ignore_errors=True)
    clock.lap("edited evaluation")

    # 7. Report, then make the run directory visible under its real name.
    summary = {
        "n_edits": source.n_requests,
        "wall_seconds": time.perf_counter() - started,
        "before": before_summary,
        "unedited_scores": unedited_origin,
        "after": after_summary,
        "metric_kind": kind,
        "data_format": source.format,
        "model": cfg.model.path,
        "requests": cfg.data.requests,
        "examples": counts,
        "train": train_metrics,
        "stage_seconds": clock.seconds,
        "skipped": [str(e) for e in source.skipped],
    }
    (staging / "report.md").write_text(render_markdown(summary))
    write_json(staging / "summary.json", summary)
    if out_dir.exists():
        shutil.rmtree(out_dir)  # output.overwrite=true, checked above
    staging.rename(out_dir)
    log.info("done in %.0f s: %s\n%s", summary["wall_seconds"], out_dir, render_markdown(summary))
    return summary

