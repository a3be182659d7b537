"""--dry-run: validate, augment and tokenize on Ray Data and count, without training or writing.
The paper-scale configs (GPT-J LoRA ZeRO-2, Llama-3-8B full ZeRO-3, Llama-3-70B LoRA ZeRO-3)
plan with a tiny stand-in model."""

import json
import math
import os
import subprocess
import sys

import pytest

from ftedit.config import load_config
from tests.conftest import REPO

pytestmark = pytest.mark.timeout(600)

PAPER_SCALE_CONFIGS = ["gptj-counterfact-10k.yaml", "llama3-8b-counterfact-full-zero3.yaml",
                       "llama3-70b-counterfact-lora-zero3.yaml"]


@pytest.mark.parametrize("config", PAPER_SCALE_CONFIGS)
def test_paper_scale_config_dry_runs_with_a_tiny_stand_in(config, tiny_model, shared_data, tmp_path):
    out = tmp_path / "run"
    counterfact = shared_data / "counterfact"
    proc = subprocess.run(
        [sys.executable, "jobs/mass_edit.py", "--config", f"configs/{config}", "--dry-run",
         f"model.path={tiny_model}", f"data.requests={counterfact / 'counterfact-edit.json'}",
         f"data.fact_pool={counterfact / 'counterfact-train.json'}", "data.limit=100", f"output.dir={out}",
         f"train.storage_path={tmp_path / 'checkpoints'}"],  # for the config's placeholder bucket (checked below)
        cwd=REPO, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    plan = json.loads(proc.stdout)
    cfg = load_config(REPO / "configs" / config)
    assert plan["n_edits"] == 100 and plan["metric_kind"] == "counterfact"
    by_kind = plan["examples"]["by_kind"]
    # Every edit gets its prefixes and pool facts; an evaluation prompt is never trained on, and
    # record 92's paraphrase prompt is its own prompt ("Haseeb Ahsan is a citizen of"), so 99.
    assert by_kind["paraphrase"] == 100 * cfg.augment.n_paraphrase and by_kind["random"] == 100 * cfg.augment.n_random
    assert by_kind["edit"] == 99 and plan["examples"]["examples"] == sum(by_kind.values())
    assert "1 edit prompt(s) are also evaluation prompts of this run" in proc.stderr
    per_worker = plan["examples"]["examples"] // cfg.train.num_workers
    steps = math.ceil(per_worker / cfg.train.micro_batch_size) // cfg.train.grad_accum_steps
    assert plan["optimizer_steps"] == cfg.train.epochs * steps
    assert plan["train_tokens"] == cfg.train.epochs * plan["examples"]["tokens"] > 0
    assert not out.exists() and not out.with_name("run.incomplete").exists()  # nothing written
    assert list((tmp_path / "checkpoints").iterdir()) == []  # the storage check left nothing behind


def test_a_paper_config_whose_bucket_is_still_the_placeholder_is_refused_before_ray_starts(tmp_path):
    """The paper configs ship with `s3://YOUR-BUCKET/...`: the dry run (and the job) stops at once,
    naming the key, not after the prefixes and the unedited evaluation. An S3 server on loopback
    (moto's) stands in for AWS, which answers the same for a bucket that does not exist."""
    from tests.s3_server import s3_bucket

    with s3_bucket() as bucket:
        for extra in (["--dry-run"], [f"output.dir={tmp_path / 'run'}"]):
            proc = subprocess.run(
                [sys.executable, "jobs/mass_edit.py", "--config", f"configs/{PAPER_SCALE_CONFIGS[0]}", *extra],
                cwd=REPO, capture_output=True, text=True, timeout=120, env={**os.environ, **bucket.environment()},
            )
            assert proc.returncode == 2, proc.stderr[-4000:]
            assert "error: train.storage_path: cannot write checkpoints to s3://YOUR-BUCKET/" in proc.stderr
            assert "Started a local Ray instance" not in proc.stderr and not proc.stdout
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("config", PAPER_SCALE_CONFIGS)
def test_paper_scale_config_accepts_its_whole_requests_file(config, shared_data):
    """All 10,000 records the config asks for, not a sample: 79 of them edit an earlier record's
    prompt to another answer, and the config must drop them (listed) rather than stop the job."""
    from ftedit.requests import load_requests

    cfg = load_config(REPO / "configs" / config)
    requests_file = shared_data / "counterfact" / "counterfact-edit.json"
    loaded = load_requests(requests_file, cfg.data.format, cfg.data.limit, cfg.data.zsre_target,
                           cfg.data.on_invalid == "skip", cfg.data.offset)
    assert len(loaded.requests) + len(loaded.skipped) == cfg.data.limit == 10_000
    assert len(loaded.skipped) == 79 and {e.field for e in loaded.skipped} == {"target_new"}
    first = loaded.skipped[0]
    assert (first.index, first.case_id) == (1091, "2362") and "conflicts with record 452 (case_id 1004)" in str(first)
