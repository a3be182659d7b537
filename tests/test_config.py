from pathlib import Path

import pytest

from ftedit.config import ConfigError, RunConfig, dump_config, load_config

REPO = Path(__file__).resolve().parents[1]


def write(tmp_path, text: str) -> Path:
    path = tmp_path / "c.yaml"
    path.write_text(text)
    return path


def test_defaults_and_yaml_and_overrides(tmp_path):
    path = write(tmp_path, "train:\n  lr: 1.0e-4\n  epochs: 3\naugment:\n  n_random: 2\n")
    cfg = load_config(path, ["train.epochs=5", "lora.rank=8", "train.layers=[0, 2]", "data.limit=null"])
    assert cfg.train.lr == 1e-4 and cfg.train.epochs == 5 and cfg.augment.n_random == 2
    assert cfg.lora.rank == 8 and cfg.train.layers == [0, 2] and cfg.data.limit is None
    assert cfg.augment.n_paraphrase == RunConfig().augment.n_paraphrase  # untouched default


def test_int_accepted_for_float_but_bool_not_for_int(tmp_path):
    assert load_config(None, ["train.lr=1"]).train.lr == 1.0
    with pytest.raises(ConfigError, match=r"train\.epochs: expected int"):
        load_config(None, ["train.epochs=true"])


@pytest.mark.parametrize(
    "override, key",
    [
        ("train.lrr=1", "train.lrr"),  # unknown key
        ("trian.lr=1", "trian"),  # unknown section
        ("train.lr=fast", "train.lr"),  # wrong type
        ("train.lr=0", "train.lr"),  # impossible value
        ("train.lr=-1e-3", "train.lr"),
        ("train.num_workers=0", "train.num_workers"),
        ("augment.n_random=-1", "augment.n_random"),
        ("augment.n_same_answer=-1", "augment.n_same_answer"),
        ("augment.n_paraphrase=-2", "augment.n_paraphrase"),
        ("augment.continuation_tokens=-1", "augment.continuation_tokens"),
        ("augment.n_paraphrase=99", "augment.prefix_bank"),  # bank smaller than draws
        ("train.zero_stage=4", "train.zero_stage"),
        ("train.max_failures=-2", "train.max_failures"),  # -1 is "no limit"
        ("train.keep_checkpoints=0", "train.keep_checkpoints"),
        ("train.checkpoint_every_steps=-1", "train.checkpoint_every_steps"),
        ("train.storage_path=runs/checkpoints", "train.storage_path"),  # relative: another place per node
        ("train.batch_size=30", "train.batch_size"),  # not a multiple of micro * workers
        ("train.tuning=qlora", "train.tuning"),
        ("loss.mode=sequence", "loss.mode"),
        ("loss.anchor_weight=-1", "loss.anchor_weight"),
        ("data.limit=0", "data.limit"),
        ("train.layers=[0, -1]", "train.layers"),
        ("lora.dropout=1.5", "lora.dropout"),
        ("train.worker_env=[GOMP_SPINCOUNT]", "train.worker_env"),  # not a mapping
        ("train.worker_env={NCCL_DEBUG: [INFO]}", "train.worker_env.NCCL_DEBUG"),
    ],
)
def test_bad_values_name_the_dotted_key(override, key):
    with pytest.raises(ConfigError) as info:
        load_config(None, [override])
    assert info.value.key == key
    assert str(info.value).startswith(f"{key}:")


def test_a_config_error_survives_pickling_as_raised_in_a_ray_worker():
    """Ray sends a worker's or Tune trial's exception to the driver pickled; it must arrive whole."""
    import pickle

    with pytest.raises(ConfigError) as info:
        load_config(None, ["train.lr=-1"])
    copy = pickle.loads(pickle.dumps(info.value))
    assert type(copy) is ConfigError
    assert (copy.key, copy.message, str(copy)) == (info.value.key, info.value.message, str(info.value))


def test_unknown_key_in_yaml_names_file_path(tmp_path):
    path = write(tmp_path, "model:\n  pth: x\n")
    with pytest.raises(ConfigError, match=r"model\.pth: unknown key"):
        load_config(path)


def test_missing_config_file_and_non_mapping(tmp_path):
    with pytest.raises(ConfigError, match="no such file"):
        load_config(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(write(tmp_path, "- 1\n- 2\n"))
    with pytest.raises(ConfigError, match="section.key=value"):
        load_config(None, ["train.lr"])


def test_resolved_config_round_trips(tmp_path):
    cfg = load_config(None, ["train.lr=3e-4", "train.layers=[1]", "lora.target_modules=[q_proj, v_proj]"])
    dump_config(cfg, tmp_path / "resolved.yaml")
    assert load_config(tmp_path / "resolved.yaml") == cfg


def test_grad_accumulation_is_derived_from_the_global_batch():
    cfg = load_config(None, ["train.batch_size=32", "train.micro_batch_size=8", "train.num_workers=2"])
    assert cfg.train.grad_accum_steps == 2


@pytest.mark.parametrize("path", sorted((REPO / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_configs_validate(path, request):
    if path.name.startswith("sweep-"):
        from ftedit.tune import load_sweep

        # load_sweep reads both splits to prove them disjoint, so it needs ../shared/data
        request.getfixturevalue("shared_data")
        load_sweep(path)  # a run config plus its sweep section
    else:
        load_config(path)


def test_run_name_follows_the_config_and_the_training_data_so_only_the_same_job_resumes():
    from ftedit.augment import DigestSet
    from ftedit.checkpoint import run_name
    from ftedit.pipeline import Augmentation, training_inputs_digest
    from ftedit.requests import Fact

    cfg = load_config(REPO / "configs" / "smoke.yaml")
    name = run_name(cfg)
    assert name.startswith("smoke-") and run_name(load_config(REPO / "configs" / "smoke.yaml")) == name
    assert run_name(load_config(REPO / "configs" / "smoke.yaml", ["output.overwrite=true"])) == name
    assert run_name(load_config(REPO / "configs" / "smoke.yaml", ["train.lr=1e-3"])) != name

    # The same config over other requests or another pool is another run.
    def digest(requests_digest, pool, model_files="m1"):
        identity = {"requests_digest": requests_digest, "model_files": model_files}
        return training_inputs_digest(identity, Augmentation(["prefix"], pool, DigestSet(), None))

    pool = [Fact("The Louvre is in", "Paris", "The Louvre")]
    same = digest("r1", pool)
    assert run_name(cfg, same) == run_name(cfg, digest("r1", list(pool))) != name
    assert run_name(cfg, digest("r2", pool)) != run_name(cfg, same)
    assert run_name(cfg, digest("r1", [Fact("The Louvre is in", "Rome", "The Louvre")])) != run_name(cfg, same)
    # A fresh copy of the same model (new file times on a replaced head node) keeps the name.
    assert digest("r1", pool, model_files="m2") == same


def test_worker_env_goes_to_the_training_workers_as_strings():
    from ftedit.train import worker_runtime_env

    cfg = load_config(None, ["train.worker_env={GOMP_SPINCOUNT: 300000, NCCL_DEBUG: INFO}"])
    assert worker_runtime_env(cfg.train) == {"env_vars": {"GOMP_SPINCOUNT": "300000", "NCCL_DEBUG": "INFO"}}
    assert worker_runtime_env(load_config(None).train) is None  # the job's runtime env untouched
