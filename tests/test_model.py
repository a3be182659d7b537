import warnings

import pytest
import torch

from ftedit.assets import resolve_model_path
from ftedit.config import LoraConfig, TrainConfig
from ftedit.loss import lm_loss
from ftedit.model import (decoder_layers, load_causal_lm, load_edited, prepare_for_autocast, prepare_for_training,
                          prepare_trainable, save_trained)
from ftedit.tokenize import IGNORE_INDEX, pack_batch


def logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits


IDS = torch.tensor([[5, 17, 42, 99, 3]])


def test_decoder_layers_found_structurally(tiny_model):
    model, _ = load_causal_lm(tiny_model)
    name, layers = decoder_layers(model)
    assert name.endswith("layers") and len(layers) == model.config.num_hidden_layers == 2


def test_lora_on_chosen_layers_only(tiny_model):
    model, _ = load_causal_lm(tiny_model)
    model = prepare_trainable(model, TrainConfig(tuning="lora", layers=[1]), LoraConfig(rank=4), seed=0)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n and ".layers.1." in n for n in trainable)


def test_lora_setup_and_reload_warn_of_nothing_the_user_cannot_act_on(tiny_model, tmp_path):
    # peft reads transformers' deprecated `is_gradient_checkpointing` when it wraps a model.
    model, _ = load_causal_lm(tiny_model)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = prepare_trainable(model, TrainConfig(tuning="lora"), LoraConfig(rank=4), seed=0)
        save_trained(model, tmp_path, "lora")
        load_edited(tiny_model, tmp_path)
    assert not [w for w in caught if "is_gradient_checkpointing" in str(w.message)]


def test_full_tuning_of_chosen_layers(tiny_model):
    model, _ = load_causal_lm(tiny_model)
    model = prepare_trainable(model, TrainConfig(tuning="full", layers=[0]), LoraConfig(), seed=0)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(".layers.0." in n for n in trainable)


def test_layer_out_of_range_is_an_error(tiny_model):
    model, _ = load_causal_lm(tiny_model)
    with pytest.raises(ValueError, match=r"train.layers: \[7\] out of range"):
        prepare_trainable(model, TrainConfig(layers=[7]), LoraConfig(), seed=0)


@pytest.mark.parametrize("tuning", ["lora", "full"])
def test_saved_weights_reload_into_an_equivalent_plain_model(tiny_model, tmp_path, tuning):
    model, _ = load_causal_lm(tiny_model)
    model = prepare_trainable(model, TrainConfig(tuning=tuning), LoraConfig(rank=4), seed=0)
    with torch.no_grad():  # stand-in for training: move every trainable tensor
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.1)
    expected = logits(model, IDS)
    save_trained(model, tmp_path / "trained", tuning)
    edited, _ = load_edited(tiny_model, tmp_path / "trained")
    assert not any("lora" in n for n, _ in edited.named_parameters())  # merged: a plain causal LM
    assert torch.allclose(logits(edited, IDS), expected, atol=1e-4)
    base, _ = load_causal_lm(tiny_model)
    assert not torch.allclose(logits(base, IDS), expected, atol=1e-4)


@pytest.mark.parametrize("tuning", ["lora", "full"])
def test_prepare_for_autocast_changes_no_loss_or_gradient_bit(tiny_model, tuning):
    """Frozen linear weights held in bf16 and no LoRA input up-cast: under autocast the loss and
    every gradient are identical to the plain fp32 model's, step after step."""
    ids = [[5, 17, 42, 99, 3, 8], [7, 7, 21, 64], [30, 31, 32, 33, 34]]
    labels = [[IGNORE_INDEX] * 3 + row[3:] for row in ids]
    batch = pack_batch(ids, labels, pad_id=0, row_length=8)

    def two_steps(prepare: bool):
        model, _ = load_causal_lm(tiny_model)
        model = prepare_trainable(model, TrainConfig(tuning=tuning, layers=[1]), LoraConfig(rank=4), seed=0)
        n_cast = prepare_for_autocast(model) if prepare else 0
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=1e-2)
        out = []
        for _ in range(2):
            with torch.autocast("cpu", dtype=torch.bfloat16):
                loss = lm_loss(model, batch)
            loss.backward()
            out.append((loss.detach(), [p.grad.clone() for p in params]))
            optimizer.step()
            optimizer.zero_grad()
        return model, n_cast, out

    plain_model, _, plain = two_steps(prepare=False)
    model, n_cast, prepared = two_steps(prepare=True)
    for (loss_a, grads_a), (loss_b, grads_b) in zip(plain, prepared):
        assert torch.equal(loss_a, loss_b)
        assert all(torch.equal(a, b) for a, b in zip(grads_a, grads_b))
    dtypes = {n: p.dtype for n, p in model.named_parameters()}
    frozen_linear = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)
                     and not m.weight.requires_grad and "lm_head" not in n]
    assert n_cast == len(frozen_linear) > 0 and all(dtypes[f"{n}.weight"] == torch.bfloat16 for n in frozen_linear)
    assert all(dtypes[n] == torch.float32 for n, p in model.named_parameters() if p.requires_grad)
    assert all(p.dtype == torch.float32 for n, p in model.named_parameters() if "embed" in n or "norm" in n)
    assert all(p.dtype == torch.float32 for p in plain_model.parameters())


@pytest.mark.parametrize("precision, zero_stage, holds_bf16", [
    ("bf16-mixed", 2, True), ("bf16-mixed", 3, False), ("fp32", 2, False)])
def test_training_holds_frozen_weights_in_bf16_only_under_bf16_mixed_without_zero3(
        tiny_model, precision, zero_stage, holds_bf16):
    model, _ = load_causal_lm(tiny_model)
    model = prepare_for_training(model, TrainConfig(precision=precision, zero_stage=zero_stage), LoraConfig(rank=4), 0)
    frozen = {p.dtype for n, p in model.named_parameters() if not p.requires_grad and "proj" in n}
    assert frozen == ({torch.bfloat16} if holds_bf16 else {torch.float32})
    assert all(p.dtype == torch.float32 for p in model.parameters() if p.requires_grad)


def test_resolve_model_path_rejects_non_checkpoints(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a Hugging Face checkpoint"):
        resolve_model_path(str(tmp_path), str(tmp_path / "cache"))
    bundled = resolve_model_path("tiny-random-llama", str(tmp_path / "cache"))
    assert bundled.joinpath("config.json").is_file()
    # Weights saved without their tokenizer are refused by the driver, naming what is missing.
    weights_only = tmp_path / "weights-only"
    weights_only.mkdir()
    for name in ("config.json", "model.safetensors"):
        (weights_only / name).write_bytes((bundled / name).read_bytes())
    with pytest.raises(FileNotFoundError, match="has no tokenizer .none of tokenizer.json, tokenizer_config.json"):
        resolve_model_path(str(weights_only), str(tmp_path / "cache"))
    (weights_only / "tokenizer.json").write_bytes((bundled / "tokenizer.json").read_bytes())
    assert resolve_model_path(str(weights_only), str(tmp_path / "cache")) == weights_only


def test_a_worker_on_another_machine_unpacks_a_bundled_model_or_names_the_missing_one(tmp_path):
    """The driver resolves `tiny-random-llama` into its cache; a Ray worker on a machine that never
    saw that cache (here: the folder removed) unpacks it there when it loads the model."""
    import shutil

    from ftedit.tokenize import TokenizeBatch

    resolved = resolve_model_path("tiny-random-llama", str(tmp_path / "cache"))
    expected = logits(load_causal_lm(resolved)[0], torch.tensor([[3, 4, 5]]))
    shutil.rmtree(resolved)
    model, tokenizer = load_causal_lm(resolved)
    assert torch.equal(logits(model, torch.tensor([[3, 4, 5]])), expected)  # the same model, rebuilt here
    shutil.rmtree(resolved)
    assert TokenizeBatch(str(resolved), conditional=True).tokenizer.get_vocab() == tokenizer.get_vocab()
    with pytest.raises(FileNotFoundError, match="is not on this machine .* the same path"):
        load_causal_lm(tmp_path / "models" / "llama-3-8b")
