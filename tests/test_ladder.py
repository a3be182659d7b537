"""benchmarks/ladder.py: rung overrides, merging of result rows, saving after each rung, and a real rung."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

sys.path.insert(0, str(REPO / "benchmarks"))
from host import machine  # noqa: E402
import ladder  # noqa: E402
from ladder import merge_rows, read_plan, run_ladder, rung_overrides, score_lines  # noqa: E402

from ftedit.unedited import SCORED  # noqa: E402


def test_each_rung_adds_one_ingredient():
    assert rung_overrides("FT", 10, 6) == [
        "loss.mode=full", "augment.n_paraphrase=0", "augment.n_random=0", "augment.n_similar=0",
        "augment.n_same_answer=0"]
    assert rung_overrides("FT+M", 10, 6)[0] == "loss.mode=conditional"
    counts = lambda method: rung_overrides(method, 10, 6)[1:4]  # noqa: E731
    assert counts("FT+M+P") == ["augment.n_paraphrase=10", "augment.n_random=0", "augment.n_similar=0"]
    assert counts("FT+M+P+R") == ["augment.n_paraphrase=10", "augment.n_random=6", "augment.n_similar=0"]
    assert counts("FT+M+P+S") == ["augment.n_paraphrase=10", "augment.n_random=0", "augment.n_similar=6"]
    # No rung inherits same-answer facts from its base config.
    assert all(rung_overrides(m, 10, 6)[-1] == "augment.n_same_answer=0" for m in ("FT", "FT+M+P+R", "FT+M+P+S"))


def test_new_rows_replace_rows_of_the_same_setting():
    old = [{"dataset": "cf", "method": "FT", "tuning": "lora", "n_edits": 10, "edit_score": 1.0},
           {"dataset": "cf", "method": "FT+M", "tuning": "lora", "n_edits": 10, "edit_score": 2.0}]
    new = [{"dataset": "cf", "method": "FT", "tuning": "lora", "n_edits": 10, "edit_score": 3.0},
           {"dataset": "cf", "method": "unedited", "tuning": "-", "n_edits": 10, "edit_score": 0.5}]
    rows = merge_rows(old, new)
    assert [(r["method"], r["edit_score"]) for r in rows] == [("unedited", 0.5), ("FT", 3.0), ("FT+M", 2.0)]


def test_two_term_scores_are_a_hollow_segment_never_joined_to_three_term_ones():
    unedited = {"method": "unedited", "locality": 80.0}
    three_term = [unedited, {"method": "FT", "locality": 60.0}]
    assert score_lines("full", 10, three_term) == [("full, 10 edits", three_term, False)]
    old = [{"method": "unedited", "locality": None}, {"method": "FT", "locality": None}]
    assert score_lines("lora", 100, old) == [("lora, 100 edits: score without locality (hollow)", old, True)]
    # Rungs re-measured with locality keep their line; the rest stand apart, hollow.
    later = [{"method": "FT+M+P+R", "locality": None}, {"method": "FT+M+P+S", "locality": None}]
    assert score_lines("lora", 300, [*three_term, *later]) == [
        ("lora, 300 edits", three_term, False), ("lora, 300 edits: score without locality (hollow)", later, True)]


def test_a_ladder_stopped_midway_has_saved_the_rungs_that_finished(monkeypatch, tmp_path):
    import ftedit.pipeline

    side = {"efficacy": 90.0, "generalization": 80.0, "locality": 70.0, "edit_score": 79.0}
    calls = []

    def fake_run(cfg):  # the first rung finishes, the second dies (a killed job, a lost node)
        calls.append(cfg.output.dir)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return {"data_format": "jsonl", "before": side, "after": side, "wall_seconds": 1.0,
                "train": {"train_tokens_per_s": 2.0}}

    monkeypatch.setattr(ftedit.pipeline, "run_mass_edit", fake_run)
    saved = []
    with pytest.raises(KeyboardInterrupt):
        run_ladder("configs/smoke.yaml", [4], ["lora"], ["FT", "FT+M"], [], [], tmp_path,
                   on_rung=lambda rows: saved.append([r["method"] for r in rows]))
    assert saved == [["unedited", "FT"]]
    assert [Path(d).name for d in calls] == ["smoke-4-lora-FT", "smoke-4-lora-FT_M"]


def test_rungs_that_differ_in_training_only_share_one_unedited_evaluation(monkeypatch, tmp_path):
    import ftedit.pipeline

    side = {"efficacy": 90.0, "generalization": 80.0, "locality": 70.0, "edit_score": 79.0}
    calls = []

    def fake_run(cfg):  # a run scores the unedited model in 30 s, or copies saved scores in 1 s
        calls.append((Path(cfg.output.dir).name, cfg.eval.unedited_from))
        reused = cfg.eval.unedited_from is not None
        return {"data_format": "jsonl", "before": side, "after": side, "wall_seconds": 100.0,
                "stage_seconds": {"unedited evaluation": 1.0 if reused else 30.0},
                "unedited_scores": "taken from ..." if reused else SCORED, "train": {"train_tokens_per_s": 2.0}}

    monkeypatch.setattr(ftedit.pipeline, "run_mass_edit", fake_run)
    # The full fine-tuning rows load the model in another dtype: another unedited evaluation.
    rows = run_ladder("configs/smoke.yaml", [4, 6], ["lora", "full"], ["FT", "FT+M"], ["model.dtype=bfloat16"], [],
                      tmp_path)
    lora_4, full_4, lora_6, full_6 = (str(tmp_path / f"smoke-{n}-{t}-FT") for n in (4, 6) for t in ("lora", "full"))
    assert calls == [("smoke-4-lora-FT", None), ("smoke-4-lora-FT_M", lora_4),
                     ("smoke-4-full-FT", None), ("smoke-4-full-FT_M", full_4),
                     ("smoke-6-lora-FT", None), ("smoke-6-lora-FT_M", lora_6),
                     ("smoke-6-full-FT", None), ("smoke-6-full-FT_M", full_6)]
    # A row's wall time is the rung's cost as a run of its own: a reusing run's own copy of the
    # scores (1 s) is replaced by the 30 s it took the run that scored them.
    walls = {(r["n_edits"], r["tuning"], r["method"]): r["wall_seconds"] for r in rows if r["method"] != "unedited"}
    assert walls == {(n, t, m): 100.0 if m == "FT" else 129.0
                     for n in (4, 6) for t in ("lora", "full") for m in ("FT", "FT+M")}


def test_a_ladder_rung_on_the_tiny_model_writes_rows_table_and_plot(tmp_path):
    md = tmp_path / "BENCHMARKS.md"
    md.write_text("# B\n<!-- ladder:start -->\nold\n<!-- ladder:end -->\nafter\n")
    proc = subprocess.run(
        [sys.executable, "benchmarks/ladder.py", "--base", "configs/smoke.yaml", "--sizes", "4",
         "--methods", "FT+M+P+R", "--runs-dir", str(tmp_path / "runs"), "--results", str(tmp_path),
         "--benchmarks-md", str(md), "eval.fluency_tokens=8", "train.epochs=4"],
        cwd=REPO, capture_output=True, text=True, timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    rows = json.loads((tmp_path / "ladder.json").read_text())
    assert [(r["method"], r["tuning"], r["n_edits"]) for r in rows] == [("unedited", "-", 4), ("FT+M+P+R", "lora", 4)]
    by_method = {r["method"]: r for r in rows}
    for r in rows:
        assert r["dataset"] == "jsonl" and 0 <= r["edit_score"] <= 100 and r["fluency"] is not None
        assert r["machine"].split(",")[0] == machine().split(",")[0]  # the CPU and its kernel set
    # The rung ran its own recipe on the base config: conditional loss, prefixes and random facts.
    full = json.loads((tmp_path / "runs" / "smoke-4-lora-FT_M_P_R" / "summary.json").read_text())
    assert full["examples"]["by_kind"] == {"edit": 4, "paraphrase": 12, "random": 12}
    ran = (tmp_path / "runs" / "smoke-4-lora-FT_M_P_R" / "config.yaml").read_text()
    assert "mode: conditional" in ran and "epochs: 4" in ran
    assert by_method["unedited"]["edit_score"] == pytest.approx(full["before"]["edit_score"])
    assert by_method["FT+M+P+R"]["edit_score"] == pytest.approx(full["after"]["edit_score"])
    assert by_method["FT+M+P+R"]["wall_seconds"] == pytest.approx(full["wall_seconds"])
    text = md.read_text()
    assert "old" not in text and "| jsonl | 4 | FT+M+P+R | lora |" in text and text.endswith("after\n")
    assert (tmp_path / "ladder.png").stat().st_size > 10_000


def test_every_ladder_command_in_the_docs_parses_with_its_overrides():
    """The documented commands put overrides after `--methods`/`--tunings`; plain argparse gave
    them to those lists and refused to start."""
    import shlex

    from ladder import METHODS, parse_command_line

    commands = [line for doc in ("README.md", "BENCHMARKS.md") for line in (REPO / doc).read_text().splitlines()
                if line.startswith("python benchmarks/ladder.py ")]
    assert len(commands) >= 4
    for command in commands:
        tokens = shlex.split(command, comments=True)[2:]
        args = parse_command_line(tokens)
        if args.plan:  # its entries are ladder command lines too
            assert read_plan(REPO / args.plan), command
            continue
        assert args.overrides == [t for t in tokens if "=" in t and not t.startswith("-")], command
        assert set(args.methods) <= set(METHODS[1:]) and args.sizes, command


def test_the_plan_gives_every_row_of_the_published_table_and_no_other(shared_data):
    from ladder import METHODS

    from ftedit.config import load_config
    from ftedit.requests import load_requests

    planned = set()
    for args in read_plan(REPO / "benchmarks" / "ladder-plan.yaml"):
        cfg = load_config(args.base, args.overrides)
        dataset = load_requests(cfg.data.requests, limit=1).format  # the rows' dataset name
        planned |= {(dataset, "unedited", "-", n) for n in args.sizes}
        planned |= {(dataset, m, t, n) for n in args.sizes for t in args.tunings for m in args.methods}
    published = json.loads((REPO / "benchmarks" / "results" / "ladder.json").read_text())
    assert planned == {tuple(r[k] for k in ("dataset", "method", "tuning", "n_edits")) for r in published}
    assert len(planned) == 3 * 3 * (1 + 2 * (len(METHODS) - 1))


def plan_file(tmp_path, *entries):
    path = tmp_path / "plan.yaml"
    path.write_text("".join(f"- {json.dumps(e)}\n" for e in entries))
    return path


def test_a_plan_runs_its_entries_in_order_with_the_outer_overrides(monkeypatch, tmp_path):
    calls = []
    monkeypatch.setattr(ladder, "run_ladder", lambda *a, **k: calls.append(a) or [])
    monkeypatch.setattr(ladder, "write_outputs", lambda rows, results, md: rows)
    plan = plan_file(tmp_path, "--base configs/smoke.yaml --sizes 4 train.epochs=1",
                     "--base configs/smoke.yaml --tunings lora full --methods FT --full train.lr=1e-5")
    monkeypatch.setattr(sys, "argv", ["ladder.py", "--plan", str(plan), "seed=3",
                                      "--runs-dir", str(tmp_path / "runs")])
    ladder.main()
    assert [c[:6] for c in calls] == [
        ("configs/smoke.yaml", [4], ["lora"], list(ladder.METHODS[1:]), ["train.lr=5e-5"], ["train.epochs=1", "seed=3"]),
        ("configs/smoke.yaml", [10, 100], ["lora", "full"], ["FT"], ["train.lr=1e-5"], ["seed=3"]),
    ]
    assert all(c[6] == tmp_path / "runs" for c in calls)


@pytest.mark.parametrize("entry, message", [
    ("--base configs/smoke.yaml train.lrr=1", "lrr"),
    ("--base configs/smoke.yaml --epochs 3", "unrecognized arguments: --epochs"),
    ("--sizes 10", "needs --base"),
    ("--base configs/smoke.yaml --results elsewhere", "--results belongs on the command line"),
    ("--base configs/no-such.yaml", "no such file"),
    ("--base 'configs/smoke.yaml", "quotation"),
])
def test_a_bad_plan_entry_is_named_before_any_rung_runs(monkeypatch, tmp_path, entry, message):
    calls = []
    monkeypatch.setattr(ladder, "run_ladder", lambda *a, **k: calls.append(a) or [])
    monkeypatch.setattr(ladder, "write_outputs", lambda rows, results, md: rows)
    plan = plan_file(tmp_path, "--base configs/smoke.yaml --sizes 4", entry)
    monkeypatch.setattr(sys, "argv", ["ladder.py", "--plan", str(plan)])
    with pytest.raises(SystemExit) as exit:
        ladder.main()
    assert f"{plan}: entry 2 " in str(exit.value) and message in str(exit.value)
    assert calls == []  # the good first entry did not start


def test_a_plan_is_a_list_of_command_lines_and_stands_alone(tmp_path):
    for text in ("", "base: configs/smoke.yaml\n", "- [--base, configs/smoke.yaml]\n"):
        (tmp_path / "plan.yaml").write_text(text)
        with pytest.raises(ValueError, match="plan.yaml"):
            read_plan(tmp_path / "plan.yaml")
    for argv in (["--plan", "p.yaml", "--sizes", "10"], ["--plan", "p.yaml", "--base", "b.yaml"], []):
        with pytest.raises(SystemExit):
            ladder.parse_command_line(argv)
