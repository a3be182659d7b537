"""Training precision per device: bf16 only where the hardware computes it.

bf16 matmuls are fast on GPUs from Ampere on and on x86 CPUs with AVX512-BF16 or AMX, and
crawl elsewhere: on a 2-core AMD EPYC VM with AVX2 alone, torch 2.13 multiplies bf16 matrices
at 1.4 GFLOP/s against 149 in fp32, and the CounterFact benchmark job trained at 7 tokens/s under
bf16-mixed where fp32 runs at about 150 (BENCHMARKS.md, "bf16 on a CPU without bf16"). A config
is written once and runs on many machines, so `train.precision=auto` picks per worker: bf16-mixed
where its device has native bf16, fp32 elsewhere. An explicit bf16 request on a device without it
stops the run before the model loads, instead of training 100x slower. Each worker resolves
`auto` for its own device, so one run's workers should share a kind of device (one GPU node type),
as DeepSpeed's reductions expect every rank in the same precision.
"""

from __future__ import annotations

import dataclasses
import platform

import torch

BF16_PRECISIONS = ("bf16-mixed", "bf16")


def cpuinfo_field(*names: str) -> str | None:
    """The value of the first /proc/cpuinfo line whose key starts with one of `names` (Linux);
    None where there is no such line or no /proc/cpuinfo."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(names):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def _cpu_flags() -> set[str]:
    return set((cpuinfo_field("flags", "Features") or "").split())  # x86 / aarch64


def native_bf16(device: torch.device) -> bool:
    """Whether `device` computes bf16 matmuls in hardware (not emulated)."""
    if device.type == "cpu":
        if platform.machine().lower() in ("x86_64", "amd64", "i686", "x86"):
            return any(getattr(torch.cpu, probe, lambda: False)()
                       for probe in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"))
        return "bf16" in _cpu_flags()  # aarch64 lists its BF16 extension in /proc/cpuinfo
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported(including_emulation=False)
    return True  # other accelerators (xpu, npu, mps): their torch backends expose what they support


def resolve_precision(precision: str, device: torch.device, supports_bf16: bool | None = None) -> str:
    """The precision a worker trains in: `auto` becomes bf16-mixed or fp32 by `native_bf16`;
    an explicit bf16 precision on a device without it is an error. `supports_bf16` overrides the
    probe (tests)."""
    native = native_bf16(device) if supports_bf16 is None else supports_bf16
    if precision == "auto":
        return "bf16-mixed" if native else "fp32"
    if precision in BF16_PRECISIONS and not native:
        raise ValueError(
            f"train.precision={precision}: this worker's device ({device}) has no native bf16 (on x86 CPUs "
            "AVX512-BF16 or AMX; on NVIDIA GPUs Ampere or newer), and bf16 matmuls there run up to 100x "
            "slower than fp32. Set train.precision=fp32, or train.precision=auto to train in bf16-mixed "
            "only where the hardware has it."
        )
    return precision


def with_precision_for(cfg, device: torch.device):
    """The run config `cfg` with `train.precision` resolved for `device` (`resolve_precision`):
    what the train loop and the benchmarks' in-process loops train with."""
    train = dataclasses.replace(cfg.train, precision=resolve_precision(cfg.train.precision, device))
    return dataclasses.replace(cfg, train=train)
