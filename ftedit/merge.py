"""The edited model saved tensor by tensor, never whole in memory.

`output.save_merged` runs in the job's driver, on the cluster's head node. Loading the base model
there and merging the adapter into it needs every weight in memory at once: 140 GB for a 70B
model in bf16, more than a CPU head node holds. Here the base checkpoint's safetensors shards are
read tensor by tensor, the trained weights applied to the tensors they change, and each tensor
written out as soon as it is made (`tensor_files`), so the driver holds one tensor at a time
(the largest, an embedding matrix, is a few GB) whatever the model's size. A LoRA adapter
is merged as peft merges it, W + (B @ A) x alpha / r, in `model.dtype`, so the saved model equals
the one `model.load_edited` builds and the edited evaluation scored (tests/test_merge.py).

Checkpoints this cannot read tensor by tensor (no safetensors, or trained weights whose names
are not the checkpoint's) fall back to `load_edited` in memory, with a warning that says why.
"""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
from collections.abc import Callable
from pathlib import Path

import torch

from ftedit.model import TRAINED_WEIGHTS, TUNING_FILE, load_edited
from ftedit.tensor_files import TensorFileReader, write_tensor_file

log = logging.getLogger(__name__)

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_CONFIG = "adapter_config.json"
_ADAPTER_PREFIX = "base_model.model."  # peft's name for the wrapped model in adapter keys


class NotShardable(Exception):
    """Why a base checkpoint or trained weights cannot be merged tensor by tensor."""


def checkpoint_shards(base: Path) -> list[str]:
    """The safetensors files holding the base model's weights, in order."""
    if (base / INDEX_FILE).is_file():
        weight_map = json.loads((base / INDEX_FILE).read_text())["weight_map"]
        return sorted(set(weight_map.values()))
    if (base / SINGLE_FILE).is_file():
        return [SINGLE_FILE]
    raise NotShardable(f"{base} holds no {SINGLE_FILE} or {INDEX_FILE}")


def _checkpoint_shapes(base: Path, shards: list[str]) -> dict[str, tuple[int, ...]]:
    """Every tensor of the checkpoint and its shape, read from the shards' headers only."""
    shapes = {}
    for shard in shards:
        try:
            with TensorFileReader(base / shard) as f:
                shapes.update({name: f.shape(name) for name in f.entries})
        except ValueError as exc:  # a dtype this reader does not know
            raise NotShardable(str(exc)) from exc
    return shapes


class LoraMerge:
    """A LoRA adapter, merged into the weights it adapts one at a time.

    As peft's `merge_and_unload`: (B @ A) x alpha / r in fp32 (peft holds adapter weights in fp32
    beside a half-precision model), added to the weight in fp32 and rounded once to the model's
    dtype (`merged`). Each delta is as big as its weight, so it is computed when its weight is
    written, never all at once. Adapters with options ftedit does not set (DoRA, rsLoRA,
    per-module ranks) are left to peft.
    """

    def __init__(self, trained_dir: Path):
        from safetensors.torch import load_file

        config = json.loads((trained_dir / ADAPTER_CONFIG).read_text())
        for option in ("use_dora", "use_rslora", "fan_in_fan_out", "rank_pattern", "alpha_pattern", "modules_to_save"):
            if config.get(option):
                raise NotShardable(f"the adapter sets {option}")
        self.scaling = config["lora_alpha"] / config["r"]
        tensors = load_file(str(trained_dir / ADAPTER_WEIGHTS))  # A and B: rank-sized, small
        unexpected = [k for k in tensors if not k.endswith((".lora_A.weight", ".lora_B.weight"))]
        if unexpected:
            raise NotShardable(f"the adapter holds tensors other than LoRA A/B ({unexpected[:3]})")
        self.factors: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        for key, a in tensors.items():
            if key.endswith(".lora_A.weight"):
                module = key[: -len(".lora_A.weight")]
                self.factors[module.removeprefix(_ADAPTER_PREFIX) + ".weight"] = (a, tensors[module + ".lora_B.weight"])
        self.shapes = {name: (b.shape[0], a.shape[1]) for name, (a, b) in self.factors.items()}

    def apply(self, name: str, base: Callable[[], torch.Tensor], dtype: torch.dtype) -> torch.Tensor:
        """The edited tensor `name`; `base()` reads the base's, in `dtype`."""
        a, b = self.factors[name]
        return merged(base(), (b.float() @ a.float()) * self.scaling)

    def close(self) -> None:
        pass


class TrainedLayers:
    """Full fine-tuning's trained tensors, replacing the base's one at a time (read when needed:
    with every layer trained they are most of the model, and the base's copy is never read)."""

    def __init__(self, trained_dir: Path):
        self._file = TensorFileReader(trained_dir / TRAINED_WEIGHTS)
        self.shapes = {name: self._file.shape(name) for name in self._file.entries}

    def apply(self, name: str, base: Callable[[], torch.Tensor], dtype: torch.dtype) -> torch.Tensor:
        return self._file.read(name).to(dtype)

    def close(self) -> None:
        self._file.close()


def merged(weight: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """`weight` + `delta` in fp32, rounded once to the weight's dtype: what peft's in-place
    `weight += delta` computes for a half-precision weight and an fp32 delta."""
    return (weight.float() + delta).to(weight.dtype)


def save_merged(base: str | Path, trained_dir: str | Path, out_dir: str | Path, dtype: str) -> None:
    """Write the edited model (`base` with `trained_dir` applied, in `dtype`) to `out_dir` as a
    Hugging Face checkpoint, one tensor in memory at a time (or whole, where it cannot be)."""
    base, trained_dir, out_dir = Path(base), Path(trained_dir), Path(out_dir)
    try:
        _save_tensor_by_tensor(base, trained_dir, out_dir, getattr(torch, dtype))
    except NotShardable as why:
        log.warning("merged model: %s, so it is built whole in memory (base %s)", why, base)
        shutil.rmtree(out_dir, ignore_errors=True)
        edited, tokenizer = load_edited(base, trained_dir, dtype)
        edited.save_pretrained(out_dir)
        tokenizer.save_pretrained(out_dir)


def _save_tensor_by_tensor(base: Path, trained_dir: Path, out_dir: Path, dtype: torch.dtype) -> None:
    from transformers import AutoConfig, AutoTokenizer, GenerationConfig

    shards = checkpoint_shards(base)
    shapes = _checkpoint_shapes(base, shards)
    tuning = json.loads((trained_dir / TUNING_FILE).read_text())["tuning"]
    with contextlib.closing(LoraMerge(trained_dir) if tuning == "lora" else TrainedLayers(trained_dir)) as update:
        _write_edited_shards(base, shards, shapes, update, out_dir, dtype)

    config = AutoConfig.from_pretrained(base)
    config.dtype = dtype
    config.save_pretrained(out_dir)
    try:
        GenerationConfig.from_pretrained(base).save_pretrained(out_dir)
    except OSError:  # the base has none: from_pretrained derives one from the config, as it did for the base
        pass
    AutoTokenizer.from_pretrained(base).save_pretrained(out_dir)


def _write_edited_shards(base: Path, shards: list[str], shapes: dict, update, out_dir: Path,
                         dtype: torch.dtype) -> None:
    """The checkpoint's shards (and index) with `update` applied, one tensor in memory at a time."""
    for name, shape in update.shapes.items():
        if name not in shapes:
            raise NotShardable(f"trained weight {name} is not a tensor of the checkpoint")
        if tuple(shape) != shapes[name]:
            raise NotShardable(f"trained weight {name} has shape {tuple(shape)}, the checkpoint {shapes[name]}")

    out_dir.mkdir(parents=True, exist_ok=True)
    total_bytes = 0
    for n, shard in enumerate(shards, 1):
        with TensorFileReader(base / shard) as f:
            # Floating tensors in `dtype`, as from_pretrained(dtype=...) loads them; others as stored.
            layout = [(name, dtype if f.dtype(name).is_floating_point else f.dtype(name), f.shape(name))
                      for name in f.entries]

            def edited(reader=f, layout=layout):
                for name, out_dtype, _ in layout:
                    def read_base(name=name, out_dtype=out_dtype):
                        return reader.read(name).to(out_dtype)

                    # A replaced tensor (full fine-tuning) is never read from the base.
                    yield update.apply(name, read_base, out_dtype) if name in update.shapes else read_base()

            total_bytes += write_tensor_file(out_dir / shard, layout, edited(), {"format": "pt"})
        log.info("merged model: shard %d/%d written (%s)", n, len(shards), shard)
    if (base / INDEX_FILE).is_file():
        index = json.loads((base / INDEX_FILE).read_text())
        index["metadata"] = {**index.get("metadata", {}), "total_size": total_bytes}
        (out_dir / INDEX_FILE).write_text(json.dumps(index, indent=2))
