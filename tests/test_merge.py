"""The edited model saved tensor by tensor equals the one merged whole in memory."""

import json
import logging

import pytest
import torch

from ftedit.config import LoraConfig, TrainConfig
from ftedit.merge import INDEX_FILE, SINGLE_FILE, save_merged
from ftedit.model import load_causal_lm, load_edited, prepare_trainable, save_trained


def trained(base, out, tuning: str, lora: LoraConfig = LoraConfig(rank=4, alpha=8.0)):
    """Trained weights as training would save them, with every trained tensor moved off its
    initial value (LoRA B starts at zero: a merge of an untrained adapter would change nothing)."""
    model, _ = load_causal_lm(base)
    model = prepare_trainable(model, TrainConfig(tuning=tuning, layers=[1]), lora, seed=0)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn(p.shape, generator=generator) * 0.05)
    save_trained(model, out, tuning)
    return out


def sharded_copy(base, out):
    """The base checkpoint as several shards with an index, as big models ship."""
    model, tokenizer = load_causal_lm(base)
    model.save_pretrained(out, max_shard_size="100KB")
    tokenizer.save_pretrained(out)
    assert (out / INDEX_FILE).is_file()
    return out


def state(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("tuning", ["lora", "full"])
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("sharded", [False, True])
def test_the_model_saved_tensor_by_tensor_equals_the_one_merged_in_memory(tiny_model, tmp_path, tuning, dtype, sharded,
                                                                         caplog):
    base = sharded_copy(tiny_model, tmp_path / "base") if sharded else tiny_model
    trained_dir = trained(base, tmp_path / "trained", tuning)
    with caplog.at_level(logging.INFO, logger="ftedit.merge"):
        save_merged(base, trained_dir, tmp_path / "merged", dtype)
    assert "built whole in memory" not in caplog.text  # the tensor-by-tensor path ran
    shards = json.loads((tmp_path / "merged" / INDEX_FILE).read_text())["weight_map"] if sharded else None
    assert (len(set(shards.values())) > 1) if sharded else (tmp_path / "merged" / SINGLE_FILE).is_file()

    expected, _ = load_edited(base, trained_dir, dtype)
    saved, tokenizer = load_causal_lm(tmp_path / "merged", dtype)
    unedited, _ = load_causal_lm(base, dtype)
    want, got, before = state(expected), state(saved), state(unedited)
    assert want.keys() == got.keys()
    for name in want:
        assert got[name].dtype == getattr(torch, dtype)
        assert torch.equal(got[name], want[name]), name  # bit for bit, bf16 rounding included
    assert any(not torch.equal(got[n], before[n]) for n in got)  # the edit is in it
    assert json.loads((tmp_path / "merged" / "config.json").read_text())["dtype"] == dtype
    assert tokenizer("The capital of France is")["input_ids"] == load_causal_lm(base)[1](
        "The capital of France is")["input_ids"]
    ids = torch.tensor([[5, 17, 42, 99, 3]])
    with torch.no_grad():
        assert torch.equal(saved(input_ids=ids).logits, expected(input_ids=ids).logits)


def test_an_adapter_with_options_ftedit_does_not_set_is_merged_whole_by_peft(tiny_model, tmp_path, caplog):
    trained_dir = trained(tiny_model, tmp_path / "trained", "lora")
    config = json.loads((trained_dir / "adapter_config.json").read_text())
    (trained_dir / "adapter_config.json").write_text(json.dumps({**config, "use_rslora": True}))
    with caplog.at_level(logging.WARNING, logger="ftedit.merge"):
        save_merged(tiny_model, trained_dir, tmp_path / "merged", "float32")
    assert "the adapter sets use_rslora, so it is built whole in memory" in caplog.text
    expected, _ = load_edited(tiny_model, trained_dir)  # rsLoRA scales by alpha / sqrt(r): peft knows
    saved, _ = load_causal_lm(tmp_path / "merged")
    assert all(torch.equal(a, b) for a, b in zip(state(saved).values(), state(expected).values()))


def test_trained_weights_that_the_checkpoint_does_not_hold_fall_back_to_the_whole_model(tiny_model, tmp_path, caplog):
    from safetensors.torch import load_file, save_file

    trained_dir = trained(tiny_model, tmp_path / "trained", "full")
    tensors = load_file(str(trained_dir / "trained_weights.safetensors"))
    renamed = {k.replace("model.layers.", "model.renamed_layers."): v for k, v in tensors.items()}
    save_file(renamed, str(trained_dir / "trained_weights.safetensors"))
    with caplog.at_level(logging.WARNING, logger="ftedit.merge"), pytest.raises(ValueError, match="not in the base model"):
        save_merged(tiny_model, trained_dir, tmp_path / "merged", "float32")  # and the whole-model path says why
    assert "is not a tensor of the checkpoint" in caplog.text
