"""Typed run configuration: dataclasses loaded from YAML plus `section.key=value` overrides.

Every key is declared here with its type and meaning. Unknown keys, wrong types and impossible
values are rejected with the dotted path of the offending key, before any work starts. The
resolved config is written into the run directory, and re-running from that file reproduces the
run (every random choice is derived from `seed`).
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import yaml


class ConfigError(ValueError):
    """A bad config value; `key` is the dotted path (e.g. `train.lr`)."""

    def __init__(self, key: str, message: str):
        super().__init__(f"{key}: {message}")
        self.key = key
        self.message = message

    def __reduce__(self):
        # Exceptions pickle via self.args (the formatted text alone), which this __init__ cannot
        # take: raised in a Ray worker or Tune trial, the error would arrive as a TypeError.
        return (type(self), (self.key, self.message))


def _require(condition: bool, key: str, message: str) -> None:
    if not condition:
        raise ConfigError(key, message)


@dataclass
class ModelConfig:
    path: str = "smollm2-135m"
    """A local Hugging Face checkpoint directory, or `smollm2-135m` for the bundled model."""
    cache_dir: str = "~/.cache/ftedit"
    """Where bundled assets (the SmolLM2 checkpoint, the MiniLM embedder) are unpacked once."""
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    """Weights dtype for training and evaluation (bf16/fp16 are for GPUs)."""


@dataclass
class DataConfig:
    requests: str = "data/sample_edits.jsonl"
    """The edit requests: a file or a glob (`edits/part-*.jsonl`) of CounterFact, zsRE or MQuAKE
    JSON or JSONL requests, read and validated as a Ray Dataset (records numbered across files)."""
    format: Literal["auto", "counterfact", "zsre", "mquake", "jsonl"] = "auto"
    limit: int | None = None
    """Edit only N requests of the file (the first N after `offset`)."""
    offset: int = 0
    """Skip the first N requests of the file (e.g. a sweep tunes on records the run does not edit)."""
    fact_pool: str | None = "data/sample_facts.jsonl"
    """Unedited facts (prompt -> true answer) used as locality augmentation; any request format."""
    fact_pool_format: Literal["auto", "counterfact", "zsre", "mquake", "jsonl"] = "auto"
    fact_pool_limit: int | None = None
    zsre_target: Literal["alt", "answers"] = "alt"
    """zsRE edit target: `alt` (EasyEdit and the FT-editing paper) or `answers` (answers[0], MEMIT)."""
    on_invalid: Literal["error", "skip"] = "error"
    """`error`: stop on the first bad record; `skip`: drop bad records and list them in the report."""
    mquake_neighbours: int = 10
    """MQuAKE: neighbourhood prompts per rewrite, for locality (CounterFact's NS): cloze statements
    of other subjects' facts with the rewrite's relation and old answer that no case of the file
    edits (`ftedit/mquake_neighbours.py`). 0: none, and the edit score is the harmonic mean of
    efficacy and generalization alone (as before 2026-12-06). Other formats ignore it."""

    def __post_init__(self):
        _require(bool(self.requests), "requests", "must name a requests file")
        _require(self.offset >= 0, "offset", f"must be >= 0, got {self.offset}")
        _require(self.mquake_neighbours >= 0, "mquake_neighbours", f"must be >= 0, got {self.mquake_neighbours}")
        for key in ("limit", "fact_pool_limit"):
            value = getattr(self, key)
            _require(value is None or value > 0, key, f"must be a positive count, got {value}")


@dataclass
class AugmentConfig:
    keep_edit_prompt: bool = True
    """Train on the edit prompt itself (besides its prefixed copies)."""
    n_paraphrase: int = 10
    """Pseudo-paraphrases per edit: model-generated random prefixes prepended to the edit prompt."""
    prefix_bank: int = 50
    """How many prefixes are generated once per run; each edit draws `n_paraphrase` of them."""
    prefix_tokens: int = 10
    """Maximum generated tokens per prefix."""
    prefix_starts: list[str] = field(default_factory=lambda: ["The", "Therefore", "Because", "I", "You"])
    """First words the prefixes are sampled from (as in ROME's context templates)."""
    n_random: int = 10
    """Random unedited facts from the fact pool per edit, trained to keep their answers."""
    n_similar: int = 0
    """Unedited facts per edit nearest to the edit prompt by sentence embedding."""
    n_same_answer: int = 0
    """Unedited facts per edit whose answer is the edit's old answer (`target_true`), drawn at
    random among those in the pool: the facts an edit most easily drags along (moving one Paris
    landmark to Rome tends to move the others). Edits without a `target_true` get none."""
    locality_target: Literal["gold", "model"] = "gold"
    """Answer trained for locality facts: the pool's gold answer or the unedited model's greedy one
    (generated once per distinct fact on the scoring actors, however many edits draw it)."""
    locality_target_tokens: int = 4
    """With locality_target=model: tokens greedily decoded as the model's own answer."""
    continuation_tokens: int = 0
    """Continuation anchors (`ftedit.continuation`): the edit prompt and its prefixed copies go on
    past the new target with up to this many tokens the unedited model writes after it, trained on
    too, so the edited model carries on after the new fact instead of repeating it. 0: off."""
    continuation_on: Literal["all", "edit"] = "all"
    """Which of an edit's examples carry its continuation anchor: `all` (the edit prompt and its
    prefixed copies) or `edit` (the edit prompt alone; the prefixed copies keep the bare target)."""
    embedding_model: str = "all-minilm-l6-v2"
    """Sentence embedder for `n_similar`: `all-minilm-l6-v2` (bundled) or a local BERT-style path."""

    @property
    def n_unedited(self) -> int:
        """Locality facts drawn per edit, of all kinds (random, similar, same-answer)."""
        return self.n_random + self.n_similar + self.n_same_answer

    def __post_init__(self):
        for key in ("n_paraphrase", "n_random", "n_similar", "n_same_answer", "continuation_tokens"):
            _require(getattr(self, key) >= 0, key, f"must be >= 0, got {getattr(self, key)}")
        for key in ("prefix_tokens", "locality_target_tokens"):
            _require(getattr(self, key) > 0, key, f"must be > 0, got {getattr(self, key)}")
        _require(
            self.prefix_bank >= self.n_paraphrase,
            "prefix_bank",
            f"must be >= n_paraphrase ({self.n_paraphrase}), got {self.prefix_bank}",
        )
        _require(bool(self.prefix_starts), "prefix_starts", "needs at least one start word")


@dataclass
class LossConfig:
    mode: Literal["conditional", "full"] = "conditional"
    """`conditional`: loss on the target tokens given the prompt (the method); `full`: every token."""
    anchor_weight: float | None = None
    """How continuation anchors (augment.continuation_tokens) enter the loss. null: their tokens
    are averaged together with the target tokens, so an anchored example's target gets a smaller
    share of the gradient. A number w: the loss is the mean NLL of the other labelled tokens plus
    w times the mean NLL of the anchor tokens, so the target's term is what it is without anchors.
    No effect without anchors. Measured on CounterFact: 0.05-1 all restore fluency (BENCHMARKS.md)."""

    def __post_init__(self):
        if self.anchor_weight is not None:
            _require(self.anchor_weight >= 0, "anchor_weight", f"must be >= 0 or null, got {self.anchor_weight}")


@dataclass
class LoraConfig:
    rank: int = 32
    alpha: float = 64.0
    dropout: float = 0.0
    target_modules: str | list[str] = "all-linear"
    """peft target modules: `all-linear` or a list of module name suffixes (e.g. [q_proj, v_proj])."""

    def __post_init__(self):
        _require(self.rank > 0, "rank", f"must be > 0, got {self.rank}")
        _require(self.alpha > 0, "alpha", f"must be > 0, got {self.alpha}")
        _require(0 <= self.dropout < 1, "dropout", f"must be in [0, 1), got {self.dropout}")


@dataclass
class TrainConfig:
    tuning: Literal["lora", "full"] = "lora"
    """`lora`: train a peft LoRA adapter; `full`: train all weights of the chosen layers."""
    layers: list[int] | None = None
    """Transformer layer indices to train (LoRA or full); null = all layers."""
    num_workers: int = 1
    use_gpu: bool = False
    cpus_per_worker: float = 1.0
    """Ray CPU resource per worker. Leave CPUs free for Ray Data or the feed deadlocks."""
    torch_threads: int = 0
    """Intra-op threads per worker; 0 = this node's cores divided by num_workers."""
    batch_size: int = 32
    """Global batch (examples per optimizer step, summed over workers)."""
    micro_batch_size: int = 32
    """Examples per forward pass per worker; accumulation = batch_size / (micro * workers)."""
    pack_length: int = 64
    """Tokens per packed row: a micro-batch's examples are laid end to end in rows of this length
    instead of padded (attention stays within each example). Short rows keep attention cheap on
    CPU; on GPUs a few thousand suits. Rows grow to fit an example longer than this."""
    lr: float = 1e-3
    weight_decay: float = 0.0
    schedule: Literal["constant", "linear", "cosine"] = "constant"
    warmup_ratio: float = 0.0
    max_grad_norm: float = 1.0
    epochs: int = 4
    zero_stage: int = 2
    """DeepSpeed ZeRO stage 0-3. Stages 1-3 partition optimizer state, gradients and weights over the
    workers; one worker has nothing to partition, and stage 0 there trains the same without ZeRO-2's
    gradient copies (BENCHMARKS.md, speed)."""
    offload_optimizer: bool = False
    offload_params: bool = False
    """ZeRO-3 only: keep parameters in CPU memory."""
    precision: Literal["fp32", "bf16-mixed", "bf16", "fp16", "auto"] = "fp32"
    """`fp32`; `bf16-mixed`: fp32 weights and optimizer, matmuls in bf16 under torch.autocast
    (DeepSpeed's `torch_autocast`; with several workers it reduces the linear layers' gradients
    in bf16), fast on GPUs and on CPUs with AMX (the CounterFact benchmark job trains about 1.3x
    faster than in fp32 on a 2-core AMX VM); `bf16`/`fp16`: DeepSpeed's half-precision engine,
    weights in 16 bits with fp32 master copies (GPUs); `auto`: bf16-mixed where the worker's
    device computes bf16 natively (AVX512-BF16 or AMX CPUs, Ampere+ GPUs), fp32 elsewhere, where
    bf16 runs up to 100x slower (`ftedit/precision.py`). An explicit bf16 precision on such a
    device stops the run before training. The run's summary records what the workers used."""
    attention: Literal["sdpa", "eager", "flash_attention_2", "flash_attention_3", "flex_attention"] | None = None
    """Attention kernel the training workers build the model with (transformers'
    `attn_implementation`); null = transformers' default (SDPA). On CPU under bf16-mixed, torch's
    SDPA backward is slow for short packed rows and `eager` runs the CounterFact benchmark's
    step 1.1-1.2x faster (BENCHMARKS.md); in fp32 the two are level. Evaluation keeps the
    default, whose fp32 forward is the faster one there. Flash kernels need GPUs (and the
    flash-attn package)."""
    log_every: int = 10
    """Print loss, tokens/s and progress every N optimizer steps."""
    checkpoint_every_epochs: int = 1
    """Save a resumable checkpoint (trainable weights, optimizer, progress) every N epochs; 0 = off."""
    checkpoint_every_steps: int = 0
    """Also save one every N optimizer steps within an epoch (long epochs of big jobs); 0 = off."""
    keep_checkpoints: int = 2
    """Resumable checkpoints kept (the oldest are deleted); the final weights are always kept."""
    max_failures: int = 0
    """Worker-group restarts after a worker dies (each resumes from the latest checkpoint); -1 = no limit."""
    controller_poll_s: float = 0.25
    """Seconds between Ray Train's polls of the workers (Ray's `RAY_TRAIN_HEALTH_CHECK_INTERVAL_S`,
    2 by default; this setting replaces it for the run). A poll also collects the workers'
    `ray.train.report`s, and a worker holds one report at a time, so at Ray's 2 s every epoch's
    report waits up to 2 s: the smoke run's 30 steps took 20 s instead of 8 (BENCHMARKS.md, "Ray
    Train's poll interval"). A poll is one small call per worker."""
    storage_path: str | None = None
    """Where Ray Train keeps checkpoints, and where the edited model's scoring actors read the
    trained weights: null = inside the run's staging directory (one machine); on a cluster,
    storage every node reaches (`s3://bucket/prefix` or a shared mount)."""
    worker_env: dict[str, str | int | float] = field(default_factory=dict)
    """Environment variables for the training worker processes alone (Ray Train's worker runtime
    env; every other Ray process keeps its own), e.g. NCCL settings on GPU nodes. BENCHMARKS.md
    tried `GOMP_SPINCOUNT` and `RAY_worker_niceness: 0` on CPU workers: neither helped there."""

    def __post_init__(self):
        _require(self.num_workers > 0, "num_workers", f"must be > 0, got {self.num_workers}")
        _require(self.cpus_per_worker > 0, "cpus_per_worker", f"must be > 0, got {self.cpus_per_worker}")
        _require(self.torch_threads >= 0, "torch_threads", f"must be >= 0, got {self.torch_threads}")
        _require(self.lr > 0, "lr", f"must be > 0, got {self.lr}")
        _require(self.weight_decay >= 0, "weight_decay", f"must be >= 0, got {self.weight_decay}")
        _require(0 <= self.warmup_ratio < 1, "warmup_ratio", f"must be in [0, 1), got {self.warmup_ratio}")
        _require(self.max_grad_norm >= 0, "max_grad_norm", f"must be >= 0, got {self.max_grad_norm}")
        _require(self.epochs > 0, "epochs", f"must be > 0, got {self.epochs}")
        _require(self.zero_stage in (0, 1, 2, 3), "zero_stage", f"must be 0, 1, 2 or 3, got {self.zero_stage}")
        _require(not self.offload_params or self.zero_stage == 3, "offload_params", "needs zero_stage 3")
        _require(self.log_every > 0, "log_every", f"must be > 0, got {self.log_every}")
        for key in ("checkpoint_every_epochs", "checkpoint_every_steps"):
            _require(getattr(self, key) >= 0, key, f"must be >= 0, got {getattr(self, key)}")
        _require(self.keep_checkpoints > 0, "keep_checkpoints", f"must be > 0, got {self.keep_checkpoints}")
        _require(self.max_failures >= -1, "max_failures", f"must be >= -1, got {self.max_failures}")
        _require(self.controller_poll_s > 0, "controller_poll_s", f"must be > 0, got {self.controller_poll_s}")
        _require(self.pack_length > 0, "pack_length", f"must be > 0, got {self.pack_length}")
        _require(self.micro_batch_size > 0, "micro_batch_size", f"must be > 0, got {self.micro_batch_size}")
        per_step = self.micro_batch_size * self.num_workers
        _require(
            self.batch_size > 0 and self.batch_size % per_step == 0,
            "batch_size",
            f"must be a positive multiple of micro_batch_size * num_workers ({per_step}), got {self.batch_size}",
        )
        if self.layers is not None:
            _require(all(i >= 0 for i in self.layers), "layers", f"must be >= 0, got {self.layers}")
        if self.storage_path is not None:  # a relative path means another place on every node
            _require("://" in self.storage_path or self.storage_path.startswith("/"), "storage_path",
                     f"must be an absolute path or a URI such as s3://bucket/prefix, got {self.storage_path!r}")

    @property
    def grad_accum_steps(self) -> int:
        return self.batch_size // (self.micro_batch_size * self.num_workers)


@dataclass
class EvalConfig:
    kind: Literal["auto", "counterfact", "zsre"] = "auto"
    """Metric family: `counterfact` (probability comparisons, ES/PS/NS) or `zsre` (token accuracy);
    auto = zsre for zsRE data, else counterfact when every request has a true answer."""
    batch_size: int = 64
    """Probes (prompt, target) scored per forward pass. The unedited model is always scored too:
    it is the report's `before` column and the reference of EasyEdit locality."""
    pack_length: int = 64
    """Tokens per packed row when scoring (see train.pack_length)."""
    fluency_tokens: int = 0
    """Greedy-generate this many tokens per generation prompt and report their n-gram entropy
    (ROME/MEMIT fluency), before and after; 0 = off (generation is the slowest part of scoring)."""
    fluency_prompts: int = 2
    """Generation prompts per edit (the record's own, or else its edit prompt)."""
    probe_edits: int = 0
    """After every epoch, score the first N edits with the model in training and report it (the
    progress log, Ray Train metrics `probe_*`, what a sweep's early stopping sees); 0 = off."""
    actors: int = 1
    """Model replicas scoring the requests in parallel (a Ray Data actor pool); they also generate
    continuation anchors and model locality targets. Meant for GPU clusters (`gpus_per_actor: 1`
    or more): on a CPU-only machine the replicas share its cores."""
    cpus_per_actor: float = 1.0
    gpus_per_actor: float = 0.0
    """GPUs per scoring actor: 1 on GPU clusters; 2, 4 or 8 for a model too big for one GPU (its
    layers are spread over them, placement.py); a fraction shares a GPU between small replicas;
    0 scores on CPU."""
    requests_per_batch: int = 256
    """Most edit requests an actor evaluates per Ray Data batch (fewer when that spreads a small
    run over all `actors`)."""
    torch_threads: int = 0
    """Intra-op threads per CPU scoring actor; 0 = this node's cores divided by `actors`."""
    unedited_from: str | None = None
    """Take the unedited model's scores from an earlier run (its directory, or its `unedited/`)
    instead of scoring it again: same model (its path and its files' sizes and times), dtype,
    requests, metric family and fluency settings, checked before anything runs
    (`ftedit/unedited.py`). Runs that differ only in how they train share one; a sweep's trials
    do so by themselves."""

    def __post_init__(self):
        _require(self.batch_size > 0, "batch_size", f"must be > 0, got {self.batch_size}")
        _require(self.fluency_tokens >= 0, "fluency_tokens", f"must be >= 0, got {self.fluency_tokens}")
        _require(self.fluency_prompts > 0, "fluency_prompts", f"must be > 0, got {self.fluency_prompts}")
        _require(self.probe_edits >= 0, "probe_edits", f"must be >= 0, got {self.probe_edits}")
        _require(self.actors > 0, "actors", f"must be > 0, got {self.actors}")
        _require(self.cpus_per_actor > 0, "cpus_per_actor", f"must be > 0, got {self.cpus_per_actor}")
        _require(self.gpus_per_actor >= 0, "gpus_per_actor", f"must be >= 0, got {self.gpus_per_actor}")
        _require(self.gpus_per_actor <= 1 or self.gpus_per_actor == int(self.gpus_per_actor), "gpus_per_actor",
                 f"above 1 must be a whole number of GPUs (Ray's rule), got {self.gpus_per_actor}")
        _require(self.requests_per_batch > 0, "requests_per_batch", f"must be > 0, got {self.requests_per_batch}")
        _require(self.torch_threads >= 0, "torch_threads", f"must be >= 0, got {self.torch_threads}")
        _require(self.pack_length > 0, "pack_length", f"must be > 0, got {self.pack_length}")


@dataclass
class OutputConfig:
    dir: str = "runs/quickstart"
    """The run directory. Built under `<dir>.incomplete` and renamed when everything is written."""
    overwrite: bool = False
    """Replace an existing run directory instead of refusing to start."""
    save_merged: bool = True
    """Save the merged edited model (loadable with AutoModelForCausalLM.from_pretrained)."""


@dataclass
class RayConfig:
    num_cpus: int | None = None
    """Logical CPUs of a local Ray instance (ignored when joining a cluster); null = detected."""

    def __post_init__(self):
        _require(self.num_cpus is None or self.num_cpus > 0, "num_cpus", f"must be > 0, got {self.num_cpus}")


@dataclass
class RunConfig:
    seed: int = 0
    """Seeds prefix sampling, fact selection, shuffling, LoRA init: the same seed, the same run."""
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    output: OutputConfig = field(default_factory=OutputConfig)
    ray: RayConfig = field(default_factory=RayConfig)


# ---------------------------------------------------------------------------------------------
# Loading: YAML -> dict -> (overrides) -> typed dataclasses, with dotted-path errors.


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> RunConfig:
    """Read a YAML config (or the defaults when `path` is None) and apply `a.b=value` overrides."""
    data: dict = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError("--config", f"no such file: {path}")
        with path.open() as f:
            loaded = yaml.safe_load(f)
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError("--config", f"{path} must hold a mapping of sections, got {type(loaded).__name__}")
        data = loaded or {}
    for item in overrides:
        apply_override(data, item)
    return from_dict(RunConfig, data)


def apply_override(data: dict, item: str) -> None:
    """Set `section.key=value` in a raw config dict; the value is parsed as YAML (`1e-3`, `[1, 2]`)."""
    key, sep, raw = item.partition("=")
    if not sep or not key:
        raise ConfigError(item, "an override must look like section.key=value")
    node = data
    parts = key.split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(key, f"'{part}' is not a section")
    node[parts[-1]] = yaml.safe_load(raw) if raw != "" else ""


def from_dict(cls, data, prefix: str = ""):
    """Build dataclass `cls` from a dict, checking keys and types; errors carry the dotted path."""
    if not isinstance(data, dict):
        raise ConfigError(prefix or "<root>", f"must be a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in data.items():
        dotted = f"{prefix}{key}"
        if key not in names:
            raise ConfigError(dotted, f"unknown key (known: {', '.join(sorted(names))})")
        kwargs[key] = _coerce(value, hints[key], dotted)
    try:
        return cls(**kwargs)
    except ConfigError as e:
        raise ConfigError(f"{prefix}{e.key}", e.message) from None


def _coerce(value, tp, key: str):
    """Check `value` against annotation `tp` (int is accepted for float); return the value."""
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value if value is not None else {}, key + ".")
    if tp is typing.Any:
        return value
    origin = typing.get_origin(tp)
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(key, f"expected a mapping, got {value!r}")
        key_type, value_type = typing.get_args(tp)
        return {_coerce(k, key_type, key): _coerce(v, value_type, f"{key}.{k}") for k, v in value.items()}
    if origin in (typing.Union, types.UnionType):
        errors = []
        for option in typing.get_args(tp):
            try:
                return _coerce(value, option, key)
            except ConfigError as e:
                errors.append(e.message)
        raise ConfigError(key, " or ".join(errors))
    if tp is type(None):
        if value is None:
            return None
        raise ConfigError(key, f"expected null, got {value!r}")
    if origin is Literal:
        allowed = typing.get_args(tp)
        if value not in allowed:
            raise ConfigError(key, f"must be one of {list(allowed)}, got {value!r}")
        return value
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(key, f"expected a list, got {value!r}")
        (item_type,) = typing.get_args(tp)
        return [_coerce(v, item_type, f"{key}[{i}]") for i, v in enumerate(value)]
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads `3e-4` (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(key, f"expected a number, got {value!r}")
    if tp in (int, str, bool):
        # bool is a subclass of int in Python: keep `epochs: true` from passing as 1.
        if isinstance(value, tp) and not (tp is int and isinstance(value, bool)):
            return value
        raise ConfigError(key, f"expected {tp.__name__}, got {value!r}")
    raise TypeError(f"config annotation not supported: {tp}")


def to_dict(cfg: RunConfig) -> dict:
    return dataclasses.asdict(cfg)


def dump_config(cfg: RunConfig, path: str | Path) -> None:
    """Write the resolved config; `load_config(path)` gives the same RunConfig back."""
    with Path(path).open("w") as f:
        yaml.safe_dump(to_dict(cfg), f, sort_keys=False)
