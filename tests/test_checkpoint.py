"""What a restarted train loop reads back from a checkpoint (no Ray cluster needed)."""

import dataclasses
import json
from pathlib import Path

from ftedit.checkpoint import PROGRESS_FILE, Progress, latest_progress, load_engine_state


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
    progress, checkpoint = latest_progress()
    assert (progress.epoch, progress.micro_step, progress.micro_steps, progress.restarts) == (3, 1, 10, 1)
    assert checkpoint is not None
    engine = _Engine()
    load_engine_state(engine, checkpoint)
    assert len(engine.loaded) == 1 and engine.loaded[0][0] == str(tmp_path)
    assert engine.loaded[0][1]["load_module_strict"] is False  # frozen weights are not in it


def test_the_final_checkpoint_is_recognised_from_its_progress_file_alone(tmp_path, monkeypatch):
    final = {**dataclasses.asdict(Progress(epoch=4, finished=True)), "metrics": {"epoch": 4, "train_seconds": 1.0}}
    _checkpoint_with(tmp_path, monkeypatch, final)
    progress, checkpoint = latest_progress()
    assert progress.finished and progress.epoch == 4 and checkpoint is not None


def test_no_checkpoint_starts_from_the_beginning(monkeypatch):
    import ray.train

    monkeypatch.setattr(ray.train, "get_checkpoint", lambda: None)
    assert latest_progress() == (Progress(), None)


def test_a_restart_after_the_final_checkpoint_reports_it_again_unchanged(tmp_path, monkeypatch):
    """The driver died while collecting the result: the restarted loop must hand back the same
    weights and metrics, without training again."""
    import ray.train

    from ftedit.checkpoint import report_finished_again

    final_dir = tmp_path / "final"
    final_dir.mkdir()
    metrics = {"epoch": 4, "train_seconds": 12.5, "train_tokens_per_s": 100.0}
    (final_dir / PROGRESS_FILE).write_text(json.dumps({**dataclasses.asdict(Progress(epoch=4, finished=True)), "metrics": metrics}))
    (final_dir / "adapter_model.safetensors").write_bytes(b"weights")
    reported = []

    def report(metrics, checkpoint=None, checkpoint_dir_name=None):
        files = None
        if checkpoint is not None:  # read it now: the reported directory is temporary
            with checkpoint.as_directory() as directory:
                files = {p.name: p.read_bytes() for p in sorted(Path(directory).iterdir())}
        reported.append((metrics, files, checkpoint_dir_name))

    class NotFetched(ray.train.Checkpoint):  # rank 1 reads the progress file, never the weights
        def as_directory(self):
            raise AssertionError("only rank 0 fetches the final checkpoint")

        def to_directory(self, path=None):
            raise AssertionError("only rank 0 fetches the final checkpoint")

    monkeypatch.setattr(ray.train, "report", report)
    report_finished_again(ray.train.Checkpoint.from_directory(str(final_dir)), 0)
    report_finished_again(NotFetched.from_directory(str(final_dir)), 1)
    (m0, files, name0), (m1, none, name1) = reported
    assert m0 == m1 == metrics and name0 == name1 == "final"
    assert files == {p.name: p.read_bytes() for p in sorted(final_dir.iterdir())} and none is None


def test_trained_weights_are_read_from_the_checkpoint_storage_or_the_error_names_it(tmp_path):
    """A scoring actor on another node than the driver reads the final checkpoint's weights
    through the checkpoint's file system; a local path missing on its node is a clear error."""
    import pyarrow.fs
    import pytest
    from ray.train import Checkpoint

    from ftedit.checkpoint import trained_weights_here

    (tmp_path / "final").mkdir()
    (tmp_path / "final" / "tuning.json").write_text('{"tuning": "lora"}')
    with trained_weights_here(Checkpoint(str(tmp_path / "final"))) as directory:
        assert directory == tmp_path / "final"  # local (or mounted) storage: used in place
    remote = pyarrow.fs.SubTreeFileSystem(str(tmp_path), pyarrow.fs.LocalFileSystem())
    with trained_weights_here(Checkpoint("final", filesystem=remote)) as directory:
        assert directory != tmp_path / "final" and (directory / "tuning.json").read_text() == '{"tuning": "lora"}'
    assert not directory.exists()  # the downloaded copy is removed after loading
    with pytest.raises(FileNotFoundError, match="train.storage_path, which must then be storage every node reaches"):
        with trained_weights_here(Checkpoint(str(tmp_path / "elsewhere" / "final"))):
            pass


def test_a_finished_runs_checkpoints_are_deleted_from_their_storage_and_a_refusal_only_warns(tmp_path, caplog):
    from types import SimpleNamespace

    from ray.train import Checkpoint

    from ftedit.checkpoint import remove_run_checkpoints

    run = tmp_path / "storage" / "run-0123456789"
    for name in ("epoch0005-step000000015/engine", "final"):
        (run / name).mkdir(parents=True)
        (run / name / "weights").write_text("w")
    (run / "checkpoint_manager_snapshot.json").write_text("{}")
    remove_run_checkpoints(Checkpoint.from_directory(str(run / "final")))
    assert not run.exists() and (tmp_path / "storage").is_dir()  # the run's own folder only

    class NoDeleteBucket:  # a bucket policy without s3:DeleteObject
        def delete_dir(self, path):
            raise OSError(f"AccessDenied: {path}")

    remove_run_checkpoints(SimpleNamespace(path="bucket/runs/run-0123456789/final", filesystem=NoDeleteBucket()))
    assert "could not remove the run's checkpoints at bucket/runs/run-0123456789" in caplog.text
    assert "AccessDenied" in caplog.text


def test_a_storage_path_that_cannot_take_checkpoints_is_refused_naming_the_key(tmp_path, monkeypatch):
    import pytest

    from ftedit.checkpoint import check_storage
    from ftedit.config import ConfigError
    from tests.s3_server import s3_bucket

    with s3_bucket() as bucket:
        for key, value in bucket.environment().items():
            monkeypatch.setenv(key, value)
        check_storage(f"s3://{bucket.name}/runs")
        assert bucket.keys() == ["runs/"]  # the check's own file is gone
        with pytest.raises(ConfigError, match=r"^train\.storage_path: cannot write checkpoints to "
                                              r"s3://YOUR-BUCKET/runs: .*YOUR-BUCKET"):
            check_storage("s3://YOUR-BUCKET/runs")  # the paper configs' placeholder, left as it is
    (tmp_path / "file").write_text("")
    with pytest.raises(ConfigError, match="train.storage_path"):
        check_storage(str(tmp_path / "file" / "runs"))
    check_storage(None)  # the default: the run's own staging directory


def test_an_abandoned_runs_checkpoints_go_from_staging_and_from_the_bucket_and_only_its_own(tmp_path, monkeypatch):
    from ftedit.checkpoint import remove_abandoned_checkpoints
    from tests.s3_server import s3_bucket

    staging = tmp_path / "trial_1.incomplete"
    (staging / "ray" / "trial_1-0123456789" / "epoch0001").mkdir(parents=True)
    (staging / "config.yaml").write_text("seed: 0\n")
    with s3_bucket() as bucket:
        for key, value in bucket.environment().items():
            monkeypatch.setenv(key, value)
        for key in ("runs/trial_1-0123456789/epoch0001/engine.pt", "runs/trial_1-9876543210/final/adapter",
                    "runs/trial_10-0123456789/final/adapter", "runs/trial_2-0123456789/final/adapter"):
            bucket.client.put_object(Bucket=bucket.name, Key=key, Body=b"w")
        remove_abandoned_checkpoints(tmp_path / "trial_1", staging, f"s3://{bucket.name}/runs")
        # Both Ray Train runs of trial_1 (any config digest) are gone; trial_10's and trial_2's stay.
        objects = sorted(key for key in bucket.keys() if not key.endswith("/"))  # not pyarrow's folder markers
        assert objects == ["runs/trial_10-0123456789/final/adapter", "runs/trial_2-0123456789/final/adapter"]
    assert not (staging / "ray").exists() and (staging / "config.yaml").is_file()
    remove_abandoned_checkpoints(tmp_path / "trial_3", tmp_path / "trial_3.incomplete", None)  # nothing there: no error
