"""Fluency on prompts no run trained on: greedy generations from each edit's paraphrases.

    python benchmarks/fluency_heldout.py --config configs/bench-counterfact-smollm2.yaml [key=value ...] \
        --runs runs/a runs/b [--labels "a" "b"] [--output NAME]

The job's fluency (`eval.fluency_tokens`) continues the data's generation prompts, or the edit
prompt when the data has none (EasyEdit-style CounterFact, zsRE). The edit prompt is trained on,
and continuation anchors (`augment.continuation_tokens`) even train the first words after its
answer, so that figure is partly in-sample. Here every saved model (each run's merged `model/`,
and the unedited model of the config) continues the edits' paraphrase prompts instead: held-out
prompts that name the subject and that no run ever trains on (evaluation prompts are excluded
from training). Reported per model: n-gram entropy (ROME/MEMIT fluency, x100) and how often a
generation says the new target, and says it more than once (the "English English" failure).
Results go to benchmarks/results/NAME.json and to the table between `<!-- NAME:start -->` and
`<!-- NAME:end -->` in BENCHMARKS.md (NAME: `--output`, default fluency-heldout). The config
overrides (e.g. `data.offset=100`) pick the same requests as the runs were given.
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import re
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.markdown_table import marker_lines, replace_between  # noqa: E402
from ftedit.config import load_config  # noqa: E402
from ftedit.logs import show_progress  # noqa: E402

RESULTS = REPO / "benchmarks" / "results"


def heldout_prompts(requests) -> list[tuple[str, str]]:
    """(prompt, new target) for every paraphrase of every request; requests without any are skipped."""
    return [(p, r.target_new) for r in requests for p in r.paraphrases]


def mentions(text: str, target: str) -> int:
    """How many times `target` appears in `text` as whole words (case-insensitive)."""
    return len(re.findall(rf"(?<!\w){re.escape(target.strip())}(?!\w)", text, flags=re.IGNORECASE))


def measure(model_dir: str, pairs: list[tuple[str, str]], tokens: int, batch_size: int) -> dict:
    from ftedit.fluency import generate_greedy
    from ftedit.metrics import ngram_entropy
    from ftedit.model import load_causal_lm

    model, tokenizer = load_causal_lm(model_dir)
    texts = generate_greedy(model, tokenizer, [p for p, _ in pairs], tokens, batch_size)
    said = [mentions(t, target) for t, (_, target) in zip(texts, pairs)]
    return {
        "fluency": 100 * sum(ngram_entropy(t) for t in texts) / len(texts),
        "says_new_target": 100 * sum(n > 0 for n in said) / len(said),
        "repeats_new_target": 100 * sum(n > 1 for n in said) / len(said),
        "examples": [p + t for (p, _), t in zip(pairs[:3], texts[:3])],
    }


def render_table(rows: list[dict]) -> str:
    lines = ["| model | prompts | fluency (held-out) | says the new target (%) | says it twice or more (%) |",
             "|---|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['label']} | {r['prompts']} | {r['fluency']:.0f} | {r['says_new_target']:.0f} "
                     f"| {r['repeats_new_target']:.0f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="the runs' config: its requests and unedited model")
    parser.add_argument("--runs", nargs="+", required=True, help="run directories with a merged model/")
    parser.add_argument("--labels", nargs="*", help="a label per run (default: the run directory's name)")
    parser.add_argument("--tokens", type=int, default=50, help="generated tokens per prompt (ROME: 50)")
    parser.add_argument("--results", default=str(RESULTS))
    parser.add_argument("--output", default="fluency-heldout", help="results file and BENCHMARKS.md table name")
    parser.add_argument("overrides", nargs="*", help="config overrides the runs were given, e.g. data.offset=100 (before --runs)")
    parser.add_argument("--benchmarks-md", default=str(REPO / "BENCHMARKS.md"))
    args = parser.parse_args()
    show_progress()
    labels = args.labels or [Path(r).name for r in args.runs]
    if len(labels) != len(args.runs):
        parser.error(f"{len(labels)} labels for {len(args.runs)} runs")
    from ftedit.assets import resolve_model_path
    from ftedit.requests import load_requests

    cfg = load_config(args.config, args.overrides)
    requests = load_requests(cfg.data.requests, cfg.data.format, cfg.data.limit, cfg.data.zsre_target,
                             offset=cfg.data.offset).requests
    pairs = heldout_prompts(requests)
    if not pairs:
        parser.error(f"{cfg.data.requests}: no request has paraphrase prompts to generate from")
    models = [("unedited", str(resolve_model_path(cfg.model.path, cfg.model.cache_dir)))]
    models += [(label, str(Path(run) / "model")) for label, run in zip(labels, args.runs)]
    rows = []
    for label, model_dir in models:
        logging.info("held-out fluency: %s (%s)", label, model_dir)
        rows.append({"label": label, "model": model_dir, "prompts": len(pairs),
                     **measure(model_dir, pairs, args.tokens, cfg.eval.batch_size)})
    command = " ".join(["python benchmarks/fluency_heldout.py", *sys.argv[1:]])
    result = {"config": args.config, "command": command, "date": datetime.date.today().isoformat(), "rows": rows}
    Path(args.results).mkdir(parents=True, exist_ok=True)
    (Path(args.results) / f"{args.output}.json").write_text(json.dumps(result, indent=2) + "\n")
    md = Path(args.benchmarks_md)
    text = md.read_text()
    start, end = marker_lines(args.output)
    if start in text:
        md.write_text(replace_between(text, start, end, render_table(rows)))
    print(render_table(rows))


if __name__ == "__main__":
    main()
