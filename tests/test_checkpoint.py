"""What a restarted train loop reads back from a checkpoint (no Ray cluster needed)."""

import dataclasses
import json

from ftedit.checkpoint import PROGRESS_FILE, Progress, restore


class _Engine:
    def __init__(self):
        self.loaded = []

    def load_checkpoint(self, directory, **kwargs):
        self.loaded.append((directory, kwargs))


def _checkpoint_with(tmp_path, monkeypatch, state: dict):
    import ray.train

    (tmp_path / PROGRESS_FILE).write_text(json.dumps(state))
    monkeypatch.setattr(ray.train, "get_checkpoint", lambda: ray.train.Checkpoint.from_directory(str(tmp_path)))


def test_a_resumable_checkpoint_loads_the_engine_and_counts_the_restart(tmp_path, monkeypatch):
    _checkpoint_with(tmp_path, monkeypatch, dataclasses.asdict(Progress(epoch=3, micro_step=1, micro_steps=10)))
    engine = _Engine()
    progress, checkpoint = restore(engine)
    assert (progress.epoch, progress.micro_step, progress.micro_steps, progress.restarts) == (3, 1, 10, 1)
    assert checkpoint is not None and len(engine.loaded) == 1
    assert engine.loaded[0][1]["load_module_strict"] is False  # frozen weights are not in it


def test_the_final_checkpoint_is_recognised_without_loading_the_engine(tmp_path, monkeypatch):
    final = {**dataclasses.asdict(Progress(epoch=4, finished=True)), "metrics": {"epoch": 4, "train_seconds": 1.0}}
    _checkpoint_with(tmp_path, monkeypatch, final)
    engine = _Engine()
    progress, _ = restore(engine)
    assert progress.finished and progress.epoch == 4 and engine.loaded == []


def test_no_checkpoint_starts_from_the_beginning(monkeypatch):
    import ray.train

    monkeypatch.setattr(ray.train, "get_checkpoint", lambda: None)
    assert restore(_Engine()) == (Progress(), None)
