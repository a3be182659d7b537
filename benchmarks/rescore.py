"""Score saved edited models again with today's evaluation, without training them again.

    python benchmarks/rescore.py --config configs/bench-mquake-smollm2.yaml [key=value ...] \
        --runs runs/a runs/b [--labels "a" "b"] --output NAME

When the evaluation gains probes (MQuAKE's neighbourhood prompts, `data.mquake_neighbours`,
2026-12-06), runs made before it still hold their merged models (`<run>/model`). This scores the
unedited model of the config and each run's model on the config's requests with the job's own
evaluation code (`ftedit.evaluate.evaluate`, in this process; no fluency, which the runs already
report), and writes benchmarks/results/NAME.json and the table between `<!-- NAME:start -->` and
`<!-- NAME:end -->` in BENCHMARKS.md. The overrides must pick the requests the runs edited
(`data.offset=...`, `data.limit=...`).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import logging
import shlex
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.cli import parse_args  # noqa: E402
from benchmarks.host import machine  # noqa: E402
from benchmarks.markdown_table import publish, table_markers  # noqa: E402
from ftedit.config import load_config  # noqa: E402
from ftedit.logs import show_progress  # noqa: E402
from ftedit.metrics import SUMMARY_KEYS  # noqa: E402

RESULTS = REPO / "benchmarks" / "results"


def _cell(value) -> str:
    return "-" if value is None else f"{value:.1f}"


def render_table(rows: list[dict]) -> str:
    lines = ["| model | efficacy / generalization / locality / score | edits with locality prompts | portability |",
             "|---|---|---:|---:|"]
    for r in rows:
        s = r["summary"]
        lines.append(f"| {r['label']} | {' / '.join(_cell(s.get(k)) for k in SUMMARY_KEYS)} "
                     f"| {s['n_locality']} of {s['n_records']} | {_cell(s.get('portability'))} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="the runs' config: its requests and unedited model")
    parser.add_argument("--runs", nargs="+", required=True, help="run directories with a merged model/")
    parser.add_argument("--labels", nargs="*", help="a label per run (default: the run directory's name)")
    parser.add_argument("--output", required=True, help="results file and BENCHMARKS.md table name")
    parser.add_argument("overrides", nargs="*", help="config overrides the runs were given, e.g. data.offset=100")
    parser.add_argument("--results", default=str(RESULTS))
    parser.add_argument("--benchmarks-md", default=str(REPO / "BENCHMARKS.md"))
    args = parse_args(parser, argv, override_options=["--labels"])  # a label may hold "=" ("w = 0.2")
    show_progress()
    labels = args.labels or [Path(r).name for r in args.runs]
    if len(labels) != len(args.runs):
        parser.error(f"{len(labels)} labels for {len(args.runs)} runs")
    missing = [run for run in args.runs if not (Path(run) / "model" / "config.json").is_file()]
    if missing:
        parser.error(f"no merged model (model/config.json) in {', '.join(missing)}")
    markers = table_markers(args.output, Path(args.benchmarks_md))

    from ftedit.assets import resolve_model_path
    from ftedit.evaluate import evaluate, metric_kind
    from ftedit.model import load_causal_lm
    from ftedit.requests import load_requests

    cfg = load_config(args.config, args.overrides)
    data = cfg.data
    loaded = load_requests(data.requests, data.format, data.limit, data.zsre_target, offset=data.offset,
                           mquake_neighbours=data.mquake_neighbours)
    requests = loaded.requests
    kind = metric_kind(loaded.format, cfg.eval.kind, [r.case_id for r in requests if r.target_true is None])
    settings = dataclasses.replace(cfg.eval, fluency_tokens=0)
    models = [("unedited", str(resolve_model_path(cfg.model.path, cfg.model.cache_dir)))]
    models += [(label, str(Path(run) / "model")) for label, run in zip(labels, args.runs)]
    rows, reference = [], None
    for label, model_dir in models:
        logging.info("scoring %s (%s) on %d requests", label, model_dir, len(requests))
        model, tokenizer = load_causal_lm(model_dir, cfg.model.dtype)
        result = evaluate(model, tokenizer, requests, kind, settings, reference=reference)
        reference = reference or result  # the unedited model's scores: EasyEdit locality of the others
        rows.append({"label": label, "model": model_dir, "summary": result.summary})
    command = shlex.join(["python", "benchmarks/rescore.py", *(sys.argv[1:] if argv is None else argv)])
    result = {"config": args.config, "command": command,
              "metric_kind": kind, "date": datetime.date.today().isoformat(), "machine": machine(), "rows": rows}
    publish(result, Path(args.results) / f"{args.output}.json", markers, render_table(rows), Path(args.benchmarks_md))


if __name__ == "__main__":
    main()
