"""The unedited model's evaluation, saved with the run and reused instead of scored again.

Every run scores the unedited model on its requests: the report's `before` column, and the
reference the edited model's EasyEdit locality is measured against. That evaluation depends on
the model, its dtype, the requests and what is measured (metric family, fluency), never on the
training, so it is written to `<run>/unedited/` and taken from there:
- by the same run re-submitted after a crash (its `.incomplete` directory is reused), which
  then goes straight back to training;
- by any run that names it in `eval.unedited_from`: a sweep's trials all take the one the sweep
  scored once before them, and runs that differ only in how they train (an ablation ladder's
  rungs) can share one.
`evaluation.json` records what the scores were computed from (and which run scored them); a
saved evaluation of another model, dtype, metric family, fluency setting or set of requests is
refused with what differs.

Written and read by Ray Data tasks on the driver's node (the run directory is there), as
parquet: the driver never holds the rows. Between the two evaluations the scores wait on disk,
not in the object store of the nodes that scored them, so a node lost during training (a spot
GPU node) takes nothing with it. A half-written copy (`unedited.partial/`) is never read.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import shutil
from pathlib import Path

import numpy as np

from ftedit.config import ConfigError, RunConfig

log = logging.getLogger(__name__)

IDENTITY_FILE = "evaluation.json"
SCORES_DIR = "scores"

_MEASURED = ("fluency_tokens", "fluency_prompts")
"""The `eval` settings that change what the unedited evaluation measures. The others (batch
sizes, packing, actors, threads) only change how it is computed."""


def _row_digests(batch: dict) -> dict:
    """Ray Data stage: an 8-byte digest of each (position, request) row."""
    digests = [
        int.from_bytes(hashlib.blake2b(f"{position}\t{request}".encode(), digest_size=8).digest(), "little")
        for position, request in zip(batch["position"], batch["request"])
    ]
    return {"digest": np.array(digests, dtype=np.uint64)}


def requests_digest(requests) -> str:
    """A digest of a run's requests (every request's JSON and its place in file order), computed
    on the cluster; the driver reads back 8 bytes per request."""
    total = hashlib.sha256()
    rows = requests.select_columns(["position", "request"]).map_batches(_row_digests, batch_size=4096)
    for batch in rows.iter_batches(batch_size=65536, batch_format="numpy"):
        total.update(batch["digest"].astype("<u8").tobytes())
    return total.hexdigest()


def model_files(model_path) -> str:
    """A digest of the checkpoint's file names, sizes and modification times: the same path
    holding other weights (a model trained again in place, a copy) counts as another model."""
    total = hashlib.sha256()
    for path in sorted(p for p in Path(model_path).iterdir() if p.is_file()):
        stat = path.stat()
        total.update(f"{path.name}\t{stat.st_size}\t{stat.st_mtime_ns}\n".encode())
    return total.hexdigest()[:16]


def measured_settings(cfg: RunConfig) -> dict:
    """The settings an unedited evaluation depends on besides the model's files and the requests:
    the dtype the model is scored in and what is measured. Training settings are not among them."""
    return {"dtype": cfg.model.dtype, **{key: getattr(cfg.eval, key) for key in _MEASURED}}


def evaluation_identity(cfg: RunConfig, model_path, kind: str, requests, n_requests: int) -> dict:
    """What an unedited evaluation of this run is computed from."""
    return {
        "model": str(Path(model_path).resolve()),
        "model_files": model_files(model_path),
        **measured_settings(cfg),
        "metric_kind": kind,
        "n_requests": n_requests,
        "requests_digest": requests_digest(requests),
    }


def _differences(saved: dict, wanted: dict) -> list[str]:
    return [f"{key} {saved.get(key)!r} (this run: {value!r})" for key, value in wanted.items() if saved.get(key) != value]


def _saved_identity(directory: Path) -> dict | None:
    path = directory / IDENTITY_FILE
    return json.loads(path.read_text()) if path.is_file() and (directory / SCORES_DIR).is_dir() else None


def reusable_from(cfg: RunConfig, identity: dict) -> Path | None:
    """The saved evaluation `eval.unedited_from` names (a run directory or its `unedited/`),
    checked against this run's `identity`; None when the key is unset. Raises ConfigError when it
    is missing or was computed from anything else than this run's."""
    if not cfg.eval.unedited_from:
        return None
    named = Path(cfg.eval.unedited_from).expanduser()
    directory = named / "unedited" if (named / "unedited").is_dir() else named
    saved = _saved_identity(directory)
    rescore = "; leave eval.unedited_from unset to score the unedited model in this run"
    if saved is None:
        raise ConfigError("eval.unedited_from", f"{named} holds no saved unedited evaluation ({IDENTITY_FILE} and "
                                                f"{SCORES_DIR}/ of a run's unedited/ directory){rescore}")
    differences = _differences(saved, identity)
    if differences:
        raise ConfigError("eval.unedited_from",
                          f"{directory} was scored for another run: " + "; ".join(differences) + rescore)
    return directory


IO_CPUS = 0.1
"""CPU held by each task that writes or reads the saved scores: a sliver, so that the edited
model's evaluation can read them beside scoring actors that hold every other CPU of the node."""


def _read_files(batch: dict):
    """Ray Data stage: the rows of the parquet files named in `batch["file"]`, in order."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    return pa.concat_tables([pq.read_table(str(path)) for path in batch["file"]])


def load(directory: Path):
    """A saved evaluation as a Ray Dataset in request order, read on the driver's node.

    The driver lists the files itself (they are on its disk); `ray.data.read_parquet` would list
    them in a task that may run on another node, and at a whole CPU."""
    import ray

    from ftedit.request_dataset import on_the_drivers_node

    files = sorted((directory / SCORES_DIR).glob("*.parquet"))  # write-task order: the requests' order
    return ray.data.from_items([{"file": str(path)} for path in files]).map_batches(
        _read_files, batch_size=1, num_cpus=IO_CPUS, **on_the_drivers_node())


SCORED = "scored by this run"


@contextlib.contextmanager
def _whole_or_not_at_all(directory: Path, identity: dict, origin: str):
    """A fresh `<directory>.partial` to fill; with `identity` and `origin` written into it, it
    replaces `directory` once the block completes (an exception leaves `directory` as it was)."""
    partial = directory.with_name(directory.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    yield partial
    (partial / IDENTITY_FILE).write_text(json.dumps({**identity, "origin": origin}, indent=2) + "\n")
    shutil.rmtree(directory, ignore_errors=True)
    partial.rename(directory)


def save(scored, directory: Path, identity: dict) -> None:
    """Write an evaluation (`scoring.evaluate_on_cluster`'s output) to `directory`, whole or not at all."""
    from ftedit.request_dataset import on_the_drivers_node

    with _whole_or_not_at_all(directory, identity, SCORED) as partial:
        partial.mkdir(parents=True)
        # File names sort in write-task order, which with preserve_order is the dataset's order.
        scored.write_parquet(str(partial / SCORES_DIR), ray_remote_args={"num_cpus": IO_CPUS, **on_the_drivers_node()})


def unedited_evaluation(cfg: RunConfig, model_path, requests, kind: str, directory: Path, identity: dict,
                        reuse: Path | None = None):
    """(the unedited model's scores of `requests`, where they came from: `SCORED` or the run they
    were taken from), saved in `directory` (the run's `unedited/`): what is already there when it
    matches `identity` (a resumed run), else a copy of `reuse` (a checked `eval.unedited_from`),
    else a new evaluation on the scoring actors."""
    from ftedit.scoring import evaluate_on_cluster

    saved = _saved_identity(directory)
    if saved is not None and not _differences(saved, identity):
        log.info("unedited model: reusing its scores saved in %s", directory)
        origin = saved.get("origin", SCORED)
    elif reuse is not None:
        log.info("unedited model: reusing its scores from %s (eval.unedited_from)", reuse)
        origin = f"taken from {reuse} (eval.unedited_from)"
        with _whole_or_not_at_all(directory, identity, origin) as partial:
            shutil.copytree(reuse, partial)
    else:
        if saved is not None:
            log.info("unedited model: the scores saved in %s are of other requests; scoring again", directory)
        log.info("evaluating the unedited model")
        save(evaluate_on_cluster(cfg, model_path, requests, kind), directory, identity)
        origin = SCORED
    return load(directory), origin
