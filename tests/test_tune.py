"""Sweeps: the sweep section's validation, the trial configs, and a real 3-trial sweep under ASHA."""

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from ftedit.config import ConfigError, load_config
from ftedit.tune import base_values, load_sweep, shares_unedited_evaluation, trial_config, validation_config
from tests.conftest import REPO

SMOKE = REPO / "configs" / "sweep-smoke.yaml"


def test_sweep_file_splits_into_base_run_config_and_sweep_settings():
    base, cfg, sweep = load_sweep(SMOKE)
    assert "sweep" not in base and cfg.data.limit == 4
    assert sweep.space == {"train.lr": {"grid": [2e-2, 1e-7, 1e-8]}} and sweep.search == "random"


@pytest.mark.parametrize("override, key", [
    ("sweep.space={train.lrr: {choice: [1]}}", "sweep.space.train.lrr"),  # not a run-config key
    ("sweep.space={train.lr: {choice: [-1]}}", "sweep.space.train.lr"),  # a value the run config rejects
    ("sweep.space={train.lr: {grid: [1.0e-3, -1]}}", "sweep.space.train.lr"),  # ... anywhere in the list
    ("sweep.space={augment.n_random: {uniform: [-2, 4]}}", "sweep.space.augment.n_random"),  # ... or range
    ("sweep.space={train.lr: {normal: [0, 1]}}", "sweep.space.train.lr"),
    ("sweep.space={train.lr: {loguniform: [0, 1]}}", "sweep.space.train.lr"),
    ("sweep.search=optuna", "sweep.space.train.lr"),  # optuna cannot run a grid
    ("sweep.num_samples=0", "sweep.num_samples"),
    ("sweep.validation_offset=2", "sweep.validation_offset"),  # overlaps the reported edits 0-3
    ("sweep.bogus=1", "sweep.bogus"),
])
def test_bad_sweep_settings_name_the_key(override, key):
    with pytest.raises(ConfigError) as info:
        load_sweep(SMOKE, [override])
    assert info.value.key == key


def test_a_misspelt_search_key_is_named_before_how_it_is_searched():
    for override in ("sweep.space={train.lrr: {grid: [1]}}", "sweep.space={trian.lr: {grid: [1]}}",
                     "sweep.space={train.lr.x: {grid: [1]}}"):
        with pytest.raises(ConfigError) as info:  # optuna cannot run a grid, but the key is the first mistake
            load_sweep(SMOKE, ["sweep.search=optuna", override])
        assert info.value.key == "sweep.space." + override.split("{")[1].split(":")[0]
        assert "is not a run-config key" in info.value.message, info.value
    assert info.value.message == "train.lr.x is not a run-config key"


def test_a_sweep_whose_storage_path_cannot_take_checkpoints_stops_before_its_first_trial(tmp_path):
    (tmp_path / "file").write_text("")
    out = tmp_path / "sweep"
    proc = subprocess.run([sys.executable, "jobs/sweep.py", "--config", str(SMOKE), f"output.dir={out}",
                           f"train.storage_path={tmp_path / 'file' / 'checkpoints'}"],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "error: train.storage_path: cannot write checkpoints to" in proc.stderr, proc.stderr
    assert not out.exists()  # not one trial was started, nothing written


def test_include_base_runs_the_base_values_first():
    base, cfg, sweep = load_sweep(SMOKE, ["sweep.include_base=true", "sweep.space={train.lr: {loguniform: [1.0e-3, 1.0e-1]}, "
                                          "augment.n_similar: {choice: [0, 2]}}", "sweep.search=optuna"])
    # n_similar is not in the file: the base value is the config's default.
    assert base_values(base, sweep) == {"train.lr": 2e-2, "augment.n_similar": 0}
    with pytest.raises(ConfigError) as info:  # the base value must be a point of the space
        load_sweep(SMOKE, ["sweep.include_base=true", "train.lr=5.0e-2"])
    assert info.value.key == "sweep.space.train.lr"


def test_a_trial_runs_its_values_on_the_validation_edits_and_probes_them(tmp_path):
    base, cfg, sweep = load_sweep(SMOKE)
    trial = validation_config(base, {"train.lr": 1e-3, "train.layers": [1]}, sweep, tmp_path / "t")
    assert trial.train.lr == 1e-3 and trial.train.layers == [1]
    assert (trial.data.offset, trial.data.limit, trial.eval.probe_edits) == (4, 4, 4)
    assert trial.output.dir == str(tmp_path / "t") and trial.eval.unedited_from is None
    # A sweep that scored the unedited model once hands its scores to every trial; a base config's
    # own eval.unedited_from names scores of the reported edits, which no trial may take.
    base["eval"]["unedited_from"] = "runs/reported-edits"
    shared = validation_config(base, {"train.lr": 1e-3}, sweep, tmp_path / "t", str(tmp_path / "unedited"))
    assert shared.eval.unedited_from == str(tmp_path / "unedited")
    assert validation_config(base, {}, sweep, tmp_path / "t").eval.unedited_from is None
    assert shares_unedited_evaluation(sweep)
    assert not shares_unedited_evaluation(dataclasses.replace(sweep, space={**sweep.space, "eval.fluency_tokens": {"choice": [0, 8]}}))
    # The best config keeps the reported split: only the searched values differ from the base.
    best = trial_config(base, {"train.lr": 1e-3})
    assert (best.data.offset, best.data.limit, best.eval.probe_edits) == (0, 4, 0)


def _wait_for_first_finished_trial(proc, experiment, timeout):
    """Block until Tune's saved experiment state records a finished trial."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, "the sweep ended before it could be interrupted"
        if any("TERMINATED" in f.read_text() for f in experiment.glob("experiment_state-*.json")):
            return
        time.sleep(2)
    raise AssertionError("no trial finished in time")


def test_sweep_stops_hopeless_trials_survives_failing_ones_and_resumes_after_a_kill(tmp_path):
    out = tmp_path / "sweep"
    # 2 learning rates x 2 numbers of similar facts, whose sentence embedder is missing, run in
    # this order: (2e-2, none) learns, (2e-2, 2) fails for want of the embedder, (1e-8, none)
    # cannot move the model and ASHA stops it, (1e-8, 2) fails.
    space = "sweep.space={train.lr: {grid: [2.0e-2, 1.0e-8]}, augment.n_similar: {grid: [0, 2]}}"
    missing = tmp_path / "no-such-embedder"
    command = [sys.executable, "jobs/sweep.py", "--config", str(SMOKE), f"output.dir={out}", space,
               f"augment.embedding_model={missing}"]
    log = (tmp_path / "first.log").open("w")
    first = subprocess.Popen(command, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        _wait_for_first_finished_trial(first, out / "tune", timeout=900)
    finally:
        os.killpg(first.pid, signal.SIGKILL)  # the driver and the local Ray cluster it started
        first.wait()
    done = {p: p.stat().st_mtime_ns for p in (out / "trials").glob("*/summary.json")}
    assert len(done) == 1 and not (out / "trials.json").exists()
    # The unedited model was scored on the validation edits once, before the first trial.
    shared = out / "unedited"
    assert (shared / "evaluation.json").is_file()
    assert (tmp_path / "first.log").read_text().count("unedited model: scored 4 requests") == 1

    # The same command again resumes: the finished trial is kept, the rest run.
    proc = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stderr[-5000:]
    assert "resuming the sweep" in proc.stderr
    assert {p: p.stat().st_mtime_ns for p in done} == done  # not run again
    trials = json.loads((out / "trials.json").read_text())
    assert len(trials) == 4
    by_values = {(t["values"]["train.lr"], t["values"]["augment.n_similar"]): t for t in trials}
    assert by_values[(2e-2, 0)]["status"] == "completed"
    assert by_values[(2e-2, 0)]["epochs"] == 8
    # A learning rate of 1e-8 cannot move the model: ASHA stops it at a milestone.
    assert by_values[(1e-8, 0)]["status"].startswith("stopped early")
    # The trials that need the missing embedder fail; they are listed and the sweep goes on.
    failed = [by_values[(lr, 2)] for lr in (2e-2, 1e-8)]
    assert all(t["status"] == "failed" and "no-such-embedder" in t["detail"] for t in failed), failed
    # No trial scored the unedited model: each took the sweep's scores (the resumed sweep kept
    # them too). The one unedited evaluation of this run is the best config's, on the reported edits.
    assert "unedited model: reusing its scores saved in" in proc.stderr
    assert proc.stderr.count("unedited model: scored 4 requests") == 1
    ran = sorted((out / "trials").iterdir())  # the failed trials stopped before writing anything
    assert len(ran) == 2, ran
    for trial in ran:
        assert load_config(trial / "config.yaml").eval.unedited_from == str(shared)
        assert (trial / "unedited" / "evaluation.json").is_file(), trial
    # The trial ASHA stopped keeps its config and scores but not its checkpoints: none resumes now.
    stopped = [trial for trial in ran if trial.name.endswith(".incomplete")]
    assert len(stopped) == 1 and not (stopped[0] / "ray").exists(), stopped
    table = (out / "trials.md").read_text()
    assert table.count("| failed") == 2 and "**best**" in table

    best = load_config(out / "best.yaml")
    assert best.train.lr == 2e-2 and best.augment.n_similar == 0 and best.eval.unedited_from is None
    assert best.data.limit == 4 and best.data.offset == 0
    summary = json.loads((out / "best-run" / "summary.json").read_text())
    assert summary["n_edits"] == 4 and summary["after"]["efficacy"] == 100.0
    # best.yaml is what best-run ran: the same run config but for the run directory.
    ran = load_config(out / "best-run" / "config.yaml")
    assert dataclasses.replace(ran, output=best.output) == best
