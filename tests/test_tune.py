"""Sweeps: the sweep section's validation, the trial configs, and a real 3-trial sweep under ASHA."""

import json
import subprocess
import sys

import pytest
import yaml

from ftedit.config import ConfigError, load_config
from ftedit.tune import load_sweep, trial_config, validation_config
from tests.conftest import REPO

SMOKE = REPO / "configs" / "sweep-smoke.yaml"


def test_sweep_file_splits_into_base_run_config_and_sweep_settings():
    base, cfg, sweep = load_sweep(SMOKE)
    assert "sweep" not in base and cfg.data.limit == 4
    assert sweep.space == {"train.lr": {"grid": [2e-2, 1e-7, 1e-8]}} and sweep.search == "random"


@pytest.mark.parametrize("override, key", [
    ("sweep.space={train.lrr: {choice: [1]}}", "sweep.space.train.lrr"),  # not a run-config key
    ("sweep.space={train.lr: {choice: [-1]}}", "sweep.space.train.lr"),  # a value the run config rejects
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


def test_a_trial_runs_its_values_on_the_validation_edits_and_probes_them(tmp_path):
    base, cfg, sweep = load_sweep(SMOKE)
    trial = validation_config(base, {"train.lr": 1e-3, "train.layers": [1]}, sweep, tmp_path / "t")
    assert trial.train.lr == 1e-3 and trial.train.layers == [1]
    assert (trial.data.offset, trial.data.limit, trial.eval.probe_edits) == (4, 4, 4)
    assert trial.output.dir == str(tmp_path / "t")
    # The best config keeps the reported split: only the searched values differ from the base.
    best = trial_config(base, {"train.lr": 1e-3})
    assert (best.data.offset, best.data.limit, best.eval.probe_edits) == (0, 4, 0)


def test_three_trial_sweep_stops_the_hopeless_trials_and_writes_a_runnable_best_config(tmp_path):
    out = tmp_path / "sweep"
    proc = subprocess.run(
        [sys.executable, "jobs/sweep.py", "--config", str(SMOKE), f"output.dir={out}"],
        cwd=REPO, capture_output=True, text=True, timeout=1200,
    )
    assert proc.returncode == 0, proc.stderr[-5000:]
    trials = json.loads((out / "trials.json").read_text())
    assert len(trials) == 3
    by_lr = {t["values"]["train.lr"]: t for t in trials}
    assert by_lr[2e-2]["status"] == "completed" and by_lr[2e-2]["epochs"] == 8
    # A learning rate of 1e-7 or 1e-8 cannot move the model: ASHA stops them at a milestone.
    stopped = [t for t in trials if t["status"].startswith("stopped early")]
    assert stopped and all(t["values"]["train.lr"] < 1e-6 for t in stopped)
    best = load_config(out / "best.yaml")
    assert best.train.lr == 2e-2 and best.data.limit == 4 and best.data.offset == 0
    assert "**best**" in (out / "trials.md").read_text()
    summary = json.loads((out / "best-run" / "summary.json").read_text())
    assert summary["n_edits"] == 4 and summary["after"]["efficacy"] == 100.0
    # best.yaml runs unchanged with the mass-edit job.
    rerun = subprocess.run([sys.executable, "jobs/mass_edit.py", "--config", str(out / "best.yaml")],
                           cwd=REPO, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert yaml.safe_load((out / "best" / "config.yaml").read_text())["train"]["lr"] == 2e-2
