"""Ray Train's poll interval (`train.controller_poll_s`): the same job at each interval, side by side.

    python benchmarks/poll_interval.py [--config configs/smoke.yaml] [--polls 2 0.25] [--repeats 3] [--output NAME] [key=value ...]

Ray Train's controller polls its workers every `RAY_TRAIN_HEALTH_CHECK_INTERVAL_S` seconds (Ray's
default: 2) and collects their `ray.train.report`s when it does. A worker holds one report at a
time, so once a report is waiting, the next one blocks the worker until the following poll: a run
that reports every epoch waits up to one interval per epoch. Every run here is `jobs/mass_edit.py`
in a process of its own (with its own local Ray), the intervals taken in turn (2, 0.25, 2, ...)
so that a slow spell of a shared machine falls on all of them. Reported per interval, as medians:
the run's wall time, its training stage (Ray Train's worker start-up, the train loop, shutdown) and
the train loop's own seconds (`train_seconds`, whose tokens/s the report prints). The edit metrics
must not depend on the interval (the same seed trains the same steps): the table says whether
every run ended with the same ones.

Writes benchmarks/results/NAME.json and the table between `<!-- NAME:start -->` and
`<!-- NAME:end -->` in BENCHMARKS.md (NAME: `--output`, default poll-interval).
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.cli import parse_args  # noqa: E402
from benchmarks.host import machine  # noqa: E402
from benchmarks.markdown_table import BENCHMARKS_MD, publish, table_markers  # noqa: E402

RESULTS = REPO / "benchmarks" / "results"
EDIT_METRICS = ("efficacy", "generalization", "locality", "edit_score", "em")
log = logging.getLogger("poll_interval")


def run_job(config: str, overrides: list[str], out_dir: Path) -> dict:
    """One run of the job in a fresh process; its summary.json."""
    command = [sys.executable, "jobs/mass_edit.py", "--config", config, *overrides, f"output.dir={out_dir}"]
    proc = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{proc.stderr[-4000:]}")
    return json.loads((out_dir / "summary.json").read_text())


def measurement(summary: dict) -> dict:
    """What one run says about the interval: its times and the edit it made."""
    return {
        "wall_seconds": summary["wall_seconds"],
        "training_stage_seconds": summary["stage_seconds"]["training"],
        "train_seconds": summary["train"]["train_seconds"],
        "train_tokens_per_s": summary["train"]["train_tokens_per_s"],
        "after": {k: summary["after"].get(k) for k in EDIT_METRICS},
    }


def by_interval(polls: list[float], runs: list[tuple[float, dict]]) -> list[dict]:
    """One row per interval: the medians of its runs, and whether every run of the benchmark
    (any interval) ended with the same edit metrics."""
    same_edit = len({json.dumps(m["after"], sort_keys=True) for _, m in runs}) == 1
    rows = []
    for poll in polls:
        mine = [m for p, m in runs if p == poll]
        rows.append({
            "controller_poll_s": poll,
            "runs": len(mine),
            **{key: statistics.median(m[key] for m in mine)
               for key in ("wall_seconds", "training_stage_seconds", "train_seconds", "train_tokens_per_s")},
            "after": mine[0]["after"],
            "same_edit_metrics_at_every_interval": same_edit,
        })
    return rows


def render_table(result: dict) -> str:
    lines = [
        "| `train.controller_poll_s` | runs | wall (s) | training stage (s) | train loop (s) | training tokens/s "
        "| edit score after | EM after |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in result["rows"]:
        after = r["after"]
        lines.append(f"| {r['controller_poll_s']:g} | {r['runs']} | {r['wall_seconds']:.0f} "
                     f"| {r['training_stage_seconds']:.0f} | {r['train_seconds']:.1f} | {r['train_tokens_per_s']:.0f} "
                     f"| {after['edit_score']:.1f} | {after['em']:.1f} |")
    same = "the same" if result["rows"][0]["same_edit_metrics_at_every_interval"] else "**not** the same"
    lines += ["", f"Medians of {result['repeats']} run(s) per interval, taken in turn, of `{result['command']}` "
              f"on {result['machine']}, {result['date']}. Every run's edit metrics were {same}."]
    return "\n".join(lines)


def main(argv: list[str] | None = None, job=run_job) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/smoke.yaml")
    parser.add_argument("--polls", type=float, nargs="+", default=[2.0, 0.25], help="train.controller_poll_s values")
    parser.add_argument("--repeats", type=int, default=3, help="runs per interval")
    parser.add_argument("--output", default="poll-interval", help="results file and BENCHMARKS.md table name")
    parser.add_argument("--results", default=str(RESULTS), help="folder of the results JSON")
    parser.add_argument("--benchmarks-md", default=str(BENCHMARKS_MD))
    parser.add_argument("overrides", nargs="*", help="config overrides for every run (key=value)")
    args = parse_args(parser, argv)
    if args.repeats < 1 or any(p <= 0 for p in args.polls):
        parser.error("--repeats must be >= 1 and every --polls value > 0")
    md = Path(args.benchmarks_md)
    markers = table_markers(args.output, md)  # before an hour of runs, not after
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")

    runs = []
    with tempfile.TemporaryDirectory(prefix="poll-interval-") as tmp:
        for repeat in range(args.repeats):
            for poll in args.polls:
                out = Path(tmp) / f"poll{poll:g}-run{repeat}"
                summary = job(args.config, [*args.overrides, f"train.controller_poll_s={poll}"], out)
                runs.append((poll, measurement(summary)))
                log.info("train.controller_poll_s=%g run %d: %.0f s, training stage %.0f s",
                         poll, repeat + 1, summary["wall_seconds"], summary["stage_seconds"]["training"])
    command = " ".join(["python benchmarks/poll_interval.py", *(sys.argv[1:] if argv is None else argv)])
    result = {"config": args.config, "overrides": args.overrides, "repeats": args.repeats, "command": command,
              "machine": machine(), "date": datetime.date.today().isoformat(),
              "rows": by_interval(args.polls, runs), "runs": [{"controller_poll_s": p, **m} for p, m in runs]}
    publish(result, Path(args.results) / f"{args.output}.json", markers, render_table(result), md)
    return result


if __name__ == "__main__":
    main()
