"""`ray job submit` against a real Ray head started for this test on loopback (its own temp dir
and ports), running jobs/mass_edit.py as a job; only that cluster is stopped afterwards."""

import json
import os
import socket
import subprocess
import tempfile
import uuid

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.timeout(900)


def _free_ports(n: int) -> list[int]:
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def _stop_cluster(temp_dir: str) -> None:
    """Kill the processes of the cluster whose temp dir is `temp_dir` (`ray stop` would stop
    every Ray instance on the machine, including ones other tests or users started)."""
    import psutil

    own = []
    for proc in psutil.process_iter(["cmdline"]):
        try:
            if any(temp_dir in part for part in proc.info["cmdline"] or []):
                own.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    family = {p.pid: p for p in own}
    for proc in own:
        try:
            family.update({c.pid: c for c in proc.children(recursive=True)})
        except psutil.NoSuchProcess:
            pass
    for proc in family.values():
        try:
            proc.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(list(family.values()), timeout=30)


def test_job_submitted_to_a_local_head_succeeds_and_writes_its_run(tmp_path, monkeypatch):
    temp_dir = tempfile.mkdtemp(prefix="ftray", dir="/tmp")  # short: Ray's socket paths have a length limit
    gcs, dashboard, client, manager, objects, agent, agent_grpc, metrics, runtime_env = _free_ports(9)
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")  # Ray 2.60 enables token auth on local clusters
    env = dict(os.environ)
    address = f"http://127.0.0.1:{dashboard}"
    start = subprocess.run(
        ["ray", "start", "--head", "--node-ip-address=127.0.0.1", f"--port={gcs}", f"--temp-dir={temp_dir}",
         "--num-cpus=2", "--include-dashboard=true", "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard}",
         f"--ray-client-server-port={client}", f"--node-manager-port={manager}", f"--object-manager-port={objects}",
         f"--dashboard-agent-listen-port={agent}", f"--dashboard-agent-grpc-port={agent_grpc}",
         f"--metrics-export-port={metrics}", f"--runtime-env-agent-port={runtime_env}", "--disable-usage-stats"],
        env=env, capture_output=True, text=True, timeout=180,
    )
    try:
        assert start.returncode == 0, start.stdout[-3000:] + start.stderr[-3000:]
        out = tmp_path / "run"
        job_id = f"ftedit-test-{uuid.uuid4().hex[:8]}"
        submit = subprocess.run(
            ["ray", "job", "submit", f"--address={address}", f"--submission-id={job_id}", f"--working-dir={REPO}",
             "--", "python", "jobs/mass_edit.py", "--config", "configs/smoke.yaml", f"output.dir={out}",
             "data.limit=2", "train.epochs=4", "train.checkpoint_every_epochs=2"],
            env=env, capture_output=True, text=True, timeout=800,
        )
        assert submit.returncode == 0, submit.stdout[-4000:] + submit.stderr[-2000:]
        from ray.job_submission import JobStatus, JobSubmissionClient

        assert JobSubmissionClient(address).get_job_status(job_id) == JobStatus.SUCCEEDED
        # The job's log reached the client, and the run directory is complete where output.dir says.
        assert "edit score" in submit.stdout and "tokens/s" in submit.stdout
        summary = json.loads((out / "summary.json").read_text())
        assert summary["n_edits"] == 2 and summary["train"]["optimizer_steps"] > 0
        assert (out / "model" / "config.json").is_file() and not out.with_name("run.incomplete").exists()
    finally:
        _stop_cluster(temp_dir)
