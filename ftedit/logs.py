"""Progress output: one log format for the driver, the training workers and the scoring actors.

Ray starts worker processes with Python's default logging (WARNING and up, no handler), so
progress that a worker logs at INFO (training steps, scored batches, generated continuations)
is lost unless that process sets logging up too. Each entry point and each Ray worker that
reports progress calls `show_progress()` once; a setup the user already made is left alone.
"""

import logging

FORMAT = "%(asctime)s %(name)s: %(message)s"


def show_progress() -> None:
    """INFO-level logs to stderr, unless the process has configured logging already."""
    logging.basicConfig(level=logging.INFO, format=FORMAT)
