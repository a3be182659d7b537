"""A real Ray head on loopback for tests: its own temp dir and ports, stopped by itself alone."""

import os
import socket
import subprocess
import tempfile
from contextlib import contextmanager


def free_ports(n: int) -> list[int]:
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def stop_cluster(temp_dir: str) -> None:
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



@contextmanager
def local_head(num_cpus: int = 2):
    """Start `ray start --head` on 127.0.0.1; yields the dashboard (job API) address."""
    temp_dir = tempfile.mkdtemp(prefix="ftray", dir="/tmp")  # short: Ray's socket paths have a length limit
    gcs, dashboard, client, manager, objects, agent, agent_grpc, metrics, runtime_env = free_ports(9)
    start = subprocess.run(
        ["ray", "start", "--head", "--node-ip-address=127.0.0.1", f"--port={gcs}", f"--temp-dir={temp_dir}",
         f"--num-cpus={num_cpus}", "--include-dashboard=true", "--dashboard-host=127.0.0.1",
         f"--dashboard-port={dashboard}", f"--ray-client-server-port={client}", f"--node-manager-port={manager}",
         f"--object-manager-port={objects}", f"--dashboard-agent-listen-port={agent}",
         f"--dashboard-agent-grpc-port={agent_grpc}", f"--metrics-export-port={metrics}",
         f"--runtime-env-agent-port={runtime_env}", "--disable-usage-stats"],
        env=dict(os.environ), capture_output=True, text=True, timeout=180,
    )
    try:
        assert start.returncode == 0, start.stdout[-3000:] + start.stderr[-3000:]
        yield f"http://127.0.0.1:{dashboard}"
    finally:
        stop_cluster(temp_dir)
