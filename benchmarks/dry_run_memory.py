"""Driver memory of a big job's dry run: peak RSS with 1,000 vs 100,000 synthetic edit requests.

    python benchmarks/dry_run_memory.py --config configs/bench-counterfact-smollm2.yaml --sizes 1000 100000

Writes CounterFact-shaped synthetic requests (unique made-up subjects, 2 paraphrases and 10
neighbourhood prompts each, like ROME's CounterFact) as JSONL parts of 10,000 records, then
runs `jobs/mass_edit.py --dry-run`'s planning code on each size in a fresh process (local Ray,
the config's model and fact pool): read and validate on Ray Data, augment, tokenize, count.
The driver's peak RSS (getrusage) must grow by < 100 MB from the smallest to the largest size:
the requests and examples stay on the cluster. Results: benchmarks/results/dry_run_memory.json
and the BENCHMARKS.md section between the dry-run-memory markers.
"""

import argparse
import datetime
import json
import random
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.cli import parse_args  # noqa: E402

RESULTS = REPO / "benchmarks" / "results" / "dry_run_memory.json"
START, END = "<!-- dry-run-memory:start -->", "<!-- dry-run-memory:end -->"
PART = 10_000
SYLLABLES = ["ka", "lo", "mi", "ren", "tas", "vo", "qui", "bel", "dra", "nu", "sef", "or", "pim", "zul", "ath", "gen"]
RELATIONS = [("The mother tongue of {} is", "French", "English"), ("{} is a citizen of", "Canada", "Japan"),
             ("{} works in the field of", "chemistry", "music"), ("The headquarters of {} is in", "Paris", "Oslo")]


def synthetic_requests(n: int, directory: Path) -> str:
    """`n` CounterFact-shaped records in JSONL parts; returns their glob."""
    rng = random.Random(n)
    for part in range(0, n, PART):
        lines = []
        for i in range(part, min(n, part + PART)):
            name = " ".join("".join(rng.choice(SYLLABLES) for _ in range(3)).capitalize() for _ in range(2)) + f" {i}"
            template, true, new = RELATIONS[i % len(RELATIONS)]
            lines.append(json.dumps({
                "case_id": i, "prompt": template.format(name), "subject": name, "target_new": new, "target_true": true,
                "paraphrases": [f"Some say that. {template.format(name)}", f"{name} is known. {template.format(name)}"],
                "neighbourhood": [template.format(f"Neighbour {i}-{k}") for k in range(10)],
            }))
        (directory / f"part-{part // PART:05d}.jsonl").write_text("\n".join(lines) + "\n")
    return str(directory / "part-*.jsonl")


def child(config: str, requests: str, overrides: list[str]) -> None:
    """One dry run in this process; prints its plan and this process's peak RSS as JSON."""
    from benchmarks.fresh_process import peak_rss_mb, print_result
    from ftedit.config import load_config
    from ftedit.logs import show_progress
    from ftedit.pipeline import plan_run

    show_progress()
    cfg = load_config(config, [f"data.requests={requests}", "data.limit=null", *overrides])
    plan = plan_run(cfg)
    print_result(plan | {"peak_rss_mb": peak_rss_mb()})


def render_table(result: dict) -> str:
    rows = ["| requests | examples | tokens | dry run (s) | driver peak RSS (MB) |", "|---:|---:|---:|---:|---:|"]
    for r in result["runs"]:
        rows.append(f"| {r['n_edits']:,} | {r['examples']['examples']:,} | {r['examples']['tokens']:,} "
                    f"| {r['wall_seconds']:.0f} | {r['peak_rss_mb']:.0f} |")
    growth = result["runs"][-1]["peak_rss_mb"] - result["runs"][0]["peak_rss_mb"]
    verdict = "met" if growth < 100 else "missed"
    rows += ["", f"Growth of the driver's peak RSS from {result['runs'][0]['n_edits']:,} to "
                 f"{result['runs'][-1]['n_edits']:,} requests: **{growth:+.0f} MB** (bar < 100 MB: {verdict}). "
                 f"Config `{' '.join([result['config'], *result['overrides']])}`, {result['date']}, {result['machine']}."]
    return "\n".join(rows)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/bench-counterfact-smollm2.yaml")
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 100_000])
    parser.add_argument("--child", nargs=2, metavar=("CONFIG", "REQUESTS"), help=argparse.SUPPRESS)
    parser.add_argument("overrides", nargs="*", help="dotted.key=value overrides for every run, anywhere on the line")
    args = parse_args(parser)
    if args.child:
        child(*args.child, args.overrides)
        return 0

    from benchmarks.fresh_process import child_result
    from benchmarks.host import machine

    runs = []
    for n in sorted(args.sizes):
        with tempfile.TemporaryDirectory() as tmp:
            pattern = synthetic_requests(n, Path(tmp))
            print(f"dry run with {n:,} synthetic requests ...", file=sys.stderr, flush=True)
            runs.append(child_result([__file__, "--child", args.config, pattern, *args.overrides],
                                     f"dry run with {n:,} requests", cwd=REPO))
            print(f"  {runs[-1]['peak_rss_mb']:.0f} MB peak, {runs[-1]['wall_seconds']:.0f} s", file=sys.stderr)
    result = {"config": args.config, "overrides": args.overrides, "runs": runs,
              "date": datetime.date.today().isoformat(), "machine": machine()}
    from benchmarks.markdown_table import BENCHMARKS_MD, publish

    text = BENCHMARKS_MD.read_text()
    if START not in text:  # first run: add the section the table lives in
        BENCHMARKS_MD.write_text(text + "\n## Dry run of a big job: driver memory\n\n```bash\n"
                                 f"python benchmarks/dry_run_memory.py\n```\n\n{START}\n{END}\n")
    publish(result, RESULTS, (START, END), render_table(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
