"""Safetensors files one tensor at a time: what the library writes reads back, what is written
here the library loads."""

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from ftedit.tensor_files import DTYPES, TensorFileReader, write_tensor_file


def sample_tensors() -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    tensors = {f"t.{name.lower()}": (torch.randn(3, 5, generator=generator) * 50).to(dtype)
               for name, dtype in DTYPES.items()}
    tensors["scalar"] = torch.tensor(2.5, dtype=torch.bfloat16)
    tensors["empty"] = torch.zeros(0, 4)
    tensors["flags"] = torch.tensor([True, False, True])
    return tensors


def same(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Same dtype, shape and bytes (float8 and bool included, which torch.equal does not all take)."""
    def raw(t):
        return t.contiguous().reshape(-1).view(torch.uint8)

    return a.dtype == b.dtype and a.shape == b.shape and torch.equal(raw(a), raw(b))


def test_the_reader_reads_every_tensor_the_library_wrote(tmp_path):
    tensors = sample_tensors()
    save_file(tensors, str(tmp_path / "lib.safetensors"), metadata={"format": "pt"})
    with TensorFileReader(tmp_path / "lib.safetensors") as f:
        assert f.metadata == {"format": "pt"} and set(f.entries) == set(tensors)
        for name, tensor in tensors.items():
            assert f.dtype(name) == tensor.dtype and f.shape(name) == tuple(tensor.shape)
            assert same(f.read(name), tensor), name


def test_a_file_written_tensor_by_tensor_loads_with_the_library(tmp_path):
    tensors = sample_tensors()
    layout = [(name, t.dtype, tuple(t.shape)) for name, t in tensors.items()]
    written = write_tensor_file(tmp_path / "ours.safetensors", layout, iter(tensors.values()), {"format": "pt"})
    assert written == sum(t.numel() * t.element_size() for t in tensors.values())
    loaded = load_file(str(tmp_path / "ours.safetensors"))
    assert set(loaded) == set(tensors) and all(same(loaded[n], t) for n, t in tensors.items())
    with safe_open(str(tmp_path / "ours.safetensors"), framework="pt") as f:
        assert f.metadata() == {"format": "pt"}
    # And back through the reader: a copy keeps the byte order of the file.
    with TensorFileReader(tmp_path / "ours.safetensors") as f:
        assert list(f.entries) == list(tensors)


def test_a_tensor_that_does_not_match_its_layout_is_refused(tmp_path):
    layout = [("a", torch.float32, (2, 2)), ("b", torch.float32, (3,))]
    with pytest.raises(ValueError, match=r"tensor b is torch.float16 \(3,\), its layout says torch.float32 \(3,\)"):
        write_tensor_file(tmp_path / "x.safetensors", layout, iter([torch.zeros(2, 2), torch.zeros(3, dtype=torch.float16)]))
    with pytest.raises(ValueError):  # one tensor short
        write_tensor_file(tmp_path / "y.safetensors", layout, iter([torch.zeros(2, 2)]))
