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
