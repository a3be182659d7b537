"""benchmarks/full_path_scale.py: the GPT-J config end to end with a tiny stand-in, on real CounterFact."""

import json
import subprocess
import sys

import pytest

from tests.conftest import REPO

STAGES = ["read requests, prefixes", "training examples", "unedited evaluation", "training",
          "merged model saved", "edited evaluation"]


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_the_paper_config_runs_whole_on_cpu_and_the_table_shows_each_stage(shared_data, tmp_path):
    md = tmp_path / "BENCHMARKS.md"
    md.write_text("# Benchmarks\n\n<!-- full-path-scale:start -->\nold\n<!-- full-path-scale:end -->\n")
    results = tmp_path / "full_path_scale.json"
    proc = subprocess.run(
        [sys.executable, "benchmarks/full_path_scale.py", "--sizes", "30", "--data", str(shared_data / "counterfact"),
         "--results", str(results), "--benchmarks-md", str(md), "eval.fluency_tokens=10"],
        cwd=REPO, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    result = json.loads(results.read_text())
    assert result["overrides"] == ["eval.fluency_tokens=10"]
    (run,) = result["runs"]
    # The paper's augmentation on 30 real edits: 10 prefixes and 10 random pool facts each.
    assert run["n_edits"] == 30 and run["skipped"] == 0
    assert run["examples"]["by_kind"] == {"edit": 30, "paraphrase": 300, "random": 300}
    assert list(run["stage_seconds"]) == STAGES and run["peak_rss_mb"] > 100
    # The driver's memory in each stage, and its parts (heap, object store pages it mapped).
    memory = run["driver_memory_mb"]
    assert list(memory) == [*STAGES, "report"]
    assert all(0 < m["RssAnon"] + m["RssShmem"] <= m["VmRSS"] <= run["peak_rss_mb"] + 1 for m in memory.values())
    assert run["train"]["optimizer_steps"] == 20  # 630 examples, batch 32, one epoch
    table = md.read_text()
    assert "old" not in table and "| 30 (0) | 630 |" in table and "training (s)" in table
    assert "train.num_workers=1" in table  # what the CPU changed in the GPU config is said
    assert "Driver memory by stage" in table and "| 30 | " in table


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_synthetic_requests_go_past_the_file_under_their_own_table(shared_data, tmp_path):
    md = tmp_path / "BENCHMARKS.md"
    md.write_text("<!-- full-path-scale:start -->\nkept\n<!-- full-path-scale:end -->\n"
                  "<!-- fps-synthetic:start -->\n<!-- fps-synthetic:end -->\n")
    proc = subprocess.run(
        [sys.executable, "benchmarks/full_path_scale.py", "--synthetic", "--sizes", "20", "--output", "fps-synthetic",
         "--data", str(shared_data / "counterfact"), "--benchmarks-md", str(md), "--results", str(tmp_path / "r.json"),
         "eval.fluency_tokens=10"],
        cwd=REPO, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    (run,) = json.loads((tmp_path / "r.json").read_text())["runs"]
    assert run["n_edits"] == 20 and run["examples"]["by_kind"] == {"edit": 20, "paraphrase": 200, "random": 200}
    assert "kept" in md.read_text() and "| 20 (0) | 420 |" in md.read_text() and "synthetic CounterFact-shaped" in md.read_text()
