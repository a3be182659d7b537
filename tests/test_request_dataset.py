"""Requests read as a Ray Dataset from many files: the same requests and errors as the in-memory
reader, with only keys and error rows reaching the driver."""

import json

import pytest

from ftedit.augment import filter_fact_pool, never_train_on, normalize
from ftedit.config import DataConfig
from ftedit.request_dataset import RequestSource, open_requests, pool_exclusions
from ftedit.requests import RequestError, load_fact_pool, load_requests

pytestmark = pytest.mark.timeout(600)


@pytest.fixture(scope="module")
def ray_local():
    import ray

    ray.init(num_cpus=2, include_dashboard=False)
    from ray.data import DataContext

    DataContext.get_current().execution_options.preserve_order = True
    DataContext.get_current().enable_progress_bars = False
    yield
    ray.shutdown()


def edit(i, **overrides):
    record = {"case_id": f"c{i}", "prompt": f"The home town of Person{i} is", "subject": f"Person{i}",
              "target_new": "Lyon", "target_true": "Paris", "paraphrases": [f"Person{i} was born in"],
              "neighbourhood": [f"The home town of Other{i} is"]}
    return {**record, **overrides}


def write_parts(tmp_path, parts):
    for n, records in enumerate(parts):
        (tmp_path / f"part-{n}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return str(tmp_path / "part-*.jsonl")


def all_requests(source: RequestSource):
    return source.head(source.n_requests)


def test_glob_of_files_reads_the_same_requests_as_the_in_memory_reader(ray_local, tmp_path):
    pattern = write_parts(tmp_path, [[edit(i) for i in range(5)], [edit(i) for i in range(5, 12)], []])
    for offset, limit in ((0, None), (3, 4), (5, 2), (7, None), (0, 12)):
        source = open_requests(DataConfig(requests=pattern, offset=offset, limit=limit))
        expected = load_requests(pattern, limit=limit, offset=offset).requests
        assert all_requests(source) == expected, (offset, limit)
        assert source.n_requests == len(expected) and source.format == "jsonl" and not source.skipped
    # Record numbers run across the files in sorted order: offset 3, limit 4 spans both files.
    assert [r.case_id for r in load_requests(pattern, limit=4, offset=3).requests] == ["c3", "c4", "c5", "c6"]


def test_errors_name_file_record_and_field_across_files(ray_local, tmp_path):
    first = [edit(0), edit(1)]
    second = [edit(2), edit(3, target_new=""), edit(1, prompt="Person1 lives in"),  # empty field; duplicate id
              edit(4, prompt="The home town of Person0 is", subject="Person0", target_new="Rome")]  # conflict
    pattern = write_parts(tmp_path, [first, second])
    with pytest.raises(RequestError) as info:
        open_requests(DataConfig(requests=pattern))
    error = info.value
    assert (error.file, error.index, error.case_id, error.field) == (str(tmp_path / "part-1.jsonl"), 1, "c3", "target_new")

    source = open_requests(DataConfig(requests=pattern, on_invalid="skip"))
    in_memory = load_requests(pattern, skip_invalid=True)
    assert [str(e) for e in source.skipped] == [str(e) for e in in_memory.skipped]
    assert [(e.index, e.field) for e in source.skipped] == [(1, "target_new"), (2, "case_id"), (3, "target_new")]
    assert f"duplicate of record 1 of {tmp_path / 'part-0.jsonl'}" in str(source.skipped[1])
    assert "edits the same prompt to 'Lyon'" in str(source.skipped[2])
    assert [r.case_id for r in all_requests(source)] == ["c0", "c1", "c2"]


def test_with_on_invalid_error_only_the_first_clash_is_spelled_out(ray_local, tmp_path, monkeypatch):
    import ftedit.request_dataset as request_dataset

    # Three records that edit an earlier record's prompt to another answer, then a bad field.
    records = [edit(i) for i in range(4)] + [
        edit(10 + i, prompt=f"The home town of Person{i} is", subject=f"Person{i}", target_new="Rome") for i in range(3)]
    pattern = write_parts(tmp_path, [records + [edit(20, target_new="")]])
    fetched = []
    rows_at = request_dataset._rows_at
    monkeypatch.setattr(request_dataset, "_rows_at",
                        lambda ds, column, wanted: fetched.append(list(wanted)) or rows_at(ds, column, wanted))
    with pytest.raises(RequestError) as info:
        open_requests(DataConfig(requests=pattern))
    assert (info.value.index, info.value.case_id) == (4, "c10") and "edits the same prompt" in info.value.message
    assert fetched == [[0, 4]]  # the rows of the first clash and of the record it clashes with, no more
    # With skip, every clash is spelled out, as before.
    fetched.clear()
    source = open_requests(DataConfig(requests=pattern, on_invalid="skip"))
    assert [e.index for e in source.skipped] == [4, 5, 6, 7] and fetched[0] == [0, 1, 2, 4, 5, 6]


def test_bad_files_fail_with_the_files_error(ray_local, tmp_path):
    with pytest.raises(RequestError, match="no file matches"):
        open_requests(DataConfig(requests=str(tmp_path / "none-*.jsonl")))
    with pytest.raises(RequestError) as info:  # a folder of parts, given without its glob
        open_requests(DataConfig(requests=str(tmp_path)))
    assert str(info.value) == (f"{tmp_path}: is a directory, not a file of records; "
                               f"name its files with a glob such as {tmp_path / '*.jsonl'}")
    (tmp_path / "broken.jsonl").write_text(json.dumps(edit(0)) + "\n{oops\n")
    with pytest.raises(RequestError) as info:
        open_requests(DataConfig(requests=str(tmp_path / "broken.jsonl")))
    assert info.value.file == str(tmp_path / "broken.jsonl") and "line 2" in info.value.message
    zsre = {"subject": "Acme", "src": "What does Acme make?", "alt": "cars", "answers": ["toys"]}
    (tmp_path / "mixed-0.jsonl").write_text(json.dumps(edit(0)) + "\n")
    (tmp_path / "mixed-1.json").write_text(json.dumps([zsre]))
    with pytest.raises(RequestError, match="one run reads one format"):
        open_requests(DataConfig(requests=str(tmp_path / "mixed-*")))


def test_requests_without_a_true_answer_are_reported(ray_local, tmp_path):
    pattern = write_parts(tmp_path, [[edit(0), {**edit(1), "target_true": None}]])
    assert open_requests(DataConfig(requests=pattern)).missing_true == ["c1"]


def test_mquake_neighbourhood_prompts_on_the_cluster_equal_the_in_memory_reader(ray_local, shared_data):
    # Each task builds the file's neighbour index itself; a slice must get the prompts the whole
    # file gives, whatever window the task reads.
    data = DataConfig(requests=str(shared_data / "mquake" / "MQuAKE-CF.json"), offset=50, limit=50)
    requests = all_requests(open_requests(data))
    assert requests == load_requests(data.requests, limit=50, offset=50, mquake_neighbours=data.mquake_neighbours).requests
    assert data.mquake_neighbours == 10 and sum(bool(r.neighbourhood) for r in requests) > 10


def test_pool_exclusions_on_the_cluster_equal_the_in_memory_filter(ray_local, shared_data):
    data = DataConfig(requests=str(shared_data / "counterfact" / "counterfact-edit.json"), limit=300)
    source = open_requests(data)
    requests = load_requests(data.requests, limit=300).requests
    pool = load_fact_pool(shared_data / "counterfact" / "counterfact-train.json")
    kept, forbidden = pool_exclusions(source, pool)
    assert kept == filter_fact_pool(pool, requests) and 0 < len(kept) < len(pool)
    eval_prompts = {normalize(p) for r in requests for p in r.eval_prompts()}
    assert len(forbidden) == len(eval_prompts) and all(p in forbidden for p in eval_prompts)
    assert list(forbidden.keys) == list(never_train_on(requests).keys)


def test_a_broken_file_among_several_fails_with_its_error_when_counting_records(ray_local, tmp_path):
    pattern = write_parts(tmp_path, [[edit(0)], [edit(1)]])
    (tmp_path / "part-1.jsonl").write_text("{oops\n")
    for data in (DataConfig(requests=pattern, limit=1, offset=1), DataConfig(requests=pattern, on_invalid="skip")):
        with pytest.raises(RequestError) as info:
            open_requests(data)
        assert info.value.file == str(tmp_path / "part-1.jsonl") and "line 1" in info.value.message
