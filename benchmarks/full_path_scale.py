"""The whole paper-scale job on CPU: 1,000 and 10,000 CounterFact edits through the GPT-J config.

    python benchmarks/full_path_scale.py --sizes 1000 10000

`configs/gptj-counterfact-10k.yaml` as a user submits it to a GPU cluster, run end to end here
with the changes a 2-core machine forces and nothing else: a tiny random Llama (`ftedit.tiny`) in
place of GPT-J, one CPU training worker and one scoring actor, fp32, one epoch (of the paper's
6; an epoch costs the same each time), the shared CounterFact files for requests and pool, and
checkpoints in the run's staging directory instead of S3. Every stage runs as it would there: the
file read and validated on Ray Data (its 79 conflicting records dropped), pool exclusions, prefix
generation, 10 prefixes + 10 random facts per edit, tokenization, scoring of the unedited model,
DeepSpeed ZeRO-2 LoRA training with checkpoints, the merged model saved, the edited model scored,
the report written. A random model's edit scores mean nothing here; what is measured is that
every stage runs at 10,000 edits, how each stage's time grows with the edits, and the driver's
peak memory, in all and stage by stage (each size runs in a fresh process). Results:
benchmarks/results/<output>.json and the BENCHMARKS.md table between the <output> markers
(default `full-path-scale`).

Past the file's 10,000 records, `--synthetic` edits CounterFact-shaped made-up requests instead
(those of `dry_run_memory.py`, in JSONL parts of 10,000), with the same pool:

    python benchmarks/full_path_scale.py --synthetic --sizes 1000 10000 30000 --output full-path-scale-synthetic

A `model.path=...` override swaps the tiny model for a real one, to see what the model's size
does to the driver (it should do nothing: the driver never loads the model):

    python benchmarks/full_path_scale.py --sizes 30 --output full-path-scale-smollm2 model.path=smollm2-135m
"""

import argparse
import datetime
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.cli import parse_args  # noqa: E402

RESULTS = REPO / "benchmarks" / "results"
COUNTERFACT = REPO.parent / "shared" / "data" / "counterfact"

# What a 2-core machine without a GPU changes in the GPU config; anything else stays as the user runs it.
CPU_OVERRIDES = [
    "model.dtype=float32", "train.precision=fp32", "train.use_gpu=false", "train.num_workers=1",
    "train.cpus_per_worker=1", "train.micro_batch_size=32", "train.storage_path=null", "train.epochs=1",
    "eval.actors=1", "eval.gpus_per_actor=0", "eval.cpus_per_actor=1",
]


def child(config: str, overrides: list[str]) -> None:
    """One run in this process; prints its summary and this process's peak RSS as JSON."""
    from benchmarks.fresh_process import MemorySampler, peak_rss_mb, print_result
    from ftedit import pipeline
    from ftedit.config import load_config
    from ftedit.logs import show_progress

    show_progress()
    # The driver's memory per stage, taken where the run's own stage clock laps.
    sampler = MemorySampler()
    lap = pipeline.StageClock.lap

    def lap_and_mark(clock, stage):
        sampler.mark(stage)
        lap(clock, stage)

    pipeline.StageClock.lap = lap_and_mark
    summary = pipeline.run_mass_edit(load_config(config, overrides))
    sampler.mark("report")
    keep = ("n_edits", "wall_seconds", "examples", "train", "stage_seconds", "after")
    result = {k: summary[k] for k in keep} | {"skipped": len(summary["skipped"])}
    print_result(result | {"peak_rss_mb": peak_rss_mb(), "driver_memory_mb": sampler.stop()})


def render_table(result: dict) -> str:
    stages = list(result["runs"][0]["stage_seconds"])
    rows = ["| edits (skipped) | examples | tokens | " + " | ".join(f"{s} (s)" for s in stages)
            + " | whole job (s) | train tokens/s | driver peak RSS (MB) |",
            "|---:|---:|---:|" + "---:|" * len(stages) + "---:|---:|---:|"]
    for r in result["runs"]:
        cells = [f"{r['n_edits']:,} ({r['skipped']})", f"{r['examples']['examples']:,}", f"{r['examples']['tokens']:,}",
                 *(f"{r['stage_seconds'].get(s, 0):.0f}" for s in stages), f"{r['wall_seconds']:.0f}",
                 f"{r['train']['train_tokens_per_s']:,.0f}", f"{r['peak_rss_mb']:.0f}"]
        rows.append("| " + " | ".join(cells) + " |")
    requests = "synthetic CounterFact-shaped requests" if result.get("synthetic") else "the CounterFact file"
    if all("driver_memory_mb" in r for r in result["runs"]):
        rows += ["", *memory_table(result["runs"])]
    named = [o.split("=", 1)[1] for o in result["overrides"] if o.startswith("model.path=")]
    model = f"`{named[-1]}`" if named else "a tiny random Llama"
    rows += ["", f"Config `{' '.join([result['config'], *result['overrides']])}` on {requests}, with {model} "
                 f"and `{' '.join(CPU_OVERRIDES)}`; {result['date']}, {result['machine']}."]
    return "\n".join(rows)


def memory_table(runs: list[dict]) -> list[str]:
    """The driver's most resident memory in each stage, and how much of it was shared memory
    (Ray's object store blocks the driver mapped while reading them) against its own heap."""
    stages = list(runs[0]["driver_memory_mb"])
    rows = ["Driver memory by stage, MB: most resident (anonymous + shared) while the stage ran.", "",
            "| edits | " + " | ".join(stages) + " |", "|---:|" + "---|" * len(stages)]
    for r in runs:
        cells = []
        for stage in stages:
            m = r["driver_memory_mb"].get(stage, {})
            cells.append(f"{m.get('VmRSS', 0):.0f} ({m.get('RssAnon', 0):.0f} + {m.get('RssShmem', 0):.0f})")
        rows.append(f"| {r['n_edits']:,} | " + " | ".join(cells) + " |")
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/gptj-counterfact-10k.yaml")
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10_000])
    parser.add_argument("--data", type=Path, default=COUNTERFACT, help="folder of counterfact-edit.json and counterfact-train.json")
    parser.add_argument("--synthetic", action="store_true", help="made-up CounterFact-shaped requests, any number")
    parser.add_argument("--output", default="full-path-scale", help="the table's markers in BENCHMARKS.md and the results JSON's name")
    parser.add_argument("--results", type=Path, default=None, help="the results JSON to write (default: benchmarks/results/<output>.json)")
    parser.add_argument("--benchmarks-md", type=Path, default=None, help="the file whose table is rewritten")
    parser.add_argument("--child", metavar="CONFIG", help=argparse.SUPPRESS)
    parser.add_argument("overrides", nargs="*", help="dotted.key=value overrides for every run, anywhere on the line")
    args = parse_args(parser)
    if args.child:
        child(args.child, args.overrides)
        return 0

    from benchmarks.fresh_process import child_result
    from benchmarks.host import machine
    from benchmarks.markdown_table import BENCHMARKS_MD, publish, table_markers
    from ftedit.tiny import build_tiny_model

    benchmarks_md = args.benchmarks_md or BENCHMARKS_MD
    markers = table_markers(args.output, benchmarks_md)  # a place to write, before the long runs
    results = args.results or RESULTS / f"{args.output.replace('-', '_')}.json"
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        model = build_tiny_model(Path(tmp) / "tiny")
        for n in sorted(args.sizes):
            if args.synthetic:
                from benchmarks.dry_run_memory import synthetic_requests

                (Path(tmp) / f"requests-{n}").mkdir()
                requests = [f"data.requests={synthetic_requests(n, Path(tmp) / f'requests-{n}')}", "data.limit=null"]
            else:
                requests = [f"data.requests={args.data / 'counterfact-edit.json'}", f"data.limit={n}"]
            overrides = [f"model.path={model}", *requests, f"data.fact_pool={args.data / 'counterfact-train.json'}",
                         *CPU_OVERRIDES, *args.overrides, f"output.dir={Path(tmp) / f'run-{n}'}"]
            print(f"whole job with {n:,} edit requests ...", file=sys.stderr, flush=True)
            runs.append(child_result([__file__, "--child", args.config, *overrides], f"run with {n:,} edits", cwd=REPO))
            print(f"  {runs[-1]['wall_seconds']:.0f} s, {runs[-1]['peak_rss_mb']:.0f} MB peak", file=sys.stderr)
    result = {"config": args.config, "overrides": args.overrides, "synthetic": args.synthetic, "runs": runs,
              "date": datetime.date.today().isoformat(), "machine": machine()}
    publish(result, results, markers, render_table(result), benchmarks_md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
