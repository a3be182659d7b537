"""ASHA early stopping that survives a resumed sweep.

Tune checkpoints a sweep's searcher but not its scheduler: after `Tuner.restore`, ASHA would
start with empty rungs, compare the remaining trials against nobody and stop none of them. This
scheduler writes its rungs (every trial's score at every milestone) to a file after each result,
and reloads them when the restored Tuner unpickles it.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path

from ray.tune.schedulers import ASHAScheduler


class ResumableASHA(ASHAScheduler):
    def __init__(self, state_file: str | Path, **kwargs):
        super().__init__(**kwargs)
        self._state_file = str(state_file)

    # Only the bookkeeping is persisted: metric and mode are set by the Tuner on every start, and
    # Tune refuses a scheduler that arrives with them already set.
    _BOOKKEEPING = ("_brackets", "_trial_info", "_num_stopped")

    def on_trial_result(self, tune_controller, trial, result):
        decision = super().on_trial_result(tune_controller, trial, result)
        self._persist()
        return decision

    def on_trial_complete(self, tune_controller, trial, result):
        super().on_trial_complete(tune_controller, trial, result)
        self._persist()

    def _persist(self):
        partial = self._state_file + ".partial"
        with open(partial, "wb") as f:
            pickle.dump({key: getattr(self, key) for key in self._BOOKKEEPING}, f)
        os.replace(partial, self._state_file)  # never a half-written state file

    def __setstate__(self, state):
        self.__dict__.update(state)
        if os.path.isfile(self._state_file):
            with open(self._state_file, "rb") as f:
                self.__dict__.update(pickle.load(f))
