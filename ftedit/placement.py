"""Where an inference replica's weights go: the accelerators Ray assigned its actor or task.

Scoring, fluency, prefix sampling, continuation anchors and model locality targets each run a
replica of the model on a Ray actor (or task) given `eval.gpus_per_actor` GPUs:

- none: the replica stays on the CPU;
- one: the whole model moves there;
- several (a model too big for one GPU: Llama-3-70B in bf16 is 140 GB): consecutive decoder
  layers go to each GPU, as evenly as whole layers allow, and accelerate's hooks carry the activations
  from one to the next. One GPU computes at a time (no pipelining), which scoring can afford:
  it is a small part of a run, and the alternative is not scoring at all.

Training does not come here: DeepSpeed ZeRO-3 shards the model over the training workers.
"""

from __future__ import annotations

import logging

import torch

from ftedit.model import decoder_layers, load_causal_lm, load_edited

log = logging.getLogger(__name__)


def assigned_devices() -> list[torch.device]:
    """Every accelerator this process sees (Ray makes only the assigned ones visible); [] on CPU."""
    if not torch.accelerator.is_available():
        return []
    kind = torch.accelerator.current_accelerator().type
    return [torch.device(kind, i) for i in range(torch.accelerator.device_count())]


def accelerator_device() -> torch.device:
    """This process's first accelerator (a GPU Ray assigned it, whatever its kind) or the CPU."""
    return (assigned_devices() or [torch.device("cpu")])[0]


def _bytes(*modules: torch.nn.Module) -> int:
    """Bytes of the modules' weights and buffers, a tensor they share (tied weights) counted once."""
    tensors = {id(t): t for m in modules for t in (*m.parameters(), *m.buffers())}
    return sum(t.numel() * t.element_size() for t in tensors.values())


def balanced_device_map(model: torch.nn.Module, devices: list) -> dict[str, str]:
    """accelerate's device map spreading `model` over `devices`: a contiguous run of decoder
    layers per device, cut so that the fullest device holds as few bytes as it can
    (`contiguous_cut`), and every other module (embeddings, rotary tables, final norm, output
    layer) on the first device.

    The first device, because the model's own forward code works there: accelerate hands the
    model's arguments to it, and the output layer picks the scored positions with a mask built
    from them (`loss.target_logits` passes `logits_to_keep` as a tensor); on another GPU than
    the final hidden states that indexing would fail. The first device also holds the input
    embedding and any output layer tied to it. Found structurally, as `model.decoder_layers`
    finds the layers: the other modules are the other children of the layers' ancestors.
    """
    devices = [str(d) for d in devices]
    layers_name, layers = decoder_layers(model)
    parts = layers_name.split(".")
    ancestors = {".".join(parts[:i]) for i in range(len(parts))}  # "", "model", ... above the layers
    others = {}
    for ancestor in sorted(ancestors):
        for child_name, child in model.get_submodule(ancestor).named_children():
            name = f"{ancestor}.{child_name}" if ancestor else child_name
            if name != layers_name and name not in ancestors:
                others[name] = child

    placed = contiguous_cut([_bytes(*others.values()), *map(_bytes, layers)], len(devices))
    device_map = {name: devices[0] for name in others}
    device_map.update({f"{layers_name}.{i}": devices[index] for i, index in enumerate(placed[1:])})
    return device_map


def contiguous_cut(sizes: list[int], n_devices: int) -> list[int]:
    """The device of each part, in order: contiguous runs over at most `n_devices`, the largest
    run's total as small as any cut makes it (a GPU holds no more than it must)."""

    def fill(capacity: int) -> list[int] | None:  # runs as long as `capacity` allows, or None
        placed, device, load = [], 0, 0
        for size in sizes:
            if load and load + size > capacity:
                device, load = device + 1, 0
            placed.append(device)
            load += size
        return placed if device < n_devices else None

    low, high = max(sizes), sum(sizes)  # the smallest capacity that fits, by bisection
    while low < high:
        middle = (low + high) // 2
        if fill(middle) is None:
            low = middle + 1
        else:
            high = middle
    return fill(low)


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
