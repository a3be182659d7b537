"""benchmarks/rescore.py: saved models scored again with the job's evaluation."""

import json
import shutil
import sys

import pytest
import torch
import yaml

from tests.conftest import REPO
from tests.test_mquake_neighbours import case

sys.path.insert(0, str(REPO / "benchmarks"))
import rescore  # noqa: E402


def test_rescore_scores_each_saved_model_and_the_unedited_one(tiny_model, tmp_path):
    records = [case(1, "Ann", "P27", "HR", "US", hops=[("Cid", "P27", "US", "Cid is a citizen of")]),
               case(2, "Bob", "P19", "FR", "US")]  # no neighbour in the file: locality covers 1 of 2
    (tmp_path / "mquake.json").write_text(json.dumps(records))
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({"model": {"path": str(tiny_model)},
                                      "data": {"requests": str(tmp_path / "mquake.json"), "fact_pool": None}}))
    same = tmp_path / "runs" / "same"  # the unedited weights saved as a run: must score exactly as unedited
    shutil.copytree(tiny_model, same / "model")
    changed = tmp_path / "runs" / "changed"
    from ftedit.model import load_causal_lm

    model, tokenizer = load_causal_lm(tiny_model)
    with torch.no_grad():
        model.lm_head.weight.add_(torch.randn_like(model.lm_head.weight))
    model.save_pretrained(changed / "model")
    tokenizer.save_pretrained(changed / "model")
    md = tmp_path / "BENCHMARKS.md"
    md.write_text("x\n<!-- t:start -->\n<!-- t:end -->\n")

    rescore.main(["--config", str(config), "--runs", str(same), str(changed), "--labels", "same", "changed, w = 1",
                  "--output", "t", "--results", str(tmp_path / "results"), "--benchmarks-md", str(md),
                  "eval.batch_size=4"])
    result = json.loads((tmp_path / "results" / "t.json").read_text())
    unedited, same_row, changed_row = (r["summary"] for r in result["rows"])
    assert result["metric_kind"] == "counterfact" and "eval.batch_size=4" in result["command"]
    assert "'changed, w = 1'" in result["command"]  # a command line that runs as written
    assert (unedited["n_records"], unedited["n_locality"]) == (2, 1)
    for key in ("efficacy", "generalization", "locality", "edit_score", "em", "nm"):
        assert same_row[key] == pytest.approx(unedited[key]), key
    assert same_row["easyedit_locality"] == 100.0  # top-1 tokens compared with the unedited model's
    assert changed_row["nm"] != pytest.approx(unedited["nm"])
    table = md.read_text()
    assert "| same |" in table and "| changed, w = 1 |" in table and "| 1 of 2 |" in table and table.count("\n| ") == 4  # header + 3 models


def test_rescore_refuses_runs_without_a_merged_model(tmp_path):
    with pytest.raises(SystemExit):
        rescore.main(["--config", "configs/smoke.yaml", "--runs", str(tmp_path), "--output", "t"])
