"""Run outputs: summary.json, per-edit results (JSONL) and report.md with the before/after table."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

from ftedit.metrics import MetricTotals
from ftedit.unedited import SCORED
from ftedit.edit_request import EditRequest

# Skipped requests named in report.md; summary.json keeps every one (a big file may hold thousands).
SKIPPED_LISTED = 50

# Rows of the before/after table, in order; keys absent from a metric family are skipped.
TABLE_ROWS = (
    ("edit_score", "Edit score (harmonic mean)"),
    ("efficacy", "Efficacy"),
    ("generalization", "Generalization"),
    ("locality", "Locality"),
    ("easyedit_locality", "Locality, EasyEdit (top-1 agreement with unedited)"),
    ("es", "ES: rewrite, P(new) > P(true)"),
    ("ps", "PS: paraphrase, P(new) > P(true)"),
    ("ns", "NS: neighbourhood, P(true) > P(new)"),
    ("em", "EM: rewrite, P(new) - P(true)"),
    ("pm", "PM: paraphrase, P(new) - P(true)"),
    ("nm", "NM: neighbourhood, P(true) - P(new)"),
    ("specificity", "Specificity (loc accuracy)"),
    ("portability", "Portability: multi-hop questions answered with the new fact"),
    ("fluency", "Fluency: n-gram entropy of generations (x100)"),
)


def write_json(path: Path, data) -> None:
    path.write_text(json.dumps(data, indent=2) + "\n")


def write_per_edit(path: Path, rows: Iterable[tuple[EditRequest, dict, dict]], kind: str) -> tuple[dict, dict]:
    """Write one JSON line per (request, before metrics, after metrics) as the rows stream past,
    and return the before and after summaries (metrics.summarize over the same records)."""
    before_totals, after_totals = MetricTotals(kind), MetricTotals(kind)
    with path.open("w") as f:
        for request, b, a in rows:
            before_totals.add(b)
            after_totals.add(a)
            row = {
                "case_id": request.case_id,
                "prompt": request.prompt,
                "target_new": request.target_new,
                "target_true": request.target_true,
                "before": {k: v for k, v in b.items() if k != "case_id"},
                "after": {k: v for k, v in a.items() if k != "case_id"},
            }
            f.write(json.dumps(row) + "\n")
    return before_totals.summary(), after_totals.summary()


def _stages(seconds: dict | None) -> str:
    """' (stage 12 s, ...)' from the run's stage clock; empty for summaries written without one."""
    return " (" + ", ".join(f"{stage} {t:.0f} s" for stage, t in seconds.items()) + ")" if seconds else ""


def _fmt(value) -> str:
    return "n/a" if value is None else f"{value:.1f}"


def render_markdown(summary: dict) -> str:
    before, after = summary["before"], summary["after"]
    lines = [
        f"# ftedit run: {summary['n_edits']} edits",
        "",
        f"Model `{summary['model']}`, requests `{summary['requests']}`, metrics: {summary['metric_kind']} "
        "(computed as ROME/MEMIT do; percent).",
        "",
        "| metric | before | after | change |",
        "|---|---:|---:|---:|",
    ]
    for key, label in TABLE_ROWS:
        if key not in after:
            continue
        b, a = before.get(key), after.get(key)
        change = "n/a" if a is None or b is None else f"{a - b:+.1f}"
        lines.append(f"| {label} | {_fmt(b)} | {_fmt(a)} | {change} |")
    origin = summary.get("unedited_scores")
    if origin and origin != SCORED:  # the before column came from saved scores, not this run's evaluation
        lines += ["", f"The before column's scores were {origin}."]
    n_locality, n_records = after.get("n_locality"), after.get("n_records")
    if n_locality is not None and n_records and n_locality < n_records:
        lines += ["", f"Locality is measured on the {n_locality} of {n_records} edits that have neighbourhood prompts."]
    train, examples = summary["train"], summary["examples"]
    kinds = ", ".join(f"{k} {v}" for k, v in sorted(examples["by_kind"].items()))
    lines += [
        "",
        f"Training: {examples['examples']} examples ({kinds}), {examples['tokens']} tokens; "
        f"{train['optimizer_steps']} optimizer steps in {train['train_seconds']:.0f} s, "
        f"{train['train_tokens_per_s']:.0f} training tokens/s.",
        f"Wall time, end to end: {summary['wall_seconds']:.0f} s{_stages(summary.get('stage_seconds'))}.",
    ]
    skipped = summary["skipped"]
    if skipped:
        lines += ["", f"Skipped {len(skipped)} invalid request(s):", ""]
        lines += [f"- {reason}" for reason in skipped[:SKIPPED_LISTED]]
        if len(skipped) > SKIPPED_LISTED:
            lines.append(f"- ... and {len(skipped) - SKIPPED_LISTED} more, all listed in summary.json (`skipped`)")
    return "\n".join(lines) + "\n"
