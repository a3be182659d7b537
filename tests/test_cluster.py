"""cluster.yaml is a valid Ray autoscaler config that can run the mass-edit job."""

import copy

import yaml

from tests.conftest import REPO
from tests.test_dry_run import PAPER_SCALE_CONFIGS


def _cluster() -> dict:
    return yaml.safe_load((REPO / "cluster.yaml").read_text())


def test_cluster_yaml_passes_the_autoscalers_own_schema():
    from ray.autoscaler._private.util import prepare_config, validate_config

    # prepare_config merges the AWS provider's defaults, as `ray up` does; validate_config checks
    # the result against ray-schema.json and the node-type rules. Both raise on a bad config.
    validate_config(prepare_config(copy.deepcopy(_cluster())))


def test_cluster_has_a_cpu_head_and_gpu_workers_that_install_ftedit():
    cluster = _cluster()
    types = cluster["available_node_types"]
    head = types[cluster["head_node_type"]]
    assert head["max_workers"] == 0
    assert any("--num-gpus=0" in cmd for cmd in cluster["head_start_ray_commands"])  # no training on the head
    gpu_types = {name: t for name, t in types.items() if name != cluster["head_node_type"]}
    assert gpu_types and all(t["min_workers"] == 0 for t in gpu_types.values())  # scale from zero
    assert sum(t["max_workers"] for t in gpu_types.values()) >= cluster["max_workers"]
    assert any(t["node_config"].get("InstanceMarketOptions", {}).get("MarketType") == "spot" for t in gpu_types.values())
    # The paper configs keep checkpoints in S3, and Ray's AWS provider gives its default instance
    # profile to the head alone: without one of their own, GPU nodes cannot write there.
    assert all("IamInstanceProfile" in t["node_config"] for t in gpu_types.values())
    # The checkout is synced to every node and installed with the same pins as locally.
    mount = next(target for target, source in cluster["file_mounts"].items() if source == ".")
    setup = " && ".join(cluster["setup_commands"])
    assert "torch==2.13.0" in setup and f"-e {mount}" in setup and "constraints.txt" in setup
    assert setup.index("torch==") < setup.index(f"-e {mount}")  # torch first (platform notes)


def test_paper_configs_read_their_data_where_the_cluster_mounts_it():
    from ftedit.config import load_config

    mounts = {target.replace("~", "/home/ray"): source for target, source in _cluster()["file_mounts"].items()}
    for name in PAPER_SCALE_CONFIGS:
        cfg = load_config(REPO / "configs" / name)
        for path in (cfg.data.requests, cfg.data.fact_pool):
            mount = next((m for m in mounts if path.startswith(m + "/")), None)
            assert mount is not None, (name, path)
            local = REPO / mounts[mount] / path[len(mount) + 1:]
            assert local.is_file() or not (REPO / mounts[mount]).is_dir(), local  # data present: the file exists
        assert cfg.train.use_gpu and cfg.train.max_failures > 0 and cfg.output.dir.startswith("/")
