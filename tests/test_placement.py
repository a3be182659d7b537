"""Inference replicas spread over several devices score and generate as one on a single device.

No GPU here: the spread path runs with two "devices" that are both the CPU, which attaches the
same accelerate hooks (one per block, moving activations to each block's device) that several
GPUs get. The device maps themselves are checked for GPU names without touching a GPU.
"""

import pytest
import torch
from accelerate.utils import check_device_map
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

from ftedit.augment import generate_prefixes
from ftedit.config import AugmentConfig, ConfigError, EvalConfig
from ftedit.evaluate import evaluate
from ftedit.fluency import generate_greedy
from ftedit.loss import check_packing
from ftedit.model import load_causal_lm, pad_token_id
from ftedit.placement import (_bytes, balanced_device_map, contiguous_cut, describe, input_device, load_replica,
                              place_replica)
from tests.test_evaluate import REQUESTS
from tests.test_merge import trained

GPUS = ["cuda:0", "cuda:1", "cuda:2"]


def llama(layers: int, tied: bool):
    config = LlamaConfig(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=layers,
                         num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=tied)
    return LlamaForCausalLM(config)


def device_bytes(model, device_map) -> dict[str, int]:
    totals = dict.fromkeys(device_map.values(), 0)
    for name, device in device_map.items():
        totals[device] += sum(p.numel() * p.element_size() for p in model.get_submodule(name).parameters())
    return totals


def test_layers_are_cut_into_contiguous_runs_that_fill_no_gpu_more_than_needed():
    model = llama(layers=12, tied=False)
    device_map = balanced_device_map(model, GPUS)
    check_device_map(model, device_map)  # every weight has a device
    layer_devices = [device_map[f"model.layers.{i}"] for i in range(12)]
    assert layer_devices == sorted(layer_devices) and set(layer_devices) == set(GPUS)  # contiguous, all used
    # Everything outside the layers on the first device, where the model's forward works
    # (loss.target_logits indexes the output layer's input with a mask it passed in).
    assert {device_map[name] for name in ("model.embed_tokens", "model.rotary_emb", "model.norm", "lm_head")} == {"cuda:0"}
    # The fullest device holds as little as any contiguous cut allows (every cut tried here).
    layer_bytes = sum(p.numel() * p.element_size() for p in model.model.layers[0].parameters())
    others = sum(p.numel() * p.element_size() for p in model.parameters()) - 12 * layer_bytes
    best = min(max(others + a * layer_bytes, (b - a) * layer_bytes, (12 - b) * layer_bytes)
               for a in range(13) for b in range(a, 13))
    assert max(device_bytes(model, device_map).values()) == best


def test_contiguous_cut_keeps_order_and_minimises_the_fullest_device():
    assert contiguous_cut([5, 1, 1, 1, 1, 1], 2) == [0, 1, 1, 1, 1, 1]  # 5 | 5
    assert contiguous_cut([1] * 6, 3) == [0, 0, 1, 1, 2, 2]
    assert contiguous_cut([2, 9, 2], 3) == [0, 1, 2]
    assert contiguous_cut([3, 3], 4) == [0, 1]  # more devices than parts: some stay empty


def test_the_log_says_which_layers_went_where():
    model = llama(layers=4, tied=False)
    device_map = balanced_device_map(model, GPUS[:2])
    text = describe(model, device_map)
    first, second = text.split(", ")
    assert first.startswith("cuda:0 layers 0-") and second.startswith("cuda:1 layers ") and "-3 (" in second


def test_a_shared_weight_is_counted_once():
    tied = llama(layers=1, tied=True)
    embedding = tied.model.embed_tokens.weight
    assert tied.lm_head.weight is embedding
    assert _bytes(tied.model.embed_tokens, tied.lm_head) == embedding.numel() * embedding.element_size()


def test_a_tied_output_layer_stays_with_the_input_embedding():
    model = llama(layers=4, tied=True)
    device_map = balanced_device_map(model, GPUS[:2])
    check_device_map(model, device_map)
    assert device_map["lm_head"] == device_map["model.embed_tokens"] == "cuda:0"


def test_the_layers_are_found_by_structure_not_by_name():
    """GPT-2 names its parts transformer.h / wte / wpe / ln_f: no name is spelled out anywhere."""
    model = GPT2LMHeadModel(GPT2Config(vocab_size=500, n_embd=32, n_layer=4, n_head=2, n_positions=64))
    device_map = balanced_device_map(model, GPUS[:2])
    check_device_map(model, device_map)
    assert {device_map[name] for name in ("transformer.wte", "transformer.wpe", "transformer.ln_f", "lm_head")} == {"cuda:0"}
    layer_devices = [device_map[f"transformer.h.{i}"] for i in range(4)]
    assert layer_devices == sorted(layer_devices) and set(layer_devices) == {"cuda:0", "cuda:1"}


def test_one_device_or_none_moves_the_model_without_hooks(tiny_model):
    model, _ = load_causal_lm(tiny_model)
    assert place_replica(model, []) is model and input_device(model) == torch.device("cpu")
    assert not any(hasattr(m, "_hf_hook") for m in model.modules())


@pytest.fixture(scope="module")
def plain_and_spread(tiny_model):
    plain, tokenizer = load_causal_lm(tiny_model)
    spread, _ = load_replica(tiny_model, "float32", devices=["cpu", "cpu"])
    return plain, spread, tokenizer


def test_a_spread_replica_runs_through_hooks_and_scores_the_same(plain_and_spread):
    plain, spread, tokenizer = plain_and_spread
    assert all(hasattr(layer, "_hf_hook") for layer in spread.model.layers)  # the multi-device path
    settings = EvalConfig(batch_size=4, pack_length=64)
    one, other = (evaluate(m, tokenizer, REQUESTS, "counterfact", settings) for m in (plain, spread))
    assert other.records == one.records
    assert other.scores == one.scores


def test_a_spread_replica_generates_the_same(plain_and_spread):
    plain, spread, tokenizer = plain_and_spread
    prompts = ["The capital of France is", "Apple was founded by"]
    assert generate_greedy(spread, tokenizer, prompts, 6, 2) == generate_greedy(plain, tokenizer, prompts, 6, 2)
    cfg = AugmentConfig(prefix_bank=4, n_paraphrase=2, prefix_tokens=5, prefix_starts=["The", "I"])
    assert generate_prefixes(spread, tokenizer, cfg, seed=1) == generate_prefixes(plain, tokenizer, cfg, seed=1)
    check_packing(spread, pad_token_id(tokenizer))  # does not raise


@pytest.mark.parametrize("tuning", ["lora", "full"])
def test_an_edited_replica_is_merged_before_it_is_spread(tiny_model, tmp_path, tuning):
    trained_dir = trained(tiny_model, tmp_path / tuning, tuning)
    base, tokenizer = load_causal_lm(tiny_model)
    one, _ = load_replica(tiny_model, "float32", trained_dir, devices=[])
    spread, _ = load_replica(tiny_model, "float32", trained_dir, devices=["cpu", "cpu"])
    ids = torch.tensor([[5, 6, 7, 8, 9]])
    with torch.no_grad():
        edited = one(input_ids=ids).logits
        assert torch.equal(spread(input_ids=ids).logits, edited)
        assert not torch.allclose(base(input_ids=ids).logits, edited)  # the edit is in


def test_gpus_per_actor_above_one_must_be_whole():
    assert EvalConfig(gpus_per_actor=4).gpus_per_actor == 4
    assert EvalConfig(gpus_per_actor=0.5).gpus_per_actor == 0.5  # replicas sharing a GPU
    with pytest.raises(ConfigError, match="gpus_per_actor"):
        EvalConfig(gpus_per_actor=1.5)


def test_a_local_ray_instance_is_refused_a_config_asking_more_gpus_than_it_has():
    """Nothing adds GPUs to a machine: the job fails at its start, naming the key, instead of
    Ray Train waiting for them for ever after the unedited evaluation."""
    import ray

    from ftedit.config import RunConfig, from_dict
    from ftedit.pipeline import check_local_gpus, init_ray

    def config(train=None, evaluation=None):
        return from_dict(RunConfig, {"train": train or {}, "eval": evaluation or {}})

    check_local_gpus(config(), 0)  # the defaults train and score on CPUs
    check_local_gpus(config({"use_gpu": True, "num_workers": 4, "micro_batch_size": 4, "batch_size": 32}, {"gpus_per_actor": 4}), 4)
    check_local_gpus(config(evaluation={"gpus_per_actor": 0.5}), 1)
    refused = [(config({"use_gpu": True, "num_workers": 1}), 0, "train.use_gpu"),
               (config({"use_gpu": True, "num_workers": 8, "micro_batch_size": 4, "batch_size": 32}), 4, "train.num_workers"),
               (config(evaluation={"gpus_per_actor": 2}), 1, "eval.gpus_per_actor")]
    for cfg, gpus, key in refused:
        with pytest.raises(ConfigError) as info:
            check_local_gpus(cfg, gpus)
        assert info.value.key == key and f"the local Ray instance this job started has {gpus} GPU(s)" in str(info.value)
        # With none at all, the message says how to run without them, or where GPUs are.
        assert ("train.use_gpu=false eval.gpus_per_actor=0" in info.value.message) == (gpus == 0)

    gpu_job = config({"use_gpu": True, "num_workers": 1})
    assert not ray.is_initialized() and torch.cuda.device_count() == 0  # this test runs where CI runs: no GPU
    with pytest.raises(ConfigError, match="train.use_gpu: 1 training worker"):
        init_ray(gpu_job)
    assert not ray.is_initialized()  # the instance it started is shut down again
    # A dry run of a GPU config on this machine is not refused: test_dry_run.py plans the paper
    # configs, which set train.use_gpu, here.
