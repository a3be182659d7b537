"""Edit-quality benchmark: run the mass-edit job on a benchmark config, record it in BENCHMARKS.md.

    python benchmarks/edit_quality.py --config configs/bench-counterfact-smollm2.yaml [key=value ...]
    python benchmarks/edit_quality.py --from-run runs/some-finished-run     # record a finished run

Runs the same library code as jobs/mass_edit.py, saves the measured numbers to
benchmarks/results/<config name>.json and rewrites the results table in BENCHMARKS.md from every
results file there. Nothing in the table is typed by hand.
"""

import argparse
import datetime
import hashlib
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.host import machine  # noqa: E402
from benchmarks.markdown_table import replace_between  # noqa: E402
from ftedit.config import load_config, to_dict  # noqa: E402
from ftedit.logs import show_progress  # noqa: E402
from ftedit.metrics import COMMON_KEYS, SUMMARY_KEYS  # noqa: E402
from ftedit.pipeline import run_mass_edit  # noqa: E402

RESULTS = REPO / "benchmarks" / "results"
TABLE_START, TABLE_END = "<!-- edit-quality:start -->", "<!-- edit-quality:end -->"
# Results files recorded before zsRE runs were (2026-12-04) hold CounterFact's own keys only
# (ES / PS / NS), not the summary's dataset-neutral ones: read through this map.
COUNTERFACT_KEYS = {**COMMON_KEYS["counterfact"], "edit_score": "edit_score"}


def locality_mix(augment: dict) -> str:
    """The run's unedited facts per edit, e.g. "5 random + 5 similar" (rows differ in it while the
    config label alone may not show it: the config's default changed over time)."""
    kinds = (("n_random", "random"), ("n_similar", "similar"), ("n_same_answer", "same-answer"))
    parts = [f"{augment[key]} {kind}" for key, kind in kinds if augment.get(key)]  # older runs lack n_same_answer
    return " + ".join(parts) or "none"


def anchors(augment: dict, loss: dict) -> str:
    """e.g. "8 tokens, w 0.2": the run's continuation anchors and how the loss weighs them
    ("pooled": averaged with the targets); "-" without anchors (and for runs from before them)."""
    n = augment.get("continuation_tokens") or 0
    if not n:
        return "-"
    weight = loss.get("anchor_weight")
    return f"{n} tokens, " + ("pooled" if weight is None else f"w {weight:g}")


def training_numerics(train: dict, trained_in: str | None = None) -> str:
    """e.g. "bf16-mixed, eager", or "auto: bf16-mixed, eager" where the config said `auto` and the
    workers resolved it (`trained_in`, from the run's summary; results recorded before it was kept
    say "auto" alone). Runs from before `train.attention` existed used transformers' default, SDPA."""
    precision = train["precision"]
    if precision == "auto" and trained_in:
        precision = f"auto: {trained_in}"
    return f"{precision}, {train.get('attention') or 'sdpa'}"


def metric_cells(side: dict) -> str:
    """ "99.0 / 89.0 / 57.0 / 77.2": efficacy / generalization / locality / edit score of one side
    (before or after) of a results file, old (CounterFact keys only) or new; "n/a" for a score the
    data has no probes for (MQuAKE runs before `data.mquake_neighbours`, 2026-12-06, had no locality)."""
    if "efficacy" in side:
        values = [side.get(k) for k in SUMMARY_KEYS]
    else:
        values = [side.get(COUNTERFACT_KEYS[k]) for k in SUMMARY_KEYS]
    return " / ".join("n/a" if v is None else f"{v:.1f}" for v in values)


def render_table() -> str:
    rows = [
        "| config | edits | precision, training attention | unedited facts per edit | anchors "
        "| before efficacy / generalization / locality / score | after, the same | fluency before -> after | wall (s) | train tokens/s | machine | date |",
        "|---|---:|---|---|---|---|---|---|---:|---:|---|---|",
    ]
    for path in sorted(RESULTS.glob("*.json")):
        r = json.loads(path.read_text())
        if not isinstance(r, dict) or "before" not in r:  # another benchmark's results (ladder, throughput)
            continue
        # Fluency is measured only with eval.fluency_tokens > 0 (50 in ROME/MEMIT).
        fluency = (f"{r['before']['fluency']:.0f} -> {r['after']['fluency']:.0f}"
                   if r["before"].get("fluency") is not None else "-")
        rows.append(
            f"| `{r['config']}` | {r['n_edits']} | {training_numerics(r['resolved_config']['train'], r.get('trained_precision'))} "
            f"| {locality_mix(r['resolved_config']['augment'])} "
            f"| {anchors(r['resolved_config']['augment'], r['resolved_config']['loss'])} | {metric_cells(r['before'])} "
            f"| {metric_cells(r['after'])} | {fluency} | {r['wall_seconds']:.0f} "
            f"| {r['train_tokens_per_s']:.0f} | {r['machine']} | {r['date']} |"
        )
    return "\n".join(rows)


def update_benchmarks_md() -> None:
    path = REPO / "BENCHMARKS.md"
    path.write_text(replace_between(path.read_text(), TABLE_START, TABLE_END, render_table()))


MAX_NAME = 200
"""Longest results file stem: file systems refuse names over 255 bytes, and a long list of
overrides reaches that (a 23-minute run once ended unrecorded on it)."""


def result_name(config: str, overrides: list[str]) -> str:
    """The results file stem: the config's name and its overrides; a long one is cut and ends in
    a digest of the whole, so distinct runs keep distinct files."""
    slug = "__".join(o.replace("=", "-").replace("/", "_").replace(".", "_") for o in overrides)
    name = Path(config).stem + (f"__{slug}" if slug else "")
    if len(name.encode()) <= MAX_NAME:
        return name
    digest = hashlib.sha256(name.encode()).hexdigest()[:12]
    return name.encode()[: MAX_NAME - 14].decode(errors="ignore") + "__" + digest


def record(summary: dict, cfg, label: str, command: str, name: str, date: str | None = None) -> None:
    result = {
        "config": label,
        "command": command,
        "n_edits": summary["n_edits"],
        "before": {k: summary["before"].get(k) for k in (*SUMMARY_KEYS, "fluency", "portability")},
        "after": {k: summary["after"].get(k) for k in (*SUMMARY_KEYS, "fluency", "portability")},
        "metric_kind": summary["metric_kind"],
        "wall_seconds": summary["wall_seconds"],
        "train_seconds": summary["train"]["train_seconds"],
        "train_tokens_per_s": summary["train"]["train_tokens_per_s"],
        "trained_precision": summary["train"].get("precision"),  # what `auto` became on the workers
        "examples": summary["examples"],
        "machine": machine(),
        "date": date or datetime.date.today().isoformat(),
        "resolved_config": to_dict(cfg),
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(result, indent=2) + "\n")
    update_benchmarks_md()
    print(render_table())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--config", help="run this benchmark config")
    source.add_argument("--from-run", help="record a finished run directory (its config.yaml and summary.json)")
    parser.add_argument("--name", help="results file name (default: from the config and overrides)")
    parser.add_argument("--label", help="with --from-run: what the run was (config and overrides), for the table")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    show_progress()
    if args.from_run:
        run = Path(args.from_run)
        cfg = load_config(run / "config.yaml")
        summary = json.loads((run / "summary.json").read_text())
        name = args.name or run.name
        label = f"{args.label or run.name} (recorded from its run directory)"
        measured = datetime.date.fromtimestamp((run / "summary.json").stat().st_mtime).isoformat()
        record(summary, cfg, label, f"python benchmarks/edit_quality.py --from-run {run}", name, measured)
        return
    name = args.name or result_name(args.config, args.overrides)
    cfg = load_config(args.config, [f"output.dir=runs/{name}", "output.overwrite=true", *args.overrides])
    summary = run_mass_edit(cfg)
    label = " ".join([args.config, *args.overrides])
    record(summary, cfg, label, " ".join(["python benchmarks/edit_quality.py --config", label]), name)


if __name__ == "__main__":
    main()
