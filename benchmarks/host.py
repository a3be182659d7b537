"""Where a benchmark result was measured, named in every results row.

Light on purpose (torch and /proc only, no ftedit pipeline): scripts that measure their own
process's memory or start-up import it without loading what they measure.
"""

import os
import platform

import torch

from ftedit.precision import cpuinfo_field


def machine() -> str:
    """Where a result was measured. The CPU model and the kernel set torch picked (AVX2, AVX512) are
    part of it: on another CPU the same command and seed runs other float kernels, and training
    amplifies rounding differences into score differences (BENCHMARKS.md, MQuAKE)."""
    cpu = f"{platform.machine()} {cpu_model()}".strip()
    kernels = torch.backends.cpu.get_cpu_capability()
    host = f"{cpu} ({kernels}), {os.cpu_count()} cores, torch {torch.__version__}, {torch.get_num_threads()} threads"
    if torch.cuda.is_available():  # the GPU a GPU table was measured on (CPU tables name none)
        host += f", {torch.cuda.get_device_name()}"
    return host


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (Linux), else what platform knows ("" if nothing)."""
    return cpuinfo_field("model name") or platform.processor()
