"""Resumable training: what a Ray Train checkpoint of a run holds, and how the loop restarts from it.

A resumable checkpoint is DeepSpeed's own checkpoint of the engine (trainable weights, optimizer
and LR-scheduler state; every rank writes its ZeRO shard and Ray Train gathers all ranks' files
into one checkpoint directory) plus `progress.json`: where in the epochs the run stood. When a
worker dies, Ray Train restarts the worker group (`train.max_failures`) and the loop picks up the
latest checkpoint; a job re-submitted with the same config and data finds the same Ray Train run
(its name is derived from both) and does the same. Epoch orders are seeded per epoch, so a
resumed run sees the same batches as an uninterrupted one.

The final checkpoint holds only the trained weights (adapter or layers), marked finished. Once the
run directory has its own copy, the run's checkpoints are deleted from their storage.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import posixpath
import shutil
import socket
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path

from ftedit.config import ConfigError, RunConfig, to_dict

PROGRESS_FILE = "progress.json"
ENGINE_TAG = "engine"

log = logging.getLogger(__name__)


@dataclass
class Progress:
    """Where a run stands; saved in every checkpoint, so counters survive restarts."""

    epoch: int = 0
    """Epochs completed."""
    micro_step: int = 0
    """Micro-batches already trained in the current epoch (a mid-epoch checkpoint)."""
    micro_steps: int = 0
    """Micro-batches trained in all."""
    tokens_seen: int = 0
    """Training tokens this worker trained on (every worker's shard is the same size)."""
    train_seconds: float = 0.0
    """Training time, summed over attempts (probe scoring excluded)."""
    restarts: int = 0
    """How many times the run was resumed from a checkpoint."""
    finished: bool = False
    """The final checkpoint: trained weights, no engine state."""


def run_name(cfg: RunConfig, inputs_digest: str = "") -> str:
    """The Ray Train run name: the run directory's name and a digest of the config and inputs.

    The same config (re-submitted after a crash) finds its own checkpoints; a changed config
    starts a new run instead of resuming someone else's optimizer state. `inputs_digest` stands
    for the data the run trains on besides its config (its requests and usable pool facts,
    `pipeline.training_inputs_digest`): a job re-submitted after its requests file changed
    trains afresh instead of going on from checkpoints of the old requests.
    """
    settings = to_dict(cfg)
    settings["output"] = {k: v for k, v in settings["output"].items() if k != "overwrite"}
    digest = hashlib.sha256((json.dumps(settings, sort_keys=True) + inputs_digest).encode()).hexdigest()[:10]
    return f"{Path(cfg.output.dir).name}-{digest}"


def check_storage(storage_path: str | None) -> None:
    """Refuse a `train.storage_path` that cannot take checkpoints before the run spends anything:
    a missing bucket, a typo or missing credentials would otherwise surface in Ray Train, after
    the prefixes and the unedited evaluation. Writes a small file there and removes it, from the
    driver's node (the workers' own credentials meet the storage when they first checkpoint)."""
    if not storage_path:
        return  # the run's staging directory
    import pyarrow
    import pyarrow.fs

    try:
        filesystem, path = pyarrow.fs.FileSystem.from_uri(storage_path)
        filesystem.create_dir(path, recursive=True)
        marker = f"{path.rstrip('/')}/.ftedit-write-check-{uuid.uuid4().hex}"
        with filesystem.open_output_stream(marker) as stream:
            stream.write(b"ftedit")
        filesystem.delete_file(marker)
    except (OSError, pyarrow.ArrowException, ValueError) as exc:
        raise ConfigError("train.storage_path", f"cannot write checkpoints to {storage_path}: {exc} (give a bucket "
                          "or shared mount that exists and that this node's credentials may write to)") from None


def remove_run_checkpoints(checkpoint) -> None:
    """Delete a finished run's checkpoints from its storage (`train.storage_path`: S3, a shared
    mount, or the run's staging directory), once the run directory holds its own copy of the
    trained weights. Nothing is left to resume, and a 70B run's optimizer shards would otherwise
    stay in the bucket. A storage that refuses the deletion costs a warning, not the results."""
    run_storage = posixpath.dirname(checkpoint.path.rstrip("/"))  # <storage>/<run name>
    try:
        checkpoint.filesystem.delete_dir(run_storage)
    except OSError as exc:
        log.warning("could not remove the run's checkpoints at %s (remove them by hand): %s", run_storage, exc)


def remove_abandoned_checkpoints(run_dir: Path, staging: Path, storage_path: str | None) -> None:
    """Delete the checkpoints of a run that will never resume (a sweep trial that ASHA stopped or
    that failed, once the sweep is over): `staging/ray` (the default storage) and, in
    `storage_path`, every Ray Train run named after the run directory (`run_name`). A full
    fine-tuning sweep of an 8B model would otherwise keep hundreds of GB per stopped trial. The
    staging directory's other files stay, to show what the trial did."""
    shutil.rmtree(staging / "ray", ignore_errors=True)
    if not storage_path:
        return
    import pyarrow.fs

    try:
        filesystem, root = pyarrow.fs.FileSystem.from_uri(storage_path)
        for info in filesystem.get_file_info(pyarrow.fs.FileSelector(root, allow_not_found=True)):
            if info.type == pyarrow.fs.FileType.Directory and info.base_name.startswith(f"{run_dir.name}-"):
                filesystem.delete_dir(info.path)
    except OSError as exc:
        log.warning("could not remove the checkpoints of %s from %s (remove them by hand): %s",
                    run_dir.name, storage_path, exc)


def latest_progress() -> tuple[Progress, object | None]:
    """(progress, checkpoint) of the latest checkpoint Ray Train hands this attempt, if any.

    Reads only the checkpoint's progress file, through its own filesystem (local, NFS or S3), so
    a worker knows where it resumes before it builds the model; `load_engine_state` loads the rest.
    """
    import ray.train

    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None:
        return Progress(), None
    state = _progress_state(checkpoint)
    # The final checkpoint's file also holds its metrics (report_final): keep Progress's fields.
    progress = Progress(**{k: v for k, v in state.items() if k in Progress.__dataclass_fields__})
    progress.restarts += 1
    return progress, checkpoint


def _progress_state(checkpoint) -> dict:
    """The checkpoint's progress file alone, read through its own filesystem (local, NFS or S3)."""
    with checkpoint.filesystem.open_input_stream(f"{checkpoint.path}/{PROGRESS_FILE}") as stream:
        return json.loads(stream.read())


def load_engine_state(engine, checkpoint) -> None:
    """Load an unfinished checkpoint into `engine`: weights, optimizer, scheduler, step count."""
    with checkpoint.as_directory() as directory:
        # Frozen weights are not in the checkpoint (see report_resumable): load non-strictly.
        engine.load_checkpoint(directory, tag=ENGINE_TAG, load_module_strict=False)


def report_resumable(engine, progress: Progress, metrics: dict, rank: int) -> None:
    """Report `metrics` with a checkpoint the run can resume from. Every rank must call this."""
    import ray.train

    with tempfile.TemporaryDirectory() as tmp:
        # Every rank writes its own optimizer shard; frozen base weights are never saved (for
        # LoRA the checkpoint holds the adapter and its optimizer state, not the base model).
        engine.save_checkpoint(tmp, tag=ENGINE_TAG, exclude_frozen_parameters=True)
        if rank == 0:
            (Path(tmp) / PROGRESS_FILE).write_text(json.dumps(dataclasses.asdict(progress)))
        ray.train.report(
            metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp),
            checkpoint_dir_name=f"epoch{progress.epoch:04d}-step{progress.micro_steps:09d}",
        )


def report_final(save_weights, progress: Progress, metrics: dict, rank: int) -> None:
    """Report the trained weights (written by `save_weights(directory)`) as the run's result."""
    import ray.train

    with tempfile.TemporaryDirectory() as tmp:
        save_weights(Path(tmp))  # every rank joins (ZeRO-3 gathers); rank 0 writes
        checkpoint = None
        if rank == 0:
            finished = dataclasses.replace(progress, finished=True)
            (Path(tmp) / PROGRESS_FILE).write_text(json.dumps({**dataclasses.asdict(finished), "metrics": metrics}))
            checkpoint = ray.train.Checkpoint.from_directory(tmp)
        ray.train.report(metrics, checkpoint=checkpoint, checkpoint_dir_name="final")


def report_finished_again(checkpoint, rank: int) -> None:
    """A restart after the final checkpoint (the driver died while collecting it): report it again.

    Only rank 0 fetches the checkpoint, whose trained weights can be many GB in remote storage;
    every rank reports the same metrics, read from the progress file alone.
    """
    import ray.train

    metrics = _progress_state(checkpoint)["metrics"]
    if rank != 0:
        ray.train.report(metrics, checkpoint=None, checkpoint_dir_name="final")
        return
    with checkpoint.as_directory() as directory, tempfile.TemporaryDirectory() as tmp:
        shutil.copytree(directory, tmp, dirs_exist_ok=True)
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp), checkpoint_dir_name="final")


@contextlib.contextmanager
def trained_weights_here(checkpoint):
    """The final checkpoint's trained weights as a directory on this node, wherever it runs.

    A scoring actor runs on a GPU node, not beside the driver: it reads the weights from the run's
    checkpoint storage (`train.storage_path`), which every node reaches on a multi-node cluster
    (S3: downloaded to a temporary directory, removed afterwards; a local or mounted path: used
    as it is), not from the run directory, which is on the driver's node. Ray's `as_directory`
    downloads a checkpoint once per node for the processes that open it at the same time, so
    the actors of one node, which load together, share one copy.
    """
    from pyarrow.fs import LocalFileSystem

    if isinstance(checkpoint.filesystem, LocalFileSystem) and not Path(checkpoint.path).is_dir():
        raise FileNotFoundError(
            f"the trained weights at {checkpoint.path} are not on this node ({socket.gethostname()}): scoring "
            "actors on other nodes than the driver read them from train.storage_path, which must then be "
            "storage every node reaches (an s3:// prefix or a shared file system)")
    with checkpoint.as_directory() as directory:
        yield Path(directory)


def copy_trained_weights(checkpoint, destination: Path) -> None:
    """The final checkpoint's weights into the run directory (from local or remote storage)."""
    checkpoint.to_directory(str(destination))
    (destination / PROGRESS_FILE).unlink(missing_ok=True)
