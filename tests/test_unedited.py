"""The unedited model's evaluation saved with the run: read back whole and in order, reused only
for the same model, requests and measurements."""

import json

import pytest

from ftedit import unedited
from ftedit.config import ConfigError, RunConfig, from_dict


@pytest.fixture(scope="module")
def ray_local():
    import ray

    ray.init(num_cpus=2, include_dashboard=False)
    ray.data.DataContext.get_current().execution_options.preserve_order = True  # as the job's init_ray sets it
    yield ray
    ray.shutdown()


def _scored(ray, n: int, blocks: int):
    """Rows shaped as `scoring.evaluate_on_cluster` returns them, over several files' positions."""
    rows = [{"position": (i // 7) << 32 | i % 7, "request": json.dumps({"case_id": f"c{i}"}),
             "scores": json.dumps({"case_id": f"c{i}", "es": i % 2}), "locality": json.dumps([[["p", "t"], i]])}
            for i in range(n)]
    return rows, ray.data.from_items(rows, override_num_blocks=blocks).materialize()


def test_saved_scores_come_back_whole_and_in_request_order(ray_local, tmp_path):
    rows, scored = _scored(ray_local, 60, blocks=11)
    directory = tmp_path / "run" / "unedited"
    unedited.save(scored, directory, {"model": "m"})
    assert len(list((directory / unedited.SCORES_DIR).glob("*.parquet"))) > 1  # one file per write task
    assert not directory.with_name("unedited.partial").exists()
    assert json.loads((directory / unedited.IDENTITY_FILE).read_text()) == {"model": "m", "origin": unedited.SCORED}
    assert unedited.load(directory).take_all() == rows


def test_the_requests_digest_follows_every_request_and_its_place(ray_local):
    rows, scored = _scored(ray_local, 20, blocks=3)
    digest = unedited.requests_digest(scored)
    assert digest == unedited.requests_digest(ray_local.data.from_items(rows, override_num_blocks=7))  # not the blocks
    changed = [dict(r) for r in rows]
    changed[13]["request"] = json.dumps({"case_id": "c13", "target_new": "Rome"})
    moved = [dict(r, position=r["position"] + 1) for r in rows]
    assert len({digest, *(unedited.requests_digest(ray_local.data.from_items(r)) for r in (changed, moved, rows[:19]))}) == 4


def _identity(**changes) -> dict:
    return {"model": "/models/m", "dtype": "float32", "metric_kind": "counterfact", "fluency_tokens": 0,
            "fluency_prompts": 2, "n_requests": 20, "requests_digest": "abc", **changes}


def _cfg(unedited_from) -> RunConfig:
    return from_dict(RunConfig, {"eval": {"unedited_from": None if unedited_from is None else str(unedited_from)}})


def test_another_runs_scores_are_reused_only_for_the_same_model_requests_and_measurements(ray_local, tmp_path):
    _, scored = _scored(ray_local, 20, blocks=2)
    run = tmp_path / "earlier-run"
    unedited.save(scored, run / "unedited", _identity())
    assert unedited.reusable_from(_cfg(None), _identity()) is None
    # The earlier run's directory or its unedited/ folder.
    assert unedited.reusable_from(_cfg(run), _identity()) == run / "unedited"
    assert unedited.reusable_from(_cfg(run / "unedited"), _identity()) == run / "unedited"
    with pytest.raises(ConfigError) as info:
        unedited.reusable_from(_cfg(run), _identity(fluency_tokens=100, requests_digest="def"))
    assert info.value.key == "eval.unedited_from"
    assert "fluency_tokens 0 (this run: 100)" in str(info.value) and "requests_digest 'abc' (this run: 'def')" in str(info.value)
    with pytest.raises(ConfigError, match="holds no saved unedited evaluation"):
        unedited.reusable_from(_cfg(tmp_path), _identity())


def test_a_resumed_run_keeps_its_saved_scores_and_a_changed_file_is_scored_again(ray_local, tmp_path, monkeypatch):
    import ftedit.scoring

    calls = []
    rows, scored = _scored(ray_local, 20, blocks=2)

    def evaluate(cfg, model_path, requests, kind, trained=None):
        calls.append(requests)
        return scored

    monkeypatch.setattr(ftedit.scoring, "evaluate_on_cluster", evaluate)
    directory, cfg = tmp_path / "run.incomplete" / "unedited", _cfg(None)
    first, scored_origin = unedited.unedited_evaluation(cfg, "m", "requests", "counterfact", directory, _identity())
    again, resumed_origin = unedited.unedited_evaluation(cfg, "m", "requests", "counterfact", directory, _identity())
    assert len(calls) == 1 and first.take_all() == again.take_all() == rows
    assert scored_origin == resumed_origin == unedited.SCORED
    # The requests file changed under the same config: its saved scores are not used.
    unedited.unedited_evaluation(cfg, "m", "edited file", "counterfact", directory, _identity(requests_digest="def"))
    assert calls == ["requests", "edited file"]
    assert json.loads((directory / unedited.IDENTITY_FILE).read_text())["requests_digest"] == "def"
    # eval.unedited_from: copied into the run directory, not scored.
    other = tmp_path / "other.incomplete" / "unedited"
    copied, origin = unedited.unedited_evaluation(cfg, "m", "requests", "counterfact", other,
                                                  _identity(requests_digest="def"), reuse=directory)
    assert len(calls) == 2 and copied.take_all() == rows and (other / unedited.IDENTITY_FILE).is_file()
    assert origin == f"taken from {directory} (eval.unedited_from)"
    # Resumed, the copy still says where it came from.
    assert unedited.unedited_evaluation(cfg, "m", "requests", "counterfact", other, _identity(requests_digest="def"))[1] == origin
    assert len(calls) == 2


def test_a_model_changed_in_place_is_another_model(tmp_path):
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    (model / "model.safetensors").write_bytes(b"weights")
    before = unedited.model_files(model)
    assert unedited.model_files(model) == before
    (model / "model.safetensors").write_bytes(b"retrained")  # trained again into the same directory
    assert unedited.model_files(model) != before
