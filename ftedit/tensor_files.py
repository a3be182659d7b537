"""Safetensors files read and written one tensor at a time, with plain reads and writes.

The `safetensors` library maps a whole file into memory and writes a file from a dict of all its
tensors. Both put a whole shard in the process's resident memory (mapped pages count until the
file is closed): 5-10 GB per shard of a 70B checkpoint, in the job's driver. Here a tensor is read
with `readinto` when it is needed and written as soon as it is computed, so the process holds one
tensor at a time. The format is the published one (an 8-byte little-endian header length, a JSON
header of dtype, shape and byte offsets per tensor, then the bytes); files written here load with
the `safetensors` library (tests/test_tensor_files.py).
"""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path
from typing import Iterable

import torch

DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool,
}
NAMES = {dtype: name for name, dtype in DTYPES.items()}


class TensorFileReader:
    """One safetensors file: its header read once, each tensor read on request."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._file = self.path.open("rb")
        (length,) = struct.unpack("<Q", self._file.read(8))
        header = json.loads(self._file.read(length))
        self.metadata: dict = header.pop("__metadata__", None) or {}
        self._data_start = 8 + length
        # In the order of their bytes in the file, which a copy keeps.
        self.entries: dict[str, dict] = dict(sorted(header.items(), key=lambda item: item[1]["data_offsets"][0]))
        for name, entry in self.entries.items():
            if entry["dtype"] not in DTYPES:
                raise ValueError(f"{self.path}: tensor {name} has dtype {entry['dtype']}, which is not supported here")

    def dtype(self, name: str) -> torch.dtype:
        return DTYPES[self.entries[name]["dtype"]]

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self.entries[name]["shape"])

    def read(self, name: str) -> torch.Tensor:
        begin, end = self.entries[name]["data_offsets"]
        data = bytearray(end - begin)
        self._file.seek(self._data_start + begin)
        if self._file.readinto(data) != len(data):
            raise ValueError(f"{self.path}: tensor {name} is cut short")
        raw = torch.frombuffer(data, dtype=torch.uint8) if data else torch.empty(0, dtype=torch.uint8)
        return raw.view(self.dtype(name)).reshape(self.shape(name))

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> "TensorFileReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def write_tensor_file(path: str | Path, layout: list[tuple[str, torch.dtype, tuple[int, ...]]],
                      tensors: Iterable[torch.Tensor], metadata: dict[str, str] | None = None) -> int:
    """Write the tensors of `layout` (name, dtype, shape, in this order) as they come from
    `tensors`; returns the bytes of tensor data written. Each must match its layout entry."""
    header: dict = {}
    offset = 0
    for name, dtype, shape in layout:
        size = math.prod(shape) * dtype.itemsize
        header[name] = {"dtype": NAMES[dtype], "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    if metadata:
        header["__metadata__"] = metadata
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # the data starts 8-byte aligned, as the library writes it
    written = 0
    with Path(path).open("wb") as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        for (name, dtype, shape), tensor in zip(layout, tensors, strict=True):
            if tensor.dtype != dtype or tuple(tensor.shape) != tuple(shape):
                raise ValueError(f"{path}: tensor {name} is {tensor.dtype} {tuple(tensor.shape)}, "
                                 f"its layout says {dtype} {tuple(shape)}")
            data = tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8)
            f.write(memoryview(data.numpy()))
            written += data.numel()
    if written != offset:
        raise ValueError(f"{path}: wrote {written} bytes of tensor data, the layout holds {offset}")
    return written
