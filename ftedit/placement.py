"""Where an inference replica's weights go: the accelerators Ray assigned its actor or task.

Scoring, fluency, prefix sampling, continuation anchors and model locality targets each run a
replica of the model on a Ray actor (or task) given `eval.gpus_per_actor` GPUs:

- none: the replica stays on the CPU;
- one: the whole model moves there;
- several (a model too big for one GPU: Llama-3-70B in bf16 is 140 GB): consecutive decoder
  layers go to each GPU, about equal bytes per GPU, and accelerate's hooks carry the activations
  from one to the next. One GPU computes at a time (no pipelining), which scoring can afford:
  it is a small part of a run, and the alternative is not scoring at all.

Training does not come here: DeepSpeed ZeRO-3 shards the model over the training workers.
"""

from __future__ import annotations

import logging

import torch

from ftedit.model import decoder_layers, load_causal_lm, load_edited

log = logging.getLogger(__name__)


def accelerator_device() -> torch.device:
    """This process's first accelerator (a GPU Ray assigned it, whatever its kind) or the CPU."""
    if torch.accelerator.is_available():
        return torch.accelerator.current_accelerator()
    return torch.device("cpu")


def assigned_devices() -> list[torch.device]:
    """Every accelerator this process sees (Ray makes only the assigned ones visible); [] on CPU."""
    if not torch.accelerator.is_available():
        return []
    kind = torch.accelerator.current_accelerator().type
    return [torch.device(kind, i) for i in range(torch.accelerator.device_count())]


def _bytes(*modules: torch.nn.Module) -> int:
    """Bytes of the modules' weights and buffers, a tensor they share (tied weights) counted once."""
    tensors = {id(t): t for m in modules for t in (*m.parameters(), *m.buffers())}
    return sum(t.numel() * t.element_size() for t in tensors.values())


def balanced_device_map(model: torch.nn.Module, devices: list) -> dict[str, str]:
    """accelerate's device map spreading `model` over `devices`: a contiguous run of decoder
    layers per device, cut where the bytes (the layers', plus the embeddings' on the first device
    and the final norm's and output layer's on the last) are closest to equal.

    Found structurally, as `model.decoder_layers` finds the layers: the modules beside the layers
    (embeddings, final norm, rotary tables, output layer) are the other children of the layers'
    ancestors. The input embedding, whatever shares a weight with it (a tied output layer) and
    modules without weights go to the first device; the rest to the last.
    """
    devices = [str(d) for d in devices]
    layers_name, layers = decoder_layers(model)
    parts = layers_name.split(".")
    ancestors = {".".join(parts[:i]) for i in range(len(parts))}  # "", "model", ... above the layers
    embedding_weights = {id(p) for p in model.get_input_embeddings().parameters()}
    first, last = {}, {}
    for ancestor in sorted(ancestors):
        for child_name, child in model.get_submodule(ancestor).named_children():
            name = f"{ancestor}.{child_name}" if ancestor else child_name
            if name == layers_name or name in ancestors:
                continue
            weights = {id(p) for p in child.parameters()}
            (first if not weights or weights & embedding_weights else last)[name] = child

    sizes = [_bytes(*first.values()), *map(_bytes, layers), _bytes(*last.values())]
    share = sum(sizes) / len(devices)
    placed, so_far = [], 0
    for size in sizes:  # each part goes where the middle of its bytes falls
        placed.append(min(len(devices) - 1, int((so_far + size / 2) / share)))
        so_far += size
    device_map = {name: devices[0] for name in first}
    device_map.update({f"{layers_name}.{i}": devices[index] for i, index in enumerate(placed[1:-1])})
    device_map.update({name: devices[-1] for name in last})
    return device_map


def place_replica(model, devices: list | None = None):
    """Put an inference replica on `devices` (default: `assigned_devices()`), as the module
    docstring says; returns the model. Several devices dispatch it with hooks, which is also how
    tests run the spread path on one CPU (`devices=["cpu", "cpu"]`)."""
    devices = assigned_devices() if devices is None else list(devices)
    if len(devices) <= 1:
        return model.to(devices[0] if devices else "cpu")
    from accelerate import dispatch_model

    device_map = balanced_device_map(model, devices)
    log.info("replica spread over %d devices: %s", len(devices), describe(model, device_map))
    # force_hooks: the hooks go on even if every device is the same one (the CPU test).
    return dispatch_model(model, device_map, main_device=str(devices[0]), force_hooks=True)


def describe(model, device_map: dict[str, str]) -> str:
    """'cuda:0 layers 0-39 (70.4 GB), cuda:1 layers 40-79 (70.6 GB)': what went where, for the log."""
    layers_name, _ = decoder_layers(model)
    parts = []
    for device in dict.fromkeys(device_map.values()):  # each device once, in order
        names = [name for name, d in device_map.items() if d == device]
        layers = [int(n.rsplit(".", 1)[1]) for n in names if n.startswith(layers_name + ".")]
        span = f"layers {min(layers)}-{max(layers)}" if layers else "no layers"
        size = _bytes(*(model.get_submodule(n) for n in names)) / 1e9
        parts.append(f"{device} {span} ({size:.1f} GB)")
    return ", ".join(parts)


def load_replica(model_path, dtype: str, trained_dir=None, devices: list | None = None):
    """(model, tokenizer) for inference on this actor's devices (`place_replica`): the base model,
    or the base with `trained_dir`'s weights merged in (`model.load_edited`: merged in CPU memory,
    then placed)."""
    model, tokenizer = load_causal_lm(model_path, dtype) if trained_dir is None else load_edited(
        model_path, trained_dir, dtype)
    return place_replica(model, devices), tokenizer


def input_device(model) -> torch.device:
    """Where a replica's input ids go: its input embedding's device (the first of a spread one);
    for a module without one (a wrapper), its first weight's."""
    embeddings = getattr(model, "get_input_embeddings", None)
    return (embeddings().weight if embeddings is not None else next(model.parameters())).device
