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


def test_report_names_at_most_fifty_skipped_requests_and_points_to_the_rest():
    record = counterfact_record([pair(0.5, 1.0)], [], [])
    summary = summary_of([record]) | {"skipped": [f"edits.json: record {i}: field 'target_new': conflict" for i in range(79)]}
    report = render_markdown(summary)
    assert "Skipped 79 invalid request(s):" in report
    assert "- edits.json: record 49: field" in report and "record 50:" not in report
    assert "- ... and 29 more, all listed in summary.json (`skipped`)" in report
    few = render_markdown(summary | {"skipped": summary["skipped"][:3]})
    assert "record 2:" in few and "more, all listed" not in few


def test_report_gives_the_wall_time_of_each_stage():
    summary = summary_of([counterfact_record([pair(0.5, 1.0)], [], [])])
    assert "Wall time, end to end: 1 s." in render_markdown(summary)  # a summary from before stage clocks
    summary |= {"wall_seconds": 449.2, "stage_seconds": {"read requests, prefixes": 20.4, "training": 312.0}}
    assert "Wall time, end to end: 449 s (read requests, prefixes 20 s, training 312 s)." in render_markdown(summary)


def test_report_says_when_the_before_column_was_not_scored_by_the_run():
    summary = summary_of([counterfact_record([pair(0.5, 1.0)], [], [])])
    assert "before column" not in render_markdown(summary | {"unedited_scores": "scored by this run"})
    taken = render_markdown(summary | {"unedited_scores": "taken from runs/a/unedited (eval.unedited_from)"})
    assert "The before column's scores were taken from runs/a/unedited (eval.unedited_from)." in taken
