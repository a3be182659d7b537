"""What a cluster of several nodes changes, on a cluster simulated here (`ray.cluster_utils`):
a head node with the driver and a second node, each its own raylet. The nodes share this
machine's disk, so where a task ran is read from Ray's state API, not from missing files."""

import json
import time

import pytest

pytestmark = pytest.mark.timeout(600)


@pytest.fixture
def two_nodes():
    import ray
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": True})
    cluster.add_node(num_cpus=3)  # where tasks would go when nothing pins them: more free CPUs
    ray.init(address=cluster.address)
    try:
        yield ray.get_runtime_context().get_node_id()
    finally:
        ray.shutdown()
        cluster.shutdown()


def test_requests_files_are_read_on_the_drivers_node(two_nodes, tmp_path):
    """The job checks the requests files where its driver runs; the tasks that read them run
    there too, so a file uploaded to the head node alone is enough (left to themselves, most of
    these 8 tasks went to the other node)."""
    from ray.util.state import list_tasks

    from ftedit.config import DataConfig
    from ftedit.request_dataset import open_requests

    for part in range(8):
        records = [{"case_id": f"c{part}-{i}", "prompt": f"The home town of Person{part}x{i} is",
                    "subject": f"Person{part}x{i}", "target_new": "Lyon", "target_true": "Paris"} for i in range(5)]
        (tmp_path / f"part-{part}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    source = open_requests(DataConfig(requests=str(tmp_path / "part-*.jsonl")))
    assert source.n_requests == 40
    readers = [t for t in list_tasks(detail=True, limit=10_000) if "_parse_files" in t.name]
    assert len(readers) == 8 and {t.node_id for t in readers} == {two_nodes}


def test_sweep_trial_drivers_run_on_the_sweeps_node(two_nodes, tmp_path):
    """Each trial writes its run directory where its driver runs, and the sweep reads them back
    from its own node: every trial driver runs there (left to itself, Tune spreads them)."""
    import ray
    from ray import tune

    from ftedit.tune import trial_driver_resources

    def trial(config):
        tune.report({"node": ray.get_runtime_context().get_node_id()})

    tuner = tune.Tuner(tune.with_resources(trial, trial_driver_resources()),
                       param_space={"x": tune.grid_search(list(range(6)))},
                       run_config=tune.RunConfig(storage_path=str(tmp_path), name="pinned"))
    results = tuner.fit()
    assert len(results) == 6 and {r.metrics["node"] for r in results} == {two_nodes}


def test_the_unedited_scores_are_written_and_read_on_the_drivers_node(two_nodes, tmp_path):
    """The unedited model's scores, scored wherever the actors ran, go to the run directory on
    the driver's node and come back from it in order: every write and read task runs there."""
    import ray
    from ray.util.state import list_tasks

    from ftedit import unedited

    ray.data.DataContext.get_current().execution_options.preserve_order = True
    rows = [{"position": i, "request": f"r{i}", "scores": "{}", "locality": "[]"} for i in range(64)]
    scored = ray.data.from_items(rows, override_num_blocks=8).map_batches(lambda b: b).materialize()
    unedited.save(scored, tmp_path / "unedited", {})
    assert unedited.load(tmp_path / "unedited").take_all() == rows
    files = len(list((tmp_path / "unedited" / unedited.SCORES_DIR).glob("*.parquet")))
    deadline = time.monotonic() + 60  # the state API learns of finished tasks a little later
    while True:
        tasks = [t for t in list_tasks(detail=True, limit=10_000) if t.name == "Write" or "_read_files" in t.name]
        if sum("_read_files" in t.name for t in tasks) >= files or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert files > 1 and sum("_read_files" in t.name for t in tasks) == files, [t.name for t in tasks]
    assert {t.node_id for t in tasks} == {two_nodes}, [(t.name, t.node_id) for t in tasks]
