"""benchmarks/poll_interval.py: runs taken in turn per interval, medians, the same-edit check, the table."""

import json
import sys

import pytest

from tests.conftest import REPO

sys.path.insert(0, str(REPO / "benchmarks"))
from poll_interval import main  # noqa: E402


def _summary(poll: float, repeat: int, edit_score: float = 80.0) -> dict:
    wall = {2.0: 90.0, 0.25: 60.0}[poll] + repeat  # runs of one interval: 90, 91, 92 and 60, 61, 62
    return {"wall_seconds": wall, "stage_seconds": {"training": wall / 2},
            "train": {"train_seconds": wall / 10, "train_tokens_per_s": 1000 / wall},
            "after": {"efficacy": 100.0, "generalization": 90.0, "locality": 70.0, "edit_score": edit_score, "em": 50.0}}


def _stand_in(calls, scores=None):
    def job(config, overrides, out_dir):
        calls.append((config, overrides, out_dir.name))
        poll = float(overrides[-1].split("=")[1])
        repeat = int(out_dir.name.rsplit("run", 1)[1])
        return _summary(poll, repeat, (scores or {}).get((poll, repeat), 80.0))
    return job


def test_intervals_are_taken_in_turn_and_each_row_gives_the_medians(tmp_path):
    md = tmp_path / "BENCHMARKS.md"
    md.write_text("before\n<!-- poll-interval:start -->\nold\n<!-- poll-interval:end -->\nafter\n")
    calls = []
    result = main(["--polls", "2", "0.25", "--repeats", "3", "train.epochs=2", "--results", str(tmp_path),
                   "--benchmarks-md", str(md)], job=_stand_in(calls))
    assert [c[2] for c in calls] == ["poll2-run0", "poll0.25-run0", "poll2-run1", "poll0.25-run1", "poll2-run2",
                                     "poll0.25-run2"]
    assert calls[0][:2] == ("configs/smoke.yaml", ["train.epochs=2", "train.controller_poll_s=2.0"])
    slow, fast = result["rows"]
    assert (slow["controller_poll_s"], slow["runs"], slow["wall_seconds"], slow["training_stage_seconds"]) == (2.0, 3, 91.0, 45.5)
    assert (fast["wall_seconds"], fast["train_seconds"]) == (61.0, 6.1)
    assert fast["same_edit_metrics_at_every_interval"] is True
    table = md.read_text()
    assert "old" not in table and table.startswith("before\n") and table.endswith("after\n")
    assert "| 2 | 3 | 91 | 46 | 9.1 | 11 | 80.0 | 50.0 |" in table and "| 0.25 | 3 | 61 | 30 | 6.1 | 16 |" in table
    assert "were the same" in table
    assert json.loads((tmp_path / "poll-interval.json").read_text())["rows"] == result["rows"]


def test_an_interval_that_changed_the_edit_is_said(tmp_path):
    md = tmp_path / "BENCHMARKS.md"
    md.write_text("<!-- poll-interval:start -->\n<!-- poll-interval:end -->\n")
    result = main(["--repeats", "1", "--results", str(tmp_path), "--benchmarks-md", str(md)],
                  job=_stand_in([], scores={(0.25, 0): 79.0}))
    assert result["rows"][0]["same_edit_metrics_at_every_interval"] is False
    assert "were **not** the same" in md.read_text()


def test_a_missing_table_stops_before_any_run(tmp_path):
    md = tmp_path / "BENCHMARKS.md"
    md.write_text("no markers\n")
    calls = []
    with pytest.raises(ValueError, match="poll-interval"):
        main(["--results", str(tmp_path), "--benchmarks-md", str(md)], job=_stand_in(calls))
    assert calls == []
