"""ftedit/precision.py: `auto` precision per device, and explicit bf16 refused where it would crawl."""

import platform
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ftedit.precision import native_bf16, resolve_precision

REPO = Path(__file__).resolve().parents[1]
CPU = torch.device("cpu")


@pytest.mark.parametrize("supported, expected", [(True, "bf16-mixed"), (False, "fp32")])
def test_auto_trains_in_bf16_only_where_the_device_has_it(supported, expected):
    assert resolve_precision("auto", CPU, supports_bf16=supported) == expected


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_other_precisions_pass_through_whatever_the_device(precision):
    assert resolve_precision(precision, CPU, supports_bf16=False) == precision


@pytest.mark.parametrize("precision", ["bf16-mixed", "bf16"])
def test_explicit_bf16_is_kept_where_native_and_refused_where_not(precision):
    assert resolve_precision(precision, CPU, supports_bf16=True) == precision
    with pytest.raises(ValueError, match=rf"train.precision={precision}: .*\(cpu\) has no native bf16.*train.precision=auto"):
        resolve_precision(precision, CPU, supports_bf16=False)


@pytest.mark.skipif(platform.machine() != "x86_64", reason="x86 feature probes")
def test_cpu_probe_agrees_with_the_cpu_flags():
    flags = Path("/proc/cpuinfo").read_text().split()
    assert native_bf16(CPU) == ("avx512_bf16" in flags or "amx_tile" in flags)


# A whole job with train.precision=auto, resolved on its workers and recorded in the summary:
# tests/test_mass_edit.py, the re-submitted run (it shares that job rather than start another).


def run_job(out, *overrides):
    return subprocess.run([sys.executable, "jobs/mass_edit.py", "--config", "configs/smoke.yaml", f"output.dir={out}",
                           "data.limit=2", "train.epochs=1", "train.num_workers=1", *overrides],
                          cwd=REPO, capture_output=True, text=True, timeout=600)


@pytest.mark.timeout(900)
@pytest.mark.skipif(native_bf16(CPU), reason="this CPU has native bf16: explicit bf16-mixed is allowed here")
def test_explicit_bf16_on_a_cpu_without_it_fails_before_training_and_writes_no_run(tmp_path):
    proc = run_job(tmp_path / "run", "train.precision=bf16-mixed")
    assert proc.returncode != 0
    assert "train.precision=bf16-mixed: this worker's device (cpu) has no native bf16" in proc.stderr
    assert not (tmp_path / "run").exists()
