"""report.md: the before/after table and what it covers."""

from ftedit.metrics import counterfact_record, summarize
from ftedit.report import render_markdown
from tests.test_metrics import pair


def summary_of(records):
    before = summarize(records, "counterfact")
    return {"n_edits": len(records), "model": "m", "requests": "r.json", "metric_kind": "counterfact",
            "before": before, "after": before, "skipped": [], "wall_seconds": 1.0,
            "train": {"optimizer_steps": 1, "train_seconds": 1.0, "train_tokens_per_s": 1.0},
            "examples": {"examples": 1, "tokens": 1, "by_kind": {"edit": 1}}}


def test_report_says_when_locality_covers_only_some_edits():
    with_neighbours = counterfact_record([pair(0.5, 1.0)], [], [pair(1.0, 0.5)])
    without = counterfact_record([pair(0.5, 1.0)], [], [])  # e.g. an MQuAKE rewrite with no neighbour in its file
    partial = render_markdown(summary_of([with_neighbours, without]))
    assert "| NS: neighbourhood, P(true) > P(new) | 100.0 | 100.0 | +0.0 |" in partial
    assert "Locality is measured on the 1 of 2 edits that have neighbourhood prompts." in partial
    assert "Locality is measured" not in render_markdown(summary_of([with_neighbours, with_neighbours]))
