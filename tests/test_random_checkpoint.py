"""benchmarks/random_checkpoint.py: a loadable checkpoint from a config.json and a tokenizer."""

import json
import sys

import pytest

from tests.conftest import REPO

sys.path.insert(0, str(REPO / "benchmarks"))
from random_checkpoint import save_random_checkpoint  # noqa: E402


def test_the_checkpoint_loads_with_the_configs_shape_and_new_weights(tiny_model, tmp_path):
    from ftedit.model import load_causal_lm

    out = save_random_checkpoint(tiny_model / "config.json", tiny_model, tmp_path / "random", seed=1)
    model, tokenizer = load_causal_lm(out)
    original, original_tokenizer = load_causal_lm(tiny_model)
    assert model.config.num_hidden_layers == original.config.num_hidden_layers
    text = "The capital of France is Paris."
    assert tokenizer(text)["input_ids"] == original_tokenizer(text)["input_ids"]  # saved beside the weights
    ours, theirs = model.state_dict(), original.state_dict()
    assert ours.keys() == theirs.keys()
    assert not all((ours[k] == theirs[k]).all() for k in ours)  # a different seed, different weights


def test_a_tokenizer_larger_than_the_vocabulary_is_refused(tiny_model, tmp_path):
    config = json.loads((tiny_model / "config.json").read_text())
    config["vocab_size"] = 16
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="more than the 16"):
        save_random_checkpoint(tmp_path / "config.json", tiny_model, tmp_path / "random")
