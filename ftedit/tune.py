"""Ray Tune sweep over any run-config keys, maximising the edit score on validation edits.

A sweep file is a run config (the base every trial starts from, and the reported edits in
`data`) plus a `sweep` section: the search space, the validation split, the scheduler and the
search algorithm. Each trial is a whole `run_mass_edit` on the validation edits, through the
same Ray Train + DeepSpeed path as any run (the Train V2 pattern: the trial function fits a
TorchTrainer whose reports reach Tune through `TuneReportCallback`). The train loop scores the
probe edits after every epoch, so ASHA can stop weak trials early. The best trial's values are
written into `best.yaml`, a plain run config for the reported edits, which is then run.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from ftedit.config import ConfigError, DataConfig, RunConfig, _require, apply_override, dump_config, from_dict
from ftedit.logs import show_progress
from ftedit.metrics import SUMMARY_KEYS

log = logging.getLogger(__name__)

DISTRIBUTIONS = ("choice", "uniform", "loguniform", "grid")
# Probe metrics the train loop reports after every epoch (as probe_<name>), any of which a sweep
# can maximise.
PROBE_METRICS = ("edit_score", "efficacy", "generalization", "locality", "es", "ps", "ns", "em", "pm", "nm")


class SweepInterrupted(RuntimeError):
    """The sweep stopped before every trial ended (it can be resumed)."""


@dataclass
class SweepConfig:
    space: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Run-config key -> one distribution: `{choice: [..]}`, `{uniform: [low, high]}`,
    `{loguniform: [low, high]}` or `{grid: [..]}` (every value, for every sample)."""
    metric: str = "edit_score"
    """The probe metric to maximise: the edit score, or one of its parts (efficacy,
    generalization, locality; CounterFact's es, ps, ns and magnitudes em, pm, nm)."""
    num_samples: int = 8
    """Trials to run (with grid dimensions: samples of the other dimensions per grid point)."""
    max_concurrent: int = 1
    """Trials running at once; each takes train.num_workers x train.cpus_per_worker CPUs."""
    search: Literal["optuna", "random"] = "optuna"
    """`optuna` (TPE; no grid dimensions, scalar choices) or `random` (random and grid search)."""
    scheduler: Literal["asha", "none"] = "asha"
    """`asha`: stop trials whose probe score trails the others at an epoch milestone."""
    grace_period: int = 1
    """ASHA: epochs every trial runs before it can be stopped."""
    reduction_factor: int = 2
    """ASHA: keep about 1/reduction_factor of the trials at each milestone."""
    validation_requests: str | None = None
    """The file of validation edits; null = `data.requests`."""
    validation_offset: int = 0
    """Skip this many records of the validation file (keep validation and reported edits apart)."""
    validation_edits: int = 100
    """How many validation edits every trial edits and is scored on."""
    probe_edits: int = 0
    """Validation edits scored after every epoch for early stopping; 0 = all of them."""
    max_failures: int = 0
    """Retries of a failed trial before it is reported as failed (the sweep goes on either way)."""
    rerun_best: bool = True
    """Run best.yaml on the reported edits when the sweep ends (`<output.dir>/best-run`)."""
    include_base: bool = False
    """Make the first trial the base config's own values (a baseline every other trial is
    measured against on the same validation edits); it counts towards num_samples."""

    def __post_init__(self):
        _require(bool(self.space), "space", "needs at least one key to search")
        _require(self.metric in PROBE_METRICS, "metric", f"must be one of {PROBE_METRICS}, got {self.metric!r}")
        for key, spec in self.space.items():
            where = f"space.{key}"
            _require(isinstance(spec, dict) and len(spec) == 1, where, f"must be one of {{{', '.join(DISTRIBUTIONS)}: ...}}")
            (kind, values), = spec.items()
            _require(kind in DISTRIBUTIONS, where, f"unknown distribution {kind!r}; use one of {DISTRIBUTIONS}")
            _require(isinstance(values, list) and values, where, f"{kind} needs a non-empty list, got {values!r}")
            if kind in ("uniform", "loguniform"):
                _require(
                    len(values) == 2 and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
                    and values[0] < values[1] and (kind == "uniform" or values[0] > 0),
                    where, f"{kind} needs [low, high] with 0 < low < high for loguniform, got {values}",
                )
            if self.search == "optuna":
                _require(kind != "grid", where, "grid dimensions need sweep.search=random")
                _require(all(not isinstance(v, (list, dict)) for v in values), where,
                         "optuna chooses among scalars only; use sweep.search=random for lists")
        for key in ("num_samples", "max_concurrent", "grace_period", "validation_edits"):
            _require(getattr(self, key) > 0, key, f"must be > 0, got {getattr(self, key)}")
        _require(self.reduction_factor >= 2, "reduction_factor", f"must be >= 2, got {self.reduction_factor}")
        for key in ("validation_offset", "probe_edits", "max_failures"):
            _require(getattr(self, key) >= 0, key, f"must be >= 0, got {getattr(self, key)}")

    def edge_values(self) -> list[tuple[str, Any]]:
        """Every listed value of a choice or grid, both ends of a range: checked against the run
        config before the sweep starts, so that no trial fails on a value the config rejects."""
        return [(key, value) for key, spec in self.space.items() for value in next(iter(spec.values()))]


def load_sweep(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> tuple[dict, RunConfig, SweepConfig]:
    """(raw base run config, typed base run config, sweep settings), all validated."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError("--config", f"no such file: {path}")
    data = yaml.safe_load(path.read_text()) or {}
    if not isinstance(data, dict):
        raise ConfigError("--config", f"{path} must hold a mapping of sections")
    for item in overrides:
        apply_override(data, item)
    sweep_data = data.pop("sweep", None)
    if sweep_data is None:
        raise ConfigError("sweep", f"{path} has no sweep section (search space, validation split)")
    base = from_dict(RunConfig, data)
    if isinstance(sweep_data, dict) and isinstance(sweep_data.get("space"), dict):
        _check_space_keys(sweep_data["space"], base)  # a misspelt key first, before how it is searched
    sweep = from_dict(SweepConfig, sweep_data, "sweep.")
    for key, value in sweep.edge_values():
        try:
            trial_config(data, {key: value})
        except ConfigError as e:
            raise ConfigError(f"sweep.space.{key}", e.message) from None
    if sweep.include_base:
        _check_base_in_space(data, sweep)
    _check_disjoint(base, sweep)
    return data, base, sweep


def _check_space_keys(space: dict, base: RunConfig) -> None:
    """Every searched key names a setting of the run config (`train.lr`, not `train.lrr`)."""
    resolved = dataclasses.asdict(base)
    for key in space:
        _setting(resolved, str(key))


def _setting(resolved: dict, key: str) -> Any:
    """The value of dotted `key` in a run config as a dict (`dataclasses.asdict`); a ConfigError
    naming the first part that is not a key."""
    node, path = resolved, []
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            known = f" (known: {', '.join(sorted(node))})" if isinstance(node, dict) else ""
            raise ConfigError(f"sweep.space.{key}", f"{'.'.join(path + [part])} is not a run-config key{known}")
        node, path = node[part], path + [part]
    return node


def _check_base_in_space(base: dict, sweep: SweepConfig) -> None:
    """include_base runs the base values as a trial: each must be a point of its dimension."""
    for key, value in base_values(base, sweep).items():
        (kind, values), = sweep.space[key].items()
        inside = value in values if kind in ("choice", "grid") else (
            isinstance(value, (int, float)) and values[0] <= value <= values[1])
        _require(inside, f"sweep.space.{key}",
                 f"include_base runs the base value {value!r}, which lies outside {kind} {values}")


def _check_disjoint(base: RunConfig, sweep: SweepConfig) -> None:
    """Never tune on the reported edits: the two splits must share no case id."""
    from ftedit.requests import load_requests

    def load(data):
        return load_requests(data.requests, data.format, data.limit, data.zsre_target, data.on_invalid == "skip",
                             offset=data.offset).requests

    reported, validation = load(base.data), load(validation_data(base.data, sweep))
    shared = {r.case_id for r in reported} & {r.case_id for r in validation}
    _require(not shared, "sweep.validation_offset",
             f"validation and reported edits overlap in {len(shared)} case ids (e.g. {sorted(shared)[:3]}); "
             "move the validation split past data.offset + data.limit")
    _require(len(validation) > 0, "sweep.validation_edits", "the validation split holds no edits")


def trial_config(base: dict, values: dict[str, Any]) -> RunConfig:
    """The base run config with one trial's values set (dotted keys)."""
    data = copy.deepcopy(base)
    for key, value in values.items():
        apply_override(data, f"{key}={json.dumps(value)}")
    return from_dict(RunConfig, data)


def base_values(base: dict, sweep: SweepConfig) -> dict[str, Any]:
    """The base config's value of every searched key (its defaults where the file is silent)."""
    resolved = dataclasses.asdict(from_dict(RunConfig, copy.deepcopy(base)))
    return {key: _setting(resolved, key) for key in sweep.space}


def validation_data(data: DataConfig, sweep: SweepConfig) -> DataConfig:
    """The data config of the validation edits: the sweep's split, the run's other settings."""
    return dataclasses.replace(
        data, requests=sweep.validation_requests or data.requests,
        offset=sweep.validation_offset, limit=sweep.validation_edits,
    )


def validation_config(base: dict, values: dict[str, Any], sweep: SweepConfig, out_dir: Path,
                      unedited_from: str | None = None) -> RunConfig:
    """What a trial runs: the trial's values, on the validation edits, probing every epoch,
    taking the unedited model's scores from `unedited_from` when the sweep scored them once for all."""
    cfg = trial_config(base, values)
    data = validation_data(cfg.data, sweep)
    probe = min(sweep.probe_edits or sweep.validation_edits, sweep.validation_edits)
    # Mid-epoch checkpoints report no probe score, which Tune requires of every result.
    train = dataclasses.replace(cfg.train, checkpoint_every_steps=0)
    return dataclasses.replace(
        cfg, data=data, train=train,
        # The base's own eval.unedited_from (if any) is of the reported edits, never the validation ones.
        eval=dataclasses.replace(cfg.eval, probe_edits=probe, unedited_from=unedited_from),
        output=dataclasses.replace(cfg.output, dir=str(out_dir), overwrite=True),
    )


def _param_space(sweep: SweepConfig) -> dict:
    from ray import tune

    make = {"choice": tune.choice, "grid": tune.grid_search,
            "uniform": lambda v: tune.uniform(*v), "loguniform": lambda v: tune.loguniform(*v)}
    return {key: make[kind](values) for key, spec in sweep.space.items() for kind, values in spec.items()}


def shares_unedited_evaluation(sweep: SweepConfig) -> bool:
    """Whether every trial scores the same unedited model on the same edits, so that one
    evaluation serves them all: no searched key is a model, data or evaluation setting."""
    return not any(key.split(".")[0] in ("model", "data", "eval") for key in sweep.space)


def _run_trial(values: dict, base: dict, sweep: SweepConfig, trials_dir: str, cwd: str,
               unedited_from: str | None = None) -> None:
    """The Tune trainable: one whole edit run on the validation edits."""
    import os
    from ray import tune
    from ray.tune.integration.ray_train import TuneReportCallback

    from ftedit.pipeline import run_mass_edit

    show_progress()
    os.chdir(cwd)  # Tune starts trials in their own folder; config paths are relative to the job's
    trial_id = tune.get_context().get_trial_id()
    cfg = validation_config(base, values, sweep, Path(trials_dir) / trial_id, unedited_from)
    run_mass_edit(cfg, train_callbacks=[TuneReportCallback()])


def trial_driver_resources():
    """What each trial's driver (`_run_trial`) holds: a sliver of CPU, since it only waits while
    its Train workers hold the real resources, on this process's node. Each trial writes its run
    directory where its driver runs, and this process reads the trials' summaries from there: on
    a cluster, a trial driver on a GPU node would leave them on that node's disk."""
    import ray
    from ray import tune

    here = {"ray.io/node-id": ray.get_runtime_context().get_node_id()}
    return tune.PlacementGroupFactory([{"CPU": 0.01}], bundle_label_selector=[here])


def run_sweep(base: dict, cfg: RunConfig, sweep: SweepConfig) -> dict:
    """Run every trial, write the trials table and best.yaml, re-run the best on the reported edits."""
    from ray import tune
    from ray.tune.schedulers import FIFOScheduler

    from ftedit.tune_scheduler import ResumableASHA

    from ftedit.checkpoint import check_storage
    from ftedit.pipeline import init_ray, run_mass_edit, score_unedited

    started = time.perf_counter()
    check_storage(cfg.train.storage_path)  # once for the sweep, not a failure per trial
    init_ray(cfg)  # before anything is written: a local instance without the GPUs asked for is refused
    out = Path(cfg.output.dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    dump_config(cfg, out / "base.yaml")
    (out / "sweep.yaml").write_text(yaml.safe_dump(dataclasses.asdict(sweep), sort_keys=False))
    unedited = None
    if shares_unedited_evaluation(sweep):
        # Once for all trials (and kept for a resumed sweep): ASHA stops weak trials after an
        # epoch or two, and each would otherwise have scored the unedited model first.
        log.info("scoring the unedited model on the validation edits once, for every trial")
        unedited = str(score_unedited(validation_config(base, {}, sweep, out / "trials"), out / "unedited"))

    trainable = tune.with_resources(
        tune.with_parameters(_run_trial, base=base, sweep=sweep, trials_dir=str(out / "trials"), cwd=os.getcwd(),
                             unedited_from=unedited),
        trial_driver_resources(),
    )
    experiment = out / "tune"
    if tune.Tuner.can_restore(str(experiment)):
        log.info("resuming the sweep in %s", experiment)
        tuner = tune.Tuner.restore(str(experiment), trainable=trainable, resume_errored=False)
    else:
        # max_t one past the last epoch: a trial that reaches max_t is stopped at once, which would
        # cut it off before it merges and scores the edited model.
        scheduler = (
            ResumableASHA(out / "asha_state.pkl", time_attr="epoch", max_t=cfg.train.epochs + 1,
                          grace_period=sweep.grace_period, reduction_factor=sweep.reduction_factor)
            if sweep.scheduler == "asha" else FIFOScheduler()
        )
        # Tune caps concurrency through max_concurrent_trials for a Searcher (Optuna); the
        # random/grid generator ignores that setting and takes the cap itself.
        points = [base_values(base, sweep)] if sweep.include_base else None
        if sweep.search == "optuna":
            from ray.tune.search.optuna import OptunaSearch

            search_alg = OptunaSearch(seed=cfg.seed, points_to_evaluate=points)
        else:
            from ray.tune.search import BasicVariantGenerator

            search_alg = BasicVariantGenerator(points_to_evaluate=points, max_concurrent=sweep.max_concurrent,
                                               random_state=cfg.seed)
        tuner = tune.Tuner(
            trainable,
            param_space=_param_space(sweep),
            tune_config=tune.TuneConfig(
                metric=f"probe_{sweep.metric}", mode="max", num_samples=sweep.num_samples, scheduler=scheduler,
                search_alg=search_alg,
                max_concurrent_trials=sweep.max_concurrent if sweep.search == "optuna" else None,
            ),
            run_config=tune.RunConfig(
                name="tune", storage_path=str(out), failure_config=tune.FailureConfig(max_failures=sweep.max_failures),
            ),
        )
    grid = tuner.fit()

    # Tune's own record of every trial (its config and status survive a restore, where a trial
    # that failed before reporting has no metrics to take them from).
    from ray.tune import ExperimentAnalysis

    tune_trials = {t.path: t for t in ExperimentAnalysis(str(experiment)).trials}
    unfinished = sorted(t.trial_id for t in tune_trials.values() if t.status not in ("TERMINATED", "ERROR"))
    if unfinished:  # Ctrl-C or a stopped job: no table or best config that would look final
        raise SweepInterrupted(f"the sweep stopped with {len(unfinished)} trial(s) unfinished ({', '.join(unfinished)}); "
                               f"run the same command again to resume it from {experiment}")
    trials = [_trial_row(tune_trials[result.path], result, sweep, cfg.train.epochs, out / "trials") for result in grid]
    base_point = base_values(base, sweep) if sweep.include_base else None
    for t in trials:
        t["base"] = t["values"] == base_point
    _remove_unfinished_trials_checkpoints(trials, base, sweep, out / "trials")
    finished = [t for t in trials if t["status"] != "failed" and t["probe"] is not None]
    best = max(finished, key=lambda t: (t["epochs"], t["probe"])) if finished else None
    _write_trials(out, trials, best, sweep.metric)
    if best is None:
        raise RuntimeError(f"every trial failed; see {out / 'trials.md'}")
    best_cfg = trial_config(base, best["values"])
    best_cfg = dataclasses.replace(best_cfg, output=dataclasses.replace(best_cfg.output, dir=str(out / "best")))
    dump_config(best_cfg, out / "best.yaml")
    result = {"best": best, "trials": trials, "sweep_seconds": time.perf_counter() - started}
    log.info("best trial %s (%s): probe %s %.1f; config in %s",
             best["trial_id"], _values_text(best["values"]), sweep.metric, best["probe"], out / "best.yaml")
    if sweep.rerun_best:
        rerun = dataclasses.replace(best_cfg, output=dataclasses.replace(best_cfg.output, dir=str(out / "best-run"), overwrite=True))
        result["best_run"] = run_mass_edit(rerun)
    result["wall_seconds"] = time.perf_counter() - started
    (out / "sweep_summary.json").write_text(json.dumps(result, indent=2, default=str) + "\n")
    return result


def _remove_unfinished_trials_checkpoints(trials: list[dict], base: dict, sweep: SweepConfig, trials_dir: Path) -> None:
    """No trial resumes once the sweep is over: those without a run directory (stopped by ASHA,
    or failed) lose their checkpoints, in their staging directory and in `train.storage_path`."""
    from ftedit.checkpoint import remove_abandoned_checkpoints
    from ftedit.pipeline import staging_dir

    for t in trials:
        if t["validation"] is not None:
            continue  # finished: its run already deleted its checkpoints
        try:
            cfg = validation_config(base, t["values"], sweep, trials_dir / t["trial_id"])
        except ConfigError:
            continue  # values no run accepts: the trial failed before it trained
        run_dir = Path(cfg.output.dir)
        remove_abandoned_checkpoints(run_dir, staging_dir(run_dir), cfg.train.storage_path)


def _trial_row(trial, result, sweep: SweepConfig, epochs: int, trials_dir: Path) -> dict:
    metrics = result.metrics or {}
    values = {key: trial.config[key] for key in sweep.space}
    done_epochs = int(metrics.get("epoch", 0))
    trial_id = trial.trial_id
    summary_path = trials_dir / str(trial_id) / "summary.json"
    validation = json.loads(summary_path.read_text())["after"] if summary_path.is_file() else None
    if result.error is not None:
        status = f"failed: {str(result.error).strip().splitlines()[-1][:200]}"
    elif done_epochs < epochs:
        status = f"stopped early after {done_epochs}/{epochs} epochs"
    else:
        status = "completed"
    return {
        "trial_id": trial_id,
        "status": "failed" if result.error is not None else status,
        "detail": status,
        "values": values,
        "epochs": done_epochs,
        "probe": metrics.get(f"probe_{sweep.metric}"),
        "probe_edit_score": metrics.get("probe_edit_score"),
        "validation": validation and {k: validation[k] for k in SUMMARY_KEYS},
        "seconds": metrics.get("time_total_s"),
    }


def _values_text(values: dict) -> str:
    return ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in values.items())


def _write_trials(out: Path, trials: list[dict], best: dict | None, metric: str) -> None:
    (out / "trials.json").write_text(json.dumps(trials, indent=2, default=str) + "\n")
    fmt = lambda v: "n/a" if v is None else f"{v:.1f}"  # noqa: E731
    lines = [
        f"| trial | values | status | epochs | probe {metric} | validation efficacy / generalization / locality / score | time (s) |",
        "|---|---|---|---:|---:|---|---:|",
    ]
    for t in trials:
        v = t["validation"]
        val = " / ".join(fmt(v[k]) for k in SUMMARY_KEYS) if v else "n/a"
        mark = (" **best**" if t is best else "") + (" (base)" if t.get("base") else "")
        detail = t["detail"].replace("|", "/")  # an error message must not split the table row
        lines.append(f"| {t['trial_id']}{mark} | {_values_text(t['values'])} | {detail} | {t['epochs']} "
                     f"| {fmt(t['probe'])} | {val} | {fmt(t['seconds'])} |")
    (out / "trials.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
