"""The DeepSpeed engine as the train loop sets it up, built in-process on the tiny model, one rank:
`train.precision=bf16-mixed` computes in bf16 and keeps fp32 weights; leftover op-build locks are
found before they hang a run; Ray Train's controller polls the workers at train.controller_poll_s."""

import os
import time
from pathlib import Path

import pytest
import torch

from ftedit.config import LoraConfig, TrainConfig
from ftedit.loss import lm_loss
from ftedit.model import load_causal_lm, prepare_for_autocast, prepare_trainable, trainable_parameters
from ftedit.tokenize import IGNORE_INDEX, pack_batch
from ftedit.train import cpu_comm_op_built, deepspeed_config, stale_build_locks


@pytest.fixture(scope="module")
def single_rank():
    """A one-rank process group, torn down afterwards with the environment it needed (later tests
    start Ray, whose processes would inherit it)."""
    env = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29517", "RANK": "0", "WORLD_SIZE": "1",
           "LOCAL_RANK": "0", "LOCAL_SIZE": "1"}
    saved = {key: os.environ.get(key) for key in env}
    os.environ.update(env)
    import deepspeed

    deepspeed.init_distributed(dist_backend="gloo")
    yield deepspeed
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


def _engine(deepspeed, tiny_model, precision: str):
    train = TrainConfig(precision=precision, batch_size=2, micro_batch_size=2, lr=1e-2)
    model, _ = load_causal_lm(tiny_model)
    model = prepare_trainable(model, train, LoraConfig(rank=4, alpha=8), seed=0)
    if precision == "bf16-mixed":
        assert prepare_for_autocast(model) > 0  # as the train loop does: frozen linears in bf16
    params = trainable_parameters(model)
    optimizer = torch.optim.AdamW(params, lr=train.lr)
    engine, *_ = deepspeed.initialize(model=model, optimizer=optimizer, config=deepspeed_config(train))
    return engine, params


@pytest.mark.parametrize("precision, compute_dtype", [("fp32", torch.float32), ("bf16-mixed", torch.bfloat16)])
def test_mixed_precision_computes_in_bf16_and_keeps_fp32_weights(single_rank, tiny_model, precision, compute_dtype):
    engine, params = _engine(single_rank, tiny_model, precision)
    batch = pack_batch([[5, 6, 7, 8, 9]] * 2, [[IGNORE_INDEX, IGNORE_INDEX, 7, 8, 9]] * 2, pad_id=0, row_length=16)
    logits = engine(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False).logits
    assert logits.dtype == compute_dtype

    before = [p.detach().clone() for p in params]
    losses = []
    for _ in range(3):
        loss = lm_loss(engine, batch)
        engine.backward(loss)
        engine.step()
        losses.append(loss.item())
    assert all(p.dtype == torch.float32 for p in params)
    assert any(not torch.equal(b, p.detach()) for b, p in zip(before, params)), "no trainable weight moved"
    assert losses[-1] < losses[0]


def test_stale_build_locks_finds_the_old_leftovers_only(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    hour_ago = time.time() - 3600
    locks = {name: tmp_path / name / "lock" for name in ("deepspeed_shm_comm", "py311_cpu/fused_adam", "py311_cpu/cpu_adam")}
    for lock in locks.values():
        lock.parent.mkdir(parents=True)
        lock.touch()
    for name in ("deepspeed_shm_comm", "py311_cpu/fused_adam"):
        os.utime(locks[name], (hour_ago, hour_ago))
    # The fresh lock may belong to a build running now: it is not reported.
    assert stale_build_locks() == sorted([locks["deepspeed_shm_comm"], locks["py311_cpu/fused_adam"]])
    assert stale_build_locks(max_age_s=7200) == []


def test_the_cpu_allreduce_op_counts_as_built_once_its_library_is_there(tmp_path, monkeypatch):
    """The job says it is compiling DeepSpeed's CPU op (41 s on 2 cores, silent before) unless
    the built library is in torch's extensions folder: at its top, as with TORCH_EXTENSIONS_DIR
    set, or in the per-build subfolder torch uses without it. A lock alone is a build under way."""
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    assert not cpu_comm_op_built()
    (tmp_path / "deepspeed_shm_comm").mkdir()
    (tmp_path / "deepspeed_shm_comm" / "lock").touch()
    (tmp_path / "py311_cpu" / "fused_adam").mkdir(parents=True)
    (tmp_path / "py311_cpu" / "fused_adam" / "fused_adam.so").touch()
    assert not cpu_comm_op_built()
    (tmp_path / "py311_cpu" / "deepspeed_shm_comm").mkdir()
    (tmp_path / "py311_cpu" / "deepspeed_shm_comm" / "deepspeed_shm_comm.so").touch()
    assert cpu_comm_op_built()
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path / "py311_cpu"))
    assert cpu_comm_op_built()


def test_probe_scoring_runs_on_a_model_prepared_for_autocast(tiny_model):
    """Under bf16-mixed the worker holds frozen weights in bf16; the per-epoch probe must score
    that model (under autocast) rather than fail on fp32 inputs meeting bf16 weights."""
    from types import SimpleNamespace

    from ftedit.config import RunConfig, from_dict
    from ftedit.requests import EditRequest
    from ftedit.train import _probe_metrics

    cfg = from_dict(RunConfig, {"train": {"precision": "bf16-mixed"}})
    model, tokenizer = load_causal_lm(tiny_model)
    model = prepare_trainable(model, cfg.train, LoraConfig(rank=4), seed=0)
    assert prepare_for_autocast(model) > 0
    engine = SimpleNamespace(module=model, device=torch.device("cpu"), train=model.train)
    probe = [EditRequest("a", "The capital of France is", "France", "Rome", "Paris",
                         paraphrases=("France's capital city is called",),
                         neighbourhood=("The Louvre is in the city of",))]
    metrics = _probe_metrics(engine, tokenizer, probe, {"metric_kind": "counterfact"}, cfg, rank=0)
    assert {"probe_efficacy", "probe_generalization", "probe_locality", "probe_edit_score"} <= set(metrics)
    with pytest.raises(RuntimeError):  # the same scoring without autocast cannot run on it
        _probe_metrics(engine, tokenizer, probe, {"metric_kind": "counterfact"}, from_dict(RunConfig, {}), rank=0)


def test_ray_train_polls_its_workers_at_the_configured_interval_for_that_run_only(tmp_path, monkeypatch):
    """Ray Train's controller reads its poll interval from the driver's environment when the
    trainer starts; `fit` sets it from train.controller_poll_s for that call, on success or failure,
    and leaves the environment as it found it."""
    from types import SimpleNamespace

    import ray.train.torch

    from ftedit.config import RunConfig, from_dict
    from ftedit.train import fit

    seen = []

    class Trainer:
        def __init__(self, *args, **kwargs):
            pass

        def fit(self):
            seen.append(os.environ.get("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"))
            if len(seen) == 2:
                raise RuntimeError("the workers died")
            return SimpleNamespace(checkpoint=SimpleNamespace(path=str(tmp_path / "final")), metrics={"epoch": 1})

    monkeypatch.setattr(ray.train.torch, "TorchTrainer", Trainer)
    monkeypatch.delenv("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", raising=False)
    cfg = from_dict(RunConfig, {"train": {"controller_poll_s": 0.5}, "output": {"dir": str(tmp_path / "run")}})
    checkpoint, metrics = fit(cfg, tmp_path / "model", dataset=None, n_examples=4, storage_dir=tmp_path)
    assert Path(checkpoint.path).name == "final" and "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S" not in os.environ
    monkeypatch.setenv("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "7")  # the user's own: replaced, then back
    with pytest.raises(RuntimeError, match="the workers died"):
        fit(cfg, tmp_path / "model", dataset=None, n_examples=4, storage_dir=tmp_path)
    assert seen == ["0.5", "0.5"] and os.environ["RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"] == "7"
    # The variable is Ray's, and Ray hands it from the driver to the controller it starts: a Ray
    # that renamed it would leave the setting doing nothing, so this pins it.
    from ray.train.v2._internal import constants

    assert constants.HEALTH_CHECK_INTERVAL_S_ENV_VAR == "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"
    assert constants.HEALTH_CHECK_INTERVAL_S_ENV_VAR in constants.ENV_VARS_TO_PROPAGATE
