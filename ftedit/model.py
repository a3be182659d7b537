"""Causal LM loading, choosing what trains (LoRA or layers), and saving / merging the result.

No branch on model names: the decoder layers are found structurally (the ModuleList holding
`config.num_hidden_layers` blocks), which is what both LoRA's `layers_to_transform` and
full fine-tuning of chosen layers need.
"""

from __future__ import annotations

import contextlib
import json
import warnings
from pathlib import Path

import torch

from ftedit.config import ConfigError, LoraConfig, TrainConfig

TRAINED_WEIGHTS = "trained_weights.safetensors"  # full fine-tuning: the trained tensors only
TUNING_FILE = "tuning.json"


@contextlib.contextmanager
def _without_peft_deprecation_noise():
    """peft 0.21 reads transformers' deprecated `is_gradient_checkpointing` when it wraps a model:
    a FutureWarning on every LoRA run and every load that the user cannot act on. Silence that one
    message, nothing else."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)
        yield


def load_causal_lm(path: str | Path, dtype: str = "float32", attention: str | None = None):
    """Model and tokenizer from a local checkpoint; `attention`: transformers' attn_implementation
    (None: its default)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ftedit.assets import on_this_node

    path = on_this_node(path)  # a Ray worker may run on another machine than the driver
    model = AutoModelForCausalLM.from_pretrained(path, dtype=getattr(torch, dtype), attn_implementation=attention)
    tokenizer = AutoTokenizer.from_pretrained(path)
    return model, tokenizer


def pad_token_id(tokenizer) -> int:
    """Any id works for padding (padded positions are masked); prefer the tokenizer's own."""
    for candidate in (tokenizer.pad_token_id, tokenizer.eos_token_id, 0):
        if candidate is not None:
            return candidate
    return 0


def decoder_layers(model: torch.nn.Module) -> tuple[str, torch.nn.ModuleList]:
    """The (qualified name, ModuleList) of the transformer blocks."""
    n_layers = getattr(model.config, "num_hidden_layers", None)
    candidates = [
        (name, module)
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.ModuleList) and (n_layers is None or len(module) == n_layers)
    ]
    if not candidates:
        raise ValueError(f"cannot find the decoder layers of {type(model).__name__}")
    return max(candidates, key=lambda item: len(item[1]))


def check_layers(layers: list[int] | None, n_layers: int) -> list[int]:
    """The layer indices `train.layers` chooses (all when null); a ConfigError if one is past the
    model's last layer, which only the model can tell."""
    if layers is None:
        return list(range(n_layers))
    bad = [i for i in layers if i >= n_layers]
    if bad:
        raise ConfigError("train.layers", f"{bad} out of range, the model has {n_layers} layers (0..{n_layers - 1})")
    return sorted(set(layers))


def linear_module_names(layers: torch.nn.ModuleList) -> list[str]:
    """Names (last component) of every nn.Linear inside the decoder layers: what `all-linear` means.

    Resolved here rather than by peft so that it combines with `layers_to_transform`.
    """
    return sorted({name.split(".")[-1] for name, m in layers.named_modules() if isinstance(m, torch.nn.Linear)})


def check_lora_targets(lora: LoraConfig, model: torch.nn.Module) -> None:
    """A ConfigError naming every listed `lora.target_modules` entry that no module of the model
    ends with (peft's rule for a list), so a typo fails before any stage, not in training."""
    if not isinstance(lora.target_modules, list):  # `all-linear`, or a regex left to peft
        return
    names = [name for name, _ in model.named_modules() if name]
    missing = [t for t in lora.target_modules if not any(n == t or n.endswith("." + t) for n in names)]
    if missing:
        raise ConfigError("lora.target_modules", f"{missing} match no module of the model (the linear layers "
                                                 f"of its decoder layers: {linear_module_names(decoder_layers(model)[1])})")


def prepare_trainable(model, train: TrainConfig, lora: LoraConfig, seed: int):
    """Make only the edited parameters trainable: a LoRA adapter (peft) or whole chosen layers."""
    layers_name, layers = decoder_layers(model)
    chosen = check_layers(train.layers, len(layers))
    if train.tuning == "lora":
        from peft import LoraConfig as PeftLoraConfig
        from peft import get_peft_model

        torch.manual_seed(seed)  # LoRA A matrices are randomly initialised
        peft_config = PeftLoraConfig(
            r=lora.rank,
            lora_alpha=lora.alpha,
            lora_dropout=lora.dropout,
            target_modules=linear_module_names(layers) if lora.target_modules == "all-linear" else lora.target_modules,
            layers_to_transform=chosen if train.layers is not None else None,
            layers_pattern=layers_name.split(".")[-1] if train.layers is not None else None,
            task_type="CAUSAL_LM",
        )
        with _without_peft_deprecation_noise():
            return get_peft_model(model, peft_config)
    model.requires_grad_(False)
    for index in chosen:
        layers[index].requires_grad_(True)
    return model


def prepare_for_autocast(model, dtype: torch.dtype = torch.bfloat16) -> int:
    """Spare autocast the casts it would repeat on every step; training computes exactly the same.

    Under autocast a linear layer casts its fp32 weight to `dtype` on every forward, and peft's
    LoRA layers cast their input up to fp32 before the adapter, which autocast then casts down
    again. For frozen weights the first cast always gives the same tensor, and the round trip is
    lossless, so this holds frozen linear weights in `dtype` once and switches the LoRA input
    cast off: the loss and gradients stay bit for bit the same (tests/test_model.py). A profile
    of the CounterFact benchmark's step on CPU put these casts at 12-14% of its time; timed, the
    gain is about 1.1x and at times within the machine's noise (BENCHMARKS.md). Trainable
    weights, the optimizer, norms and embeddings stay fp32; a weight shared with another module
    (an output layer tied to the embeddings) is left alone, since the other module does not go
    through autocast's cast. Forwards outside autocast then need autocast too (the worker's
    probe scoring enters it). Returns how many weights were cast. Not for ZeRO-3, which owns
    the parameters' storage.
    """
    owners: dict[int, int] = {}
    for module in model.modules():
        for p in module.parameters(recurse=False):
            owners[id(p)] = owners.get(id(p), 0) + 1
    cast = 0
    for module in model.modules():
        if hasattr(module, "cast_input_dtype_enabled"):  # a peft tuner layer (LoRA)
            module.cast_input_dtype_enabled = False
        if not isinstance(module, torch.nn.Linear):
            continue
        for p in module.parameters(recurse=False):
            if not p.requires_grad and p.is_floating_point() and p.dtype != dtype and owners[id(p)] == 1:
                p.data = p.data.to(dtype)
                cast += 1
    return cast


def prepare_for_training(model, train: TrainConfig, lora: LoraConfig, seed: int):
    """What every training loop does to a loaded model: mark what trains (`prepare_trainable`)
    and, under bf16-mixed with ZeRO 0-2, hold frozen weights in bf16 (`prepare_for_autocast`:
    the same loss and gradients, without repeating casts each step)."""
    model = prepare_trainable(model, train, lora, seed)
    if train.precision == "bf16-mixed" and train.zero_stage < 3:
        prepare_for_autocast(model)
    return model


def trainable_parameters(model) -> list[torch.nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]


def save_trained(model, out_dir: Path, tuning: str) -> None:
    """Save what training changed: the LoRA adapter, or the trained tensors of full fine-tuning.

    Called on rank 0 with full (gathered) parameters; see train.py for ZeRO-3.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    if tuning == "lora":
        model.save_pretrained(out_dir)
    else:
        from safetensors.torch import save_file

        tensors = {n: p.detach().to("cpu").contiguous() for n, p in model.named_parameters() if p.requires_grad}
        save_file(tensors, str(out_dir / TRAINED_WEIGHTS))
    (out_dir / TUNING_FILE).write_text(json.dumps({"tuning": tuning}))


def load_edited(base_path: str | Path, trained_dir: Path, dtype: str = "float32"):
    """The base model with the trained weights applied (LoRA merged in): a plain causal LM."""
    trained_dir = Path(trained_dir)
    model, tokenizer = load_causal_lm(base_path, dtype)
    tuning = json.loads((trained_dir / TUNING_FILE).read_text())["tuning"]
    if tuning == "lora":
        from peft import PeftModel

        with _without_peft_deprecation_noise():
            model = PeftModel.from_pretrained(model, trained_dir).merge_and_unload()
    else:
        from safetensors.torch import load_file

        tensors = load_file(str(trained_dir / TRAINED_WEIGHTS))
        missing = set(tensors) - set(dict(model.named_parameters()))
        if missing:
            raise ValueError(f"{trained_dir}: trained tensors not in the base model: {sorted(missing)[:5]}")
        model.load_state_dict(tensors, strict=False)
    model.eval()
    return model, tokenizer
