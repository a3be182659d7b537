import glob
import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"benchmark data not found at {SHARED_DATA} (see README: ../shared/data)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    """A tiny randomly initialised Llama checkpoint with its tokenizer (built, not downloaded)."""
    from ftedit.tiny import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture(scope="session", autouse=True)
def _deepspeed_environment():
    """Reuse one compiled DeepSpeed CPU op cache and remove the /dev/shm files our runs leave."""
    os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(Path.home() / ".cache" / "torch_extensions"))
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    before = set(glob.glob("/dev/shm/deepspeed_*"))
    yield
    for path in set(glob.glob("/dev/shm/deepspeed_*")) - before:
        try:
            os.remove(path)
        except OSError:
            pass


@pytest.fixture(scope="session")
def tiny_embedder(tmp_path_factory, tiny_model) -> Path:
    """A tiny random BERT encoder sharing the tiny model's tokenizer (stands in for MiniLM)."""
    from transformers import AutoTokenizer, BertConfig, BertModel

    out = tmp_path_factory.mktemp("embedder") / "bert"
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=128, pad_token_id=tokenizer.pad_token_id)
    BertModel(config).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out
