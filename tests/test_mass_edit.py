"""End to end: jobs/mass_edit.py on configs/smoke.yaml (tiny random Llama, 2 Ray Train workers,
DeepSpeed ZeRO-2 + LoRA), plus the failure paths of the job."""

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.timeout(900)


def run_job(*args, timeout=600):
    return subprocess.run(
        [sys.executable, "jobs/mass_edit.py", *args], cwd=REPO, capture_output=True, text=True, timeout=timeout
    )


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("smoke") / "run"
    proc = run_job("--config", "configs/smoke.yaml", f"output.dir={out}")
    assert proc.returncode == 0, proc.stderr[-4000:]
    return out, proc


def test_outputs_are_complete(smoke_run):
    out, proc = smoke_run
    for name in ("config.yaml", "prefixes.json", "per_edit.jsonl", "summary.json", "report.md",
                 "adapter/adapter_model.safetensors", "model/config.json", "unedited/evaluation.json"):
        assert (out / name).is_file(), name
    assert not out.with_name(out.name + ".incomplete").exists()
    summary = json.loads((out / "summary.json").read_text())
    report = (out / "report.md").read_text()
    assert summary["n_edits"] == 6 and summary["wall_seconds"] > 0
    stages = summary["stage_seconds"]  # where the time went, stage by stage, in run order
    assert list(stages) == ["read requests, prefixes", "training examples", "unedited evaluation", "training",
                            "merged model saved", "edited evaluation"]
    assert all(t >= 0 for t in stages.values()) and 0 < sum(stages.values()) <= summary["wall_seconds"] + 0.5
    assert "Wall time, end to end: " in report and " s (read requests, prefixes " in report
    for side in ("before", "after"):
        for key in ("efficacy", "generalization", "locality", "edit_score", "es", "ps", "ns", "em", "pm", "nm"):
            assert 0 <= abs(summary[side][key]) <= 100, (side, key)
    rows = [json.loads(line) for line in (out / "per_edit.jsonl").read_text().splitlines()]
    assert [r["case_id"] for r in rows] == [f"sample-{i}" for i in range(6)]
    assert len(json.loads((out / "prefixes.json").read_text())) == 8
    assert "| Efficacy |" in report
    assert summary["unedited_scores"] == "scored by this run" and "The before column" not in report
    assert "edit score" in proc.stdout  # the one-line result for the user
    assert "loss" in proc.stderr and "tokens/s" in proc.stderr  # progress while training
    # ... and while the scoring actors evaluate (Ray workers log nothing at INFO unless told to)
    assert "unedited model: scored 6 requests" in proc.stderr, proc.stderr[-4000:]
    assert re.search(r"(?<!un)edited model: scored 6 requests", proc.stderr), proc.stderr[-4000:]
    # ... and while the prefix task samples on its worker (a dry run of a big model waits on it)
    assert "sampled 8 prefixes of up to 4 tokens" in proc.stderr, proc.stderr[-4000:]
    # Ray Data's start and plan lines, two per dataset run (the driver's and the training split's),
    # are off; its line at the end of each run stays.
    assert "Starting execution of Dataset" not in proc.stderr and "Execution plan of Dataset" not in proc.stderr
    assert "execution finished in" in proc.stderr


def test_efficacy_goes_from_chance_to_all_edits(smoke_run):
    summary = json.loads((smoke_run[0] / "summary.json").read_text())
    # A random model is indifferent between the two answers (which one it prefers is a coin flip
    # over 6 edits); after editing every new target wins, by a wide probability margin.
    assert abs(summary["before"]["em"]) < 5.0
    assert summary["after"]["efficacy"] == 100.0
    assert summary["after"]["em"] > 50.0
    assert summary["examples"]["by_kind"] == {"edit": 6, "paraphrase": 18, "random": 18}
    assert summary["train"]["optimizer_steps"] > 0


def test_merged_checkpoint_reloads_and_reproduces_post_edit_scores(smoke_run):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ftedit.config import EvalConfig
    from ftedit.evaluate import evaluate
    from ftedit.requests import load_requests

    out = smoke_run[0]
    summary = json.loads((out / "summary.json").read_text())
    model = AutoModelForCausalLM.from_pretrained(out / "model")
    tok = AutoTokenizer.from_pretrained(out / "model")
    requests = load_requests(REPO / "data" / "sample_edits.jsonl", limit=6).requests
    result = evaluate(model, tok, requests, "counterfact", EvalConfig(batch_size=8))
    for key in ("es", "ps", "ns", "edit_score"):
        assert result.summary[key] == pytest.approx(summary["after"][key], abs=1e-6), key
    for key in ("em", "pm", "nm"):
        assert result.summary[key] == pytest.approx(summary["after"][key], abs=1e-3), key


def test_bad_request_fails_before_anything_is_written(tmp_path):
    bad = tmp_path / "edits.jsonl"
    bad.write_text(
        json.dumps({"case_id": "ok", "prompt": "The capital of France is", "subject": "France", "target_new": "Rome"}) + "\n"
        + json.dumps({"case_id": "c7", "prompt": "Paris is in", "subject": "Paris", "target_new": 42}) + "\n"
    )
    out = tmp_path / "run"
    proc = run_job("--config", "configs/smoke.yaml", f"data.requests={bad}", f"output.dir={out}", timeout=120)
    assert proc.returncode == 2
    assert str(bad) in proc.stderr and "record 1" in proc.stderr and "c7" in proc.stderr
    assert "'target_new'" in proc.stderr
    assert not out.exists() and not out.with_name("run.incomplete").exists()


def test_a_fact_pool_the_edits_cover_is_refused_before_anything_is_written(tmp_path):
    # The ten sample edits as their own pool: every fact is about an edited subject.
    out = tmp_path / "run"
    proc = run_job("--config", "configs/smoke.yaml", "data.limit=10", "data.fact_pool=data/sample_edits.jsonl",
                   f"output.dir={out}", timeout=300)
    assert proc.returncode == 2, proc.stderr[-4000:]
    assert "data/sample_edits.jsonl: none of its 10 facts is usable" in proc.stderr, proc.stderr[-4000:]
    assert not out.exists() and not out.with_name("run.incomplete").exists()


def test_a_fact_pool_smaller_than_the_edits_is_planned_with_a_warning(tmp_path):
    proc = run_job("--config", "configs/smoke.yaml", "--dry-run", "data.fact_pool_limit=3",
                   f"output.dir={tmp_path / 'run'}", timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert json.loads(proc.stdout)["fact_pool"] == 3
    assert "fact pool: 3 of 3 facts usable" in proc.stderr
    assert "6 edits draw their unedited facts from only 3 usable pool facts" in proc.stderr, proc.stderr[-4000:]


def test_skipped_requests_are_named_on_the_console_up_to_ten(caplog):
    from ftedit.pipeline import warn_skipped

    with caplog.at_level("WARNING", logger="ftedit.pipeline"):
        warn_skipped([f"edits.json: record {i}: field 'target_new': conflict" for i in range(79)])
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 11 and messages[9].endswith("record 9: field 'target_new': conflict")
    assert messages[10] == "... and 69 more skipped invalid requests (79 in all; the run's report.md and summary.json list them)"
    caplog.clear()
    with caplog.at_level("WARNING", logger="ftedit.pipeline"):
        warn_skipped(["a.json: record 0: field 'prompt': empty"])
    assert [r.getMessage() for r in caplog.records] == ["skipped invalid request: a.json: record 0: field 'prompt': empty"]


def test_bad_config_value_names_the_key(tmp_path):
    proc = run_job("--config", "configs/smoke.yaml", "train.lr=-1", f"output.dir={tmp_path / 'r'}", timeout=120)
    assert proc.returncode == 2 and "train.lr: must be > 0" in proc.stderr
    assert not (tmp_path / "r").exists()


def test_existing_output_dir_is_not_overwritten(tmp_path):
    (tmp_path / "r").mkdir()
    proc = run_job("--config", "configs/smoke.yaml", f"output.dir={tmp_path / 'r'}", timeout=120)
    assert proc.returncode == 2 and "output.overwrite=true" in proc.stderr
    assert "Started a local Ray instance" not in proc.stderr  # refused before any start-up cost


def test_a_run_that_fails_midway_leaves_nothing_that_looks_complete(tmp_path, monkeypatch):
    import ftedit.dataset
    import ftedit.pipeline
    from ftedit.config import load_config

    def crash(*args, **kwargs):
        raise RuntimeError("worker node lost")

    import ray

    monkeypatch.setattr(ftedit.dataset, "build_training_dataset", crash)
    cfg = load_config(REPO / "configs" / "smoke.yaml", [f"output.dir={tmp_path / 'run'}", "data.limit=2"])
    monkeypatch.chdir(REPO)
    try:
        with pytest.raises(RuntimeError, match="worker node lost"):
            ftedit.pipeline.run_mass_edit(cfg)
    finally:
        ray.shutdown()
    assert not (tmp_path / "run").exists()
    staged = tmp_path / "run.incomplete"
    assert staged.is_dir() and not (staged / "summary.json").exists()


def test_zero3_full_finetuning_with_similar_facts_and_own_answers(tmp_path, tiny_embedder):
    """The other training path: ZeRO-3 (parameters gathered to save), full fine-tuning of one
    layer, similar facts by embedding, locality targets from the unedited model and edits
    anchored with its continuations, weighted apart from the targets in the loss; and two model
    replicas for the stages that run the unedited model (generation, scoring) on 2 CPUs."""
    out = tmp_path / "run"
    proc = run_job(
        "--config", "configs/smoke.yaml", f"output.dir={out}", "data.limit=4",
        "train.tuning=full", "train.layers=[1]", "train.zero_stage=3", "train.lr=5e-3",
        "augment.n_similar=2", "augment.locality_target=model", f"augment.embedding_model={tiny_embedder}",
        "augment.continuation_tokens=3", "loss.anchor_weight=0.5", "eval.actors=2", "eval.cpus_per_actor=0.5",
        timeout=400,  # a Ray Data stall (replicas holding every CPU) fails here instead of hanging
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    # The one-block requests file was cut so that both replicas scored half of it, each time.
    for model in ("unedited", "edited"):
        assert len(re.findall(rf"(?<!un){model} model: scored 2 requests", proc.stderr)) == 2, proc.stderr[-4000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["examples"]["by_kind"] == {"edit": 4, "paraphrase": 12, "random": 12, "similar": 8}
    anchors = [line for line in proc.stderr.splitlines() if "continuation anchor:" in line]
    assert len(anchors) == 3, proc.stderr[-4000:]  # the edits' rows carry the continuation column
    # The model was built already partitioned over both workers (what lets a 70B model load).
    assert "every weight built partitioned over 2 worker(s) by zero.Init: True" in proc.stderr
    assert (out / "trained_layers" / "trained_weights.safetensors").is_file()
    from safetensors.torch import load_file

    trained = load_file(str(out / "trained_layers" / "trained_weights.safetensors"))
    assert trained and all(".layers.1." in name for name in trained)
    assert all(t.numel() > 0 for t in trained.values())  # gathered, not ZeRO-3 placeholders
    assert summary["after"]["em"] > summary["before"]["em"] + 20, (summary["before"], summary["after"])


def test_the_unedited_scores_of_another_run_are_reused_and_a_resubmitted_run_keeps_its_own(smoke_run, tmp_path):
    """`eval.unedited_from`: a run that trains otherwise on the same edits takes the smoke run's
    unedited scores instead of scoring the base model again. Its driver is killed after its first
    checkpoint reached the bucket (moto's S3 server); the same command again finds the scores in
    its directory and resumes training from the bucket. It trains with `train.precision=auto`,
    which its workers resolve for their device and the summary records. A run on other edits is
    refused before anything is written."""
    import torch

    from ftedit.precision import native_bf16

    from tests.s3_server import s3_bucket

    first = smoke_run[0]
    out = tmp_path / "run"
    log_path = tmp_path / "killed.log"
    with s3_bucket() as bucket:
        command = [sys.executable, "jobs/mass_edit.py", "--config", "configs/smoke.yaml", f"output.dir={out}",
                   # 10 epochs of 3 steps, a checkpoint after the 5th. At Ray's own 2 s poll each
                   # epoch's report waits up to 2 s: ~10 s to kill the driver in, not ~2.
                   f"train.storage_path=s3://{bucket.name}/runs", "train.precision=auto", "train.controller_poll_s=2",
                   "output.save_merged=false", f"eval.unedited_from={first}"]
        environment = {**os.environ, **bucket.environment()}
        with log_path.open("w") as log:
            job = subprocess.Popen(command, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                   env=environment)
            try:
                _wait_for_checkpoint(job, _snapshots_in(bucket), "epoch0005")
            finally:
                os.killpg(job.pid, signal.SIGKILL)  # the driver and the local Ray instance it started
                job.wait()
        assert f"unedited model: reusing its scores from {first / 'unedited'}" in log_path.read_text()
        assert not out.exists()

        proc = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600, env=environment)
        assert proc.returncode == 0, proc.stderr[-4000:]
        # The second attempt's Ray Train run has the first one's name (config and data digest):
        # it starts from the epoch-5 checkpoint in the bucket, then deletes the run's checkpoints.
        assert "resumed from checkpoint" in proc.stderr and bucket.keys("runs/run-") == []
    assert "resuming the interrupted run" in proc.stderr
    assert f"unedited model: reusing its scores saved in {out.with_name('run.incomplete') / 'unedited'}" in proc.stderr
    assert "unedited model: scored" not in proc.stderr + log_path.read_text()  # neither attempt scored it
    assert re.search(r"(?<!un)edited model: scored 6 requests", proc.stderr), proc.stderr[-4000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["before"] == json.loads((first / "summary.json").read_text())["before"]
    origin = f"taken from {first / 'unedited'} (eval.unedited_from)"  # by the killed attempt, kept by this one
    assert summary["unedited_scores"] == origin
    assert f"The before column's scores were {origin}." in (out / "report.md").read_text()
    assert summary["train"]["epoch"] == 10 and summary["train"]["restarts"] == 1
    # Resolved on the training workers (the driver never builds the model): bf16 where native.
    assert summary["train"]["precision"] == ("bf16-mixed" if native_bf16(torch.device("cpu")) else "fp32")
    assert (out / "unedited" / "evaluation.json").is_file()

    # A dry run checks it too: the plan of a job that takes them, and of one that cannot.
    proc = run_job("--config", "configs/smoke.yaml", "--dry-run", f"eval.unedited_from={first}", timeout=300)
    assert proc.returncode == 0 and json.loads(proc.stdout)["unedited_from"] == str(first / "unedited"), proc.stderr[-4000:]
    refused = tmp_path / "refused"
    proc = run_job("--config", "configs/smoke.yaml", f"output.dir={refused}", "data.limit=5",
                   f"eval.unedited_from={first}", timeout=300)
    assert proc.returncode == 2 and "eval.unedited_from" in proc.stderr and "n_requests 6 (this run: 5)" in proc.stderr
    assert not refused.exists() and not refused.with_name("refused.incomplete").exists()


def _snapshots_in(bucket):
    """What `_wait_for_checkpoint` polls: the checkpoint_manager_snapshot.json texts of the Ray
    Train runs under the bucket's `runs/`."""
    return lambda: [bucket.read(key).decode() for key in bucket.keys("runs/")
                    if key.endswith("checkpoint_manager_snapshot.json")]


def _wait_for_checkpoint(job, snapshots, name, timeout=600):
    """Block until Ray Train has registered the resumable checkpoint `name` of the run
    (`snapshots()`: the texts of its checkpoint_manager_snapshot.json files so far)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert job.poll() is None, f"the job ended before its checkpoint {name} was seen"
        if any(name in text for text in snapshots()):
            return
        time.sleep(1)
    raise AssertionError(f"no checkpoint {name} in time")


def test_rerun_from_the_saved_config_survives_a_killed_worker_and_reproduces_the_run(smoke_run, tmp_path):
    """The smoke run again, from the config it saved, with its checkpoints in an S3 bucket (moto's
    S3 server on loopback) and one training worker killed mid-run: Ray Train replaces it, training
    resumes from the latest checkpoint in the bucket, the scoring actor reads the trained weights
    from there, and the result is the uninterrupted run's, to the last digit. The finished run's
    checkpoints are then deleted from the bucket."""
    import psutil

    from tests.s3_server import s3_bucket

    first = smoke_run[0]
    out = tmp_path / "run"
    log_path = tmp_path / "job.log"
    with s3_bucket() as bucket, log_path.open("w") as log:
        job = subprocess.Popen(
            [sys.executable, "jobs/mass_edit.py", "--config", str(first / "config.yaml"), f"output.dir={out}",
             f"train.storage_path=s3://{bucket.name}/runs",
             # A checkpoint every 10 optimizer steps (3 per epoch): step 10 is inside epoch 4. At
             # Ray's own 2 s poll each epoch's report waits up to 2 s: ~12 s to kill a worker in.
             "train.max_failures=1", "train.checkpoint_every_epochs=0", "train.checkpoint_every_steps=10",
             "train.controller_poll_s=2"],
            cwd=REPO, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **bucket.environment()},
        )
        try:
            _wait_for_checkpoint(job, _snapshots_in(bucket), "step000000010")
            workers = [p for p in psutil.Process(job.pid).children(recursive=True)
                       if "RayTrainWorker" in " ".join(p.cmdline())]
            assert len(workers) == 2, [p.cmdline() for p in workers]
            workers[1].kill()  # SIGKILL: no clean-up, as when a node is lost
            assert job.wait(timeout=900) == 0, log_path.read_text()[-4000:]
        finally:
            if job.poll() is None:
                job.kill()
        # The finished run's checkpoints, deleted (what is left is the folder marker of storage_path).
        assert bucket.keys("runs/run-") == [] and bucket.keys("runs/") == ["runs/"]
    text = log_path.read_text()
    assert "resumed from checkpoint" in text and "epoch 4, micro-batch 1 of it" in text
    assert f"s3://{bucket.name}/runs" in (out / "config.yaml").read_text()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["train"]["restarts"] == 1
    # Same seeded prefixes and batches, same optimizer state restored: the first run's result.
    assert json.loads((out / "prefixes.json").read_text()) == json.loads((first / "prefixes.json").read_text())
    reference = json.loads((first / "summary.json").read_text())
    assert summary["before"] == reference["before"]
    assert summary["after"]["efficacy"] == reference["after"]["efficacy"] == 100.0
    for key in ("es", "ps", "ns", "edit_score"):
        assert summary["after"][key] == pytest.approx(reference["after"][key], abs=1e-6), key
    assert summary["after"]["em"] == pytest.approx(reference["after"]["em"], abs=1e-3)
    assert summary["train"]["optimizer_steps"] == reference["train"]["optimizer_steps"]
    # Every edit request is reported exactly once.
    rows = [json.loads(line)["case_id"] for line in (out / "per_edit.jsonl").read_text().splitlines()]
    assert sorted(rows) == sorted(set(rows)) == [f"sample-{i}" for i in range(6)]


def test_job_submitted_to_a_cluster_with_one_worker_and_zero3_offload_gives_the_same_edit(smoke_run, tmp_path, monkeypatch):
    """`ray job submit` to a real head on loopback (stopped alone afterwards) runs the smoke job
    with the same global batch (16) on 1 worker (2 micro-batches accumulated, ZeRO-3 with
    optimizer and parameters offloaded to CPU): the edit of the local 2-worker ZeRO-2 run, up
    to the order in which the shards deliver examples."""
    import uuid

    from ray.job_submission import JobStatus, JobSubmissionClient

    from tests.local_cluster import local_head

    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")  # Ray 2.60 enables token auth on local clusters
    out = tmp_path / "run"
    with local_head(num_cpus=2) as address:
        job_id = f"ftedit-test-{uuid.uuid4().hex[:8]}"
        submit = subprocess.run(
            ["ray", "job", "submit", f"--address={address}", f"--submission-id={job_id}", f"--working-dir={REPO}",
             "--", "python", "jobs/mass_edit.py", "--config", "configs/smoke.yaml", f"output.dir={out}",
             "train.num_workers=1", "train.cpus_per_worker=1", "train.torch_threads=1", "train.zero_stage=3",
             "train.offload_optimizer=true", "train.offload_params=true"],
            capture_output=True, text=True, timeout=800,
        )
        assert submit.returncode == 0, submit.stdout[-4000:] + submit.stderr[-2000:]
        assert JobSubmissionClient(address).get_job_status(job_id) == JobStatus.SUCCEEDED
    # The job's log reached the client, and the run directory is complete where output.dir says.
    assert "edit score" in submit.stdout and "tokens/s" in submit.stdout
    assert (out / "model" / "config.json").is_file() and not out.with_name("run.incomplete").exists()
    one = json.loads((out / "summary.json").read_text())
    two = json.loads((smoke_run[0] / "summary.json").read_text())
    assert one["train"]["optimizer_steps"] == two["train"]["optimizer_steps"]
    assert one["after"]["efficacy"] == two["after"]["efficacy"] == 100.0
    # The parts of the edit score, not their harmonic mean: on 6 edits of a random model the
    # neighbourhood score sits near 0, where one prompt (17 points) moves the mean from 0 to ~37.
    for key in ("efficacy", "generalization", "locality"):
        assert one["after"][key] == pytest.approx(two["after"][key], abs=20), key
    assert one["after"]["em"] == pytest.approx(two["after"]["em"], abs=10)
