"""A measurement in a fresh Python process, its result on a marked line of stdout.

Memory and start-up belong to a process, so each measurement runs in one of its own (the script
again, with `--child`). Ray, DeepSpeed and the child's workers print to the same stdout, so the
result line carries a marker instead of being trusted to come last.
"""

import json
import subprocess
import sys

MARKER = "RESULT "


def print_result(result: dict) -> None:
    """In the child: hand `result` to the parent."""
    print(MARKER + json.dumps(result), flush=True)


def child_result(args: list[str], what: str, show_progress: bool = True, cwd=None) -> dict:
    """Run `python *args` and return the result it printed. `show_progress`: its stderr goes to
    this console as it runs; otherwise it is kept and shown only if the child fails."""
    done = subprocess.run([sys.executable, *args], cwd=cwd, stdout=subprocess.PIPE,
                          stderr=None if show_progress else subprocess.PIPE, text=True)
    results = [line for line in done.stdout.splitlines() if line.startswith(MARKER)]
    if done.returncode or not results:
        detail = "" if show_progress else f":\n{done.stderr[-4000:]}"
        raise RuntimeError(f"the {what} failed (exit {done.returncode}){detail}")
    return json.loads(results[-1][len(MARKER):])


def peak_rss_mb() -> float:
    """This process's peak resident memory so far, in MB (Linux reports KiB)."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class MemorySampler:
    """Where a process's memory goes, stage by stage: a thread samples /proc/self/status (Linux)
    and keeps, per stage, the most resident memory seen and its parts: anonymous (the Python
    heap, numpy, torch), file-backed (libraries) and shared (Ray's object store, whose blocks the
    process maps when it reads them). `peak_rss_mb` alone cannot tell those apart.
    """

    FIELDS = ("VmRSS", "RssAnon", "RssFile", "RssShmem")

    def __init__(self, every_s: float = 0.2):
        import threading

        self.stages: dict[str, dict[str, float]] = {}
        self._current: dict[str, float] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(every_s,), daemon=True)
        self._thread.start()

    @classmethod
    def read(cls) -> dict[str, float]:
        """The current values in MB (empty where /proc is not there)."""
        try:
            with open("/proc/self/status") as status:
                lines = status.read().splitlines()
        except OSError:
            return {}
        values = {}
        for line in lines:
            name, _, rest = line.partition(":")
            if name in cls.FIELDS:
                values[name] = int(rest.split()[0]) / 1024
        return values

    def _run(self, every_s: float) -> None:
        while not self._stop.wait(every_s):
            self.sample()

    def sample(self) -> None:
        values = self.read()
        with self._lock:
            for name, value in values.items():
                self._current[name] = max(self._current.get(name, 0.0), value)

    def mark(self, stage: str) -> None:
        """Close the stage that just ended: its maxima are kept under `stage`."""
        self.sample()
        with self._lock:
            self.stages[stage] = {name: round(value, 1) for name, value in self._current.items()}
            self._current = {}

    def stop(self) -> dict[str, dict[str, float]]:
        self._stop.set()
        self._thread.join()
        return self.stages
