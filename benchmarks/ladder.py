"""The paper's ablation ladder: the same model, edits and training budget, one rung at a time.

    python benchmarks/ladder.py --base configs/bench-counterfact-smollm2.yaml --sizes 10 100 \
        --tunings lora full [key=value ...]
    python benchmarks/ladder.py --plan benchmarks/ladder-plan.yaml   # every row of the table

Rungs (Gangadhar & Stratos, 2024), each a set of config overrides on the base config:
  unedited   the model before editing (the `before` column of the runs below)
  FT         full-sequence likelihood, the edits alone
  FT+M       conditional likelihood (loss on the target given the prompt), the edits alone
  FT+M+P     + pseudo-paraphrases (model-generated prefixes)
  FT+M+P+R   + random unedited facts from the pool, kept at their answers
  FT+M+P+S   + similar unedited facts (nearest by sentence embedding) instead of random ones
The augmentation counts come from the base config: its n_paraphrase, and its unedited facts per
edit (n_random + n_similar + n_same_answer), which the R rung draws all at random and the S rung all by
similarity, so the two rungs train on the same number of examples whatever mix the base config
uses. Epochs, lr and batch stay those of the base config for every rung, so the budget is the
same number of passes over each rung's examples. `--full` gives the overrides of
the full fine-tuning rows (a whole-model lr is far below a LoRA lr).

Every run is a real `run_mass_edit` (Ray Train + DeepSpeed), with fluency on. Rows go to
benchmarks/results/ladder.json (a row of the same dataset, method, tuning and size is replaced),
the table in BENCHMARKS.md and benchmarks/results/ladder.png are rebuilt from that file, after
every rung (a ladder stopped after hours keeps the rungs that finished). The unedited model is
scored once per size, by the first rung, and every later rung of that size takes those scores
(`eval.unedited_from`; a rung whose overrides change the model or its dtype scores its own). A
row's `wall_seconds` is still what its rung costs as a run of its own: a rung that took the scores
counts the seconds the first rung spent on them, not its own copy of them.

A plan (`--plan`) is a YAML list of such command lines (the arguments after `ladder.py`), run
in order; `benchmarks/ladder-plan.yaml` is the one behind the published table. Every entry is
parsed and its configs loaded before the first rung trains, so a typo in the last entry stops
the plan at once, not after a day. The outer command line's `--runs-dir`, `--results`,
`--benchmarks-md` and key=value overrides apply to every entry.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import logging
import shlex
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.cli import parse_args  # noqa: E402
from benchmarks.host import machine  # noqa: E402
from benchmarks.markdown_table import replace_between  # noqa: E402
from ftedit.config import load_config  # noqa: E402
from ftedit.logs import show_progress  # noqa: E402
from ftedit.metrics import SUMMARY_KEYS  # noqa: E402
from ftedit.unedited import SCORED, measured_settings  # noqa: E402

RESULTS = REPO / "benchmarks" / "results"
TABLE_START, TABLE_END = "<!-- ladder:start -->", "<!-- ladder:end -->"
METHODS = ("unedited", "FT", "FT+M", "FT+M+P", "FT+M+P+R", "FT+M+P+S")
KEY = ("dataset", "method", "tuning", "n_edits")


def rung_overrides(method: str, n_paraphrase: int, n_unedited: int) -> list[str]:
    """Config overrides that turn the base config into one rung of the ladder (`n_unedited`:
    unedited facts per edit in the R and S rungs)."""
    augment = {
        "FT": (0, 0, 0),
        "FT+M": (0, 0, 0),
        "FT+M+P": (n_paraphrase, 0, 0),
        "FT+M+P+R": (n_paraphrase, n_unedited, 0),
        "FT+M+P+S": (n_paraphrase, 0, n_unedited),
    }[method]
    mode = "full" if method == "FT" else "conditional"
    p, r, s = augment
    # Same-answer facts are no rung of the paper's ladder: they count into the R and S rungs' draw.
    return [f"loss.mode={mode}", f"augment.n_paraphrase={p}", f"augment.n_random={r}", f"augment.n_similar={s}",
            "augment.n_same_answer=0"]


def row(dataset: str, method: str, tuning: str, n_edits: int, side: dict, summary: dict, run_dir: str) -> dict:
    edited = method != "unedited"
    train = summary["train"]
    return {
        "dataset": dataset,
        "method": method,
        "tuning": tuning if edited else "-",
        "n_edits": n_edits,
        **{k: side[k] for k in SUMMARY_KEYS},
        "fluency": side.get("fluency"),
        "portability": side.get("portability"),  # MQuAKE's multi-hop questions; None elsewhere
        "wall_seconds": summary["wall_seconds"] if edited else None,
        "train_tokens_per_s": train["train_tokens_per_s"] if edited else None,
        "run": run_dir if edited else None,
        "date": datetime.date.today().isoformat(),
        # Rows from other CPUs can differ by several points for the same seed (BENCHMARKS.md, MQuAKE re-runs).
        "machine": machine(),
    }


def merge_rows(old: list[dict], new: list[dict]) -> list[dict]:
    """New rows replace old rows with the same (dataset, method, tuning, n_edits)."""
    merged = {tuple(r[k] for k in KEY): r for r in old}
    merged.update({tuple(r[k] for k in KEY): r for r in new})
    order = {m: i for i, m in enumerate(METHODS)}
    return sorted(merged.values(), key=lambda r: (r["dataset"], r["n_edits"], r["tuning"] != "-", r["tuning"], order[r["method"]]))


def render_table(rows: list[dict]) -> str:
    fmt = lambda v, spec=".1f": "n/a" if v is None else format(v, spec)  # noqa: E731
    lines = [
        "| dataset | edits | method | tuning | efficacy | generalization | locality | edit score | fluency "
        "| portability | wall (s) | train tokens/s |",
        "|---|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['dataset']} | {r['n_edits']} | {r['method']} | {r['tuning']} | {fmt(r['efficacy'])} "
            f"| {fmt(r['generalization'])} | {fmt(r['locality'])} | **{fmt(r['edit_score'])}** | {fmt(r['fluency'])} "
            f"| {fmt(r.get('portability'))} "
            f"| {fmt(r['wall_seconds'], '.0f')} | {fmt(r['train_tokens_per_s'], '.0f')} |"
        )
    return "\n".join(lines)


def score_lines(tuning: str, n_edits: int, series: list[dict]) -> list[tuple[str, list[dict], bool]]:
    """A plot line's edit scores as (legend entry, rows, two-term) segments. Scores without a
    locality term (MQuAKE rows measured before its neighbourhood prompts were, 2026-12-06) form a
    segment of their own, drawn hollow, so no line joins a two-term score to a three-term one."""
    two_term = [r for r in series if r["locality"] is None]
    three_term = [r for r in series if r["locality"] is not None]
    label = f"{tuning}, {n_edits} edits"
    segments = [(label, three_term, False), (f"{label}: score without locality (hollow)", two_term, True)]
    return [segment for segment in segments if segment[1]]


def plot(rows: list[dict], path: Path) -> None:
    """Edit score and fluency per method, one panel pair per dataset, a line per tuning x size."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    datasets = sorted({r["dataset"] for r in rows})
    # The same size has the same colour in every panel, the same tuning the same line style.
    sizes = sorted({r["n_edits"] for r in rows})
    colour = {n: plt.get_cmap("tab10")(i % 10) for i, n in enumerate(sizes)}
    style = {"lora": ("-", "o"), "full": ("--", "s")}
    fig, axes = plt.subplots(len(datasets), 2, figsize=(12, 4 * len(datasets)), squeeze=False)
    for d, dataset in enumerate(datasets):
        mine = [r for r in rows if r["dataset"] == dataset]
        for n in sorted({r["n_edits"] for r in mine}):
            unedited = next((r for r in mine if r["n_edits"] == n and r["method"] == "unedited"), None)
            for tuning in sorted({r["tuning"] for r in mine} - {"-"}):
                series = [unedited] + [r for m in METHODS[1:] for r in mine
                                       if r["n_edits"] == n and r["tuning"] == tuning and r["method"] == m]
                series = [r for r in series if r is not None]
                if not any(r["method"] != "unedited" for r in series):
                    continue  # no rung of this tuning at this size yet: no lone unedited point
                line, marker = style.get(tuning, (":", "^"))
                score_ax, fluency_ax = axes[d]
                for label, part, hollow in score_lines(tuning, n, series):
                    score_ax.plot([METHODS.index(r["method"]) for r in part], [r["edit_score"] for r in part],
                                  line, marker=marker, color=colour[n], label=label,
                                  markerfacecolor="white" if hollow else colour[n], alpha=0.55 if hollow else 1.0)
                fluency_ax.plot([METHODS.index(r["method"]) for r in series],
                                [r["fluency"] if r["fluency"] is not None else float("nan") for r in series],
                                line, marker=marker, color=colour[n], label=f"{tuning}, {n} edits")
        for ax, title in zip(axes[d], ("edit score (harmonic mean of efficacy, generalization, locality)",
                                       "fluency (n-gram entropy of generations, x100)")):
            ax.set_xticks(range(len(METHODS)), METHODS)
            ax.set_title(f"{dataset}: {title}", fontsize=10)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
    fig.suptitle("Fine-tuning as an editor: each rung adds one ingredient (same model, edits, budget)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_outputs(new_rows: list[dict], results: Path = RESULTS, benchmarks_md: Path = REPO / "BENCHMARKS.md") -> list[dict]:
    results.mkdir(parents=True, exist_ok=True)
    path = results / "ladder.json"
    rows = merge_rows(json.loads(path.read_text()) if path.exists() else [], new_rows)
    path.write_text(json.dumps(rows, indent=2) + "\n")
    benchmarks_md.write_text(replace_between(benchmarks_md.read_text(), TABLE_START, TABLE_END, render_table(rows)))
    plot(rows, results / "ladder.png")
    return rows


def run_ladder(base: str, sizes: list[int], tunings: list[str], methods: list[str], full: list[str],
               overrides: list[str], runs_dir: Path, on_rung=lambda rows: None) -> list[dict]:
    """Run every rung; `on_rung(rows so far)` after each, so a stopped ladder keeps what finished."""
    from ftedit.pipeline import run_mass_edit

    base_cfg = load_config(base, overrides)
    n_unedited = base_cfg.augment.n_unedited
    dataset = Path(base).stem
    rows = []
    scored = {}  # unedited_settings -> (the run that scored the unedited model, its seconds for it)
    for n in sizes:
        for tuning in tunings:
            for method in methods:
                name = f"{dataset}-{n}-{tuning}-{method.replace('+', '_')}"
                run_dir = runs_dir / name
                rung = [
                    *overrides,
                    f"data.limit={n}",
                    f"train.tuning={tuning}",
                    *(full if tuning == "full" else []),
                    *rung_overrides(method, base_cfg.augment.n_paraphrase, n_unedited),
                    "eval.fluency_tokens=" + str(base_cfg.eval.fluency_tokens or 50),
                    f"output.dir={run_dir}",
                    "output.overwrite=true",
                ]
                cfg = load_config(base, rung)
                settings = unedited_settings(cfg)
                source = scored.get(settings)
                if source is not None:  # the rungs differ in training only: score the unedited model once
                    cfg = load_config(base, [*rung, f"eval.unedited_from={source[0]}"])
                logging.getLogger(__name__).info("ladder: %s", name)
                summary = run_mass_edit(cfg)
                if source is not None:  # the row's wall time stays what the rung costs as a run of its own
                    summary = {**summary, "wall_seconds": summary["wall_seconds"]
                               - summary["stage_seconds"]["unedited evaluation"] + source[1]}
                elif summary.get("unedited_scores") == SCORED:
                    scored[settings] = (run_dir, summary["stage_seconds"]["unedited evaluation"])
                dataset_name = summary["data_format"]
                if not any(r["method"] == "unedited" and r["n_edits"] == n for r in rows):
                    rows.append(row(dataset_name, "unedited", tuning, n, summary["before"], summary, str(run_dir)))
                rows.append(row(dataset_name, method, tuning, n, summary["after"], summary, str(run_dir)))
                on_rung(rows)
    return rows


def unedited_settings(cfg) -> str:
    """What a rung's unedited evaluation depends on in its config (model, requests, dtype, what is
    measured): rungs with the same share one, through eval.unedited_from."""
    return json.dumps([dataclasses.asdict(cfg.model), dataclasses.asdict(cfg.data), measured_settings(cfg)],
                      sort_keys=True, default=str)


class _EntryParser(argparse.ArgumentParser):
    """A parser for plan entries: a bad entry raises (to be named with its file and entry), not exit."""

    def error(self, message):
        raise ValueError(message)


def build_parser(parser_class=argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser = parser_class(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", help="the base run config (dataset, model, budget)")
    parser.add_argument("--plan", help="a YAML list of ladder command lines to run in order (instead of --base)")
    # Defaults (DEFAULTS) are filled in after parsing (`with_defaults`), so a plan can tell what was given.
    default = lambda key: f"default: {' '.join(map(str, DEFAULTS[key]))}"  # noqa: E731
    parser.add_argument("--sizes", type=int, nargs="+", help=f"numbers of edits edited together ({default('sizes')})")
    parser.add_argument("--tunings", nargs="+", choices=["lora", "full"], help=default("tunings"))
    parser.add_argument("--methods", nargs="+", choices=METHODS[1:], help="default: every rung")
    parser.add_argument("--full", nargs="*", help=f"overrides of the full fine-tuning rows ({default('full')})")
    parser.add_argument("--runs-dir", default="runs/ladder", help="where each rung's run directory goes")
    parser.add_argument("--results", default=str(RESULTS), help="folder of ladder.json and ladder.png")
    parser.add_argument("--benchmarks-md", default=str(REPO / "BENCHMARKS.md"), help="the file whose ladder table is rebuilt")
    parser.add_argument("overrides", nargs="*",
                        help="key=value overrides applied to every rung, anywhere on the line (not after --full, "
                             "whose own values are overrides)")
    return parser


LADDER_OPTIONS = ("sizes", "tunings", "methods", "full")
DEFAULTS = {"sizes": [10, 100], "tunings": ["lora"], "methods": list(METHODS[1:]), "full": ["train.lr=5e-5"]}


def with_defaults(args: argparse.Namespace) -> argparse.Namespace:
    for key in LADDER_OPTIONS:
        if getattr(args, key) is None:
            setattr(args, key, list(DEFAULTS[key]))
    return args


def parse_command_line(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line; with --base, the ladder's options get their defaults."""
    args = parse_args(build_parser(), argv, override_options=["--full"])
    if (args.base is None) == (args.plan is None):
        build_parser().error("give either --base or --plan")
    if args.plan is not None:
        given = [f"--{k}" for k in LADDER_OPTIONS if getattr(args, k) is not None]
        if given:
            build_parser().error(f"{', '.join(given)} belong in the plan's entries, not beside --plan")
        return args
    return with_defaults(args)


def read_plan(path: str | Path, overrides: list[str] = ()) -> list[argparse.Namespace]:
    """A plan's entries as parsed ladder command lines (each with the outer `overrides` appended),
    every config loaded once to check it; a ValueError names the file and the entry."""
    import yaml

    path = Path(path)
    try:
        entries = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ValueError(f"{path}: cannot read the plan: {exc}") from None
    if not isinstance(entries, list) or not entries:
        raise ValueError(f"{path}: a plan is a non-empty YAML list of ladder command lines")
    plan, outer_defaults = [], build_parser()
    for number, entry in enumerate(entries, start=1):
        where = f"{path}: entry {number} ({entry!r})"
        if not isinstance(entry, str) or not entry.strip():
            raise ValueError(f"{where}: expected a ladder command line (a string)")
        try:
            args = parse_args(build_parser(_EntryParser), shlex.split(entry), override_options=["--full"])
            if args.base is None or args.plan is not None:
                raise ValueError("an entry needs --base and no --plan")
            for option in ("runs_dir", "results", "benchmarks_md"):
                if getattr(args, option) != outer_defaults.get_default(option):
                    raise ValueError(f"--{option.replace('_', '-')} belongs on the command line, not in an entry")
            args = with_defaults(args)
            args.overrides = [*args.overrides, *overrides]
            load_config(args.base, [*args.overrides, *(args.full if "full" in args.tunings else [])])
        except Exception as exc:  # argparse, shlex, ConfigError: all name what is wrong
            raise ValueError(f"{where}: {exc}") from None
        plan.append(args)
    return plan


def main() -> None:
    args = parse_command_line()
    show_progress()
    try:
        commands = read_plan(args.plan, args.overrides) if args.plan else [args]
    except ValueError as exc:
        sys.exit(f"error: {exc}")
    # A 300-edit ladder runs for hours: results, table and plot are rewritten after every rung.
    save = lambda rows: write_outputs(rows, Path(args.results), Path(args.benchmarks_md))  # noqa: E731
    for command in commands:
        rows = run_ladder(command.base, command.sizes, command.tunings, command.methods, command.full,
                          command.overrides, Path(args.runs_dir), on_rung=save)
        print(render_table(save(rows)))


if __name__ == "__main__":
    main()
