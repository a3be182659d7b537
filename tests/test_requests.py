"""Tests for ftedit.requests: loaders, validation errors and the fact pool."""

import copy
import json
import pickle
from pathlib import Path

import pytest

from ftedit.requests import (
    FORMATS,
    EditRequest,
    Fact,
    LoadResult,
    RequestError,
    detect_format,
    load_fact_pool,
    load_requests,
)

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
CF_EDIT = "counterfact/counterfact-edit.json"
CF_TRAIN = "counterfact/counterfact-train.json"
ZSRE = "zsre/zsre_mend_train-1k.json"
MQUAKE = "mquake/MQuAKE-CF.json"


def data_file(rel: str) -> Path:
    path = DATA / rel
    if not path.exists():
        pytest.skip(f"real benchmark data not found at {path} (expected ../shared/data next to the repo)")
    return path


def raw(rel: str) -> list:
    return json.loads(data_file(rel).read_text(encoding="utf-8"))


# ---------------------------------------------------------------- fixtures

def rome(case_id=0, subject="Danielle Darrieux", template="The mother tongue of {} is",
         new="English", true="French"):
    return {
        "case_id": case_id,
        "requested_rewrite": {"prompt": template, "subject": subject, "relation_id": "P103",
                              "target_new": {"str": new, "id": "Q1860"},
                              "target_true": {"str": true, "id": "Q150"}},
        "paraphrase_prompts": [f"Where {subject} is from, people speak", f"{subject} speaks"],
        "neighborhood_prompts": [f"Neighbour {i} is a native speaker of" for i in range(10)],
        "attribute_prompts": ["Jan is a native speaker of"],
        "generation_prompts": [f"{subject}'s mother tongue is"],
    }


def easyedit(case_id=0, prompt="The mother tongue of Danielle Darrieux is", subject="Danielle Darrieux",
             new="English", true="French"):
    return {"case_id": case_id, "prompt": prompt, "subject": subject, "ground_truth": true,
            "target_new": new, "rephrase_prompt": f"{subject} speaks",
            "locality_prompt": "Michel Rocard is a native speaker of", "locality_ground_truth": "French"}


def zsre(subject="UniFirst", src="What is the product made by UniFirst?", alt="unmanned aircraft",
         answers=("uniform",)):
    return {"subject": subject, "src": src, "pred": "uniform", "rephrase": f"What does {subject} make?",
            "alt": alt, "answers": list(answers), "loc": "nq question: who wrote hamlet",
            "loc_ans": "Shakespeare", "cond": "..."}


def mquake(case_id=1, rewrites=None):
    rewrites = rewrites or [{"prompt": "{} is a citizen of", "subject": "Ellie Kemper",
                             "target_new": {"str": "Croatia"}, "target_true": {"str": "United States"},
                             "question": "What is the country of citizenship of Ellie Kemper?"}]
    return {"case_id": case_id, "requested_rewrite": rewrites, "questions": ["q"], "answer": "a",
            "new_answer": "b"}


def generic(**fields):
    record = {"prompt": "The capital of France is", "subject": "France", "target_new": "Rome"}
    record.update(fields)
    return record


def write_json(tmp_path, records, name="data.json") -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(records), encoding="utf-8")
    return path


def write_jsonl(tmp_path, records, name="data.jsonl") -> Path:
    path = tmp_path / name
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def assert_located(err: RequestError, path, index, case_id, field):
    """The message and the attributes both point at the offending record and field."""
    msg = str(err)
    shown = "?" if case_id is None else case_id
    assert str(path) in msg and Path(path).name in msg
    if index == "-":  # the whole file: its name, then what is wrong with it
        assert msg.startswith(f"{path}: ") and "record - " not in msg and "field '" not in msg, msg
    else:
        assert f"record {index} (case_id {shown})" in msg
        assert f"field '{field}'" in msg
    assert (err.file, err.index, err.case_id, err.field) == (str(path), index, case_id, field)


# ---------------------------------------------------------------- real data

def test_counterfact_easyedit_real_first_record():
    result = load_requests(data_file(CF_EDIT), limit=50)
    assert isinstance(result, LoadResult) and len(result.requests) == 50 and result.skipped == []
    first = raw(CF_EDIT)[0]
    assert result.requests[0] == EditRequest(
        case_id="0", prompt="The mother tongue of Danielle Darrieux is", subject="Danielle Darrieux",
        target_new="English", target_true="French", paraphrases=(first["rephrase_prompt"],),
        neighbourhood=("Michel Rocard is a native speaker of",), neighbourhood_answer="French")


def test_counterfact_real_full_file_has_conflicts():
    path = data_file(CF_EDIT)
    with pytest.raises(RequestError) as info:
        load_requests(path)
    assert info.value.field == "target_new" and "conflicts with record" in str(info.value)

    result = load_requests(path, skip_invalid=True)
    assert len(result.skipped) > 0
    assert len(result.requests) + len(result.skipped) == 10_000
    assert all(e.field == "target_new" for e in result.skipped)
    target_of = {}
    for r in result.requests:
        assert target_of.setdefault(r.prompt, r.target_new) == r.target_new
    assert len({r.case_id for r in result.requests}) == len(result.requests)


def test_zsre_real_first_record_alt_and_answers():
    path = data_file(ZSRE)
    first = load_requests(path, limit=1).requests[0]
    assert first == EditRequest(
        case_id="0", prompt="What is the product made by UniFirst?", subject="UniFirst",
        target_new="unmanned aircraft", target_true="uniform",
        paraphrases=("What will be the product of UniFirst?",),
        neighbourhood=("nq question: john goodman's character in the big lebowski",),
        neighbourhood_answer="Walter Sobchak")
    memit = load_requests(path, limit=1, zsre_target="answers").requests[0]
    assert (memit.target_new, memit.target_true) == ("uniform", None)
    assert memit.paraphrases == first.paraphrases and memit.neighbourhood == first.neighbourhood


def test_zsre_real_file_invalid_records():
    # Some records have alt == answers[0] or an empty alt: not editable toward alt.
    path = data_file(ZSRE)
    with pytest.raises(RequestError) as info:
        load_requests(path)
    assert_located(info.value, path, 101, "101", "target_new")
    result = load_requests(path, skip_invalid=True)
    assert len(result.requests) + len(result.skipped) == 1000 and len(result.skipped) > 0
    assert {e.field for e in result.skipped} <= {"target_new", "alt"}
    assert len(load_requests(path, zsre_target="answers").requests) == 1000


def test_mquake_real_first_record_and_limit_counts_records():
    path = data_file(MQUAKE)
    records = raw(MQUAKE)[:10]
    requests = load_requests(path, limit=10).requests
    assert len(requests) == sum(len(r["requested_rewrite"]) for r in records) > 10
    first = requests[0]
    assert (first.case_id, first.prompt, first.subject) == ("1:0", "Ellie Kemper is a citizen of", "Ellie Kemper")
    assert (first.target_new, first.target_true) == ("Croatia", "United States of America")
    # The rewrite's single-hop question is its paraphrase; the case's multi-hop questions are
    # portability probes of its first rewrite, and all of them are evaluation prompts.
    assert first.paraphrases == ("What is the country of citizenship of Ellie Kemper?",)
    assert first.portability == tuple(records[0]["questions"]) and len(first.portability) == 3
    assert (first.portability_new, first.portability_true) == ("Kolinda Grabar-Kitarovi\u0107", "Donald Trump")
    assert first.eval_prompts() == first.paraphrases + first.portability
    second_case = records[1]["case_id"]
    assert [r.case_id for r in requests[1:3]] == [f"{second_case}:0", f"{second_case}:1"]
    assert requests[1].portability == tuple(records[1]["questions"])
    assert requests[2].portability == () and requests[2].portability_new is None


def test_detect_format_on_real_files():
    for rel, expected in [(CF_EDIT, "counterfact"), (ZSRE, "zsre"), (MQUAKE, "mquake")]:
        assert detect_format(data_file(rel), raw(rel)[0]) == expected


def test_fact_pool_counterfact_train():
    path = data_file(CF_TRAIN)
    facts = load_fact_pool(path, limit=100)
    records = raw(CF_TRAIN)[:100]
    assert 90 <= len(facts) <= 100
    assert facts[0] == Fact(records[0]["prompt"], records[0]["ground_truth"], records[0]["subject"])
    truth = {r["prompt"]: r["ground_truth"] for r in reversed(records)}  # first wins
    assert all(truth[f.prompt] == f.target for f in facts)
    assert len({f.prompt for f in facts}) == len(facts)


def test_fact_pool_zsre_uses_gold_answer_even_for_unusable_alt():
    path = data_file(ZSRE)
    facts = load_fact_pool(path)
    records = raw(ZSRE)
    assert len(facts) == 1000  # records rejected as edits (alt == answer, empty alt) still give facts
    assert facts[0] == Fact("What is the product made by UniFirst?", "uniform", "UniFirst")
    assert facts[534] == Fact(records[534]["src"], records[534]["answers"][0], records[534]["subject"])


# ---------------------------------------------------------------- fixtures per shape

def test_rome_shape(tmp_path):
    path = write_json(tmp_path, [rome(0), rome(7, subject="Paris Hilton", template="{}'s {brace} tongue is")])
    assert detect_format(path, rome(0)) == "counterfact"
    first, second = load_requests(path).requests
    assert first.case_id == "0" and first.prompt == "The mother tongue of Danielle Darrieux is"
    assert (first.subject, first.target_new, first.target_true) == ("Danielle Darrieux", "English", "French")
    assert len(first.paraphrases) == 2 and len(first.neighbourhood) == 10
    assert first.attribute_prompts == ("Jan is a native speaker of",)
    assert first.generation_prompts == ("Danielle Darrieux's mother tongue is",)
    assert first.neighbourhood_answer is None
    assert first.eval_prompts() == first.paraphrases + first.neighbourhood + first.attribute_prompts
    # replace("{}") rather than str.format: other braces survive
    assert second.case_id == "7" and second.prompt == "Paris Hilton's {brace} tongue is"


def test_jsonl_shape_defaults_and_blank_lines(tmp_path):
    path = tmp_path / "edits.jsonl"
    full = generic(case_id="fr-capital", target_true="Paris", paraphrases=["France's capital is"],
                   neighbourhood=["The capital of Spain is"], neighbourhood_answer="Madrid",
                   attribute_prompts=["Berlin is a"], generation_prompts=["In France,"])
    minimal = generic(prompt="Germany's capital is", subject="Germany", target_new="Bonn")
    path.write_text("\n" + json.dumps(full) + "\n\n   \n" + json.dumps(minimal) + "\n", encoding="utf-8")
    assert detect_format(path, {}) == "jsonl"
    first, second = load_requests(str(path)).requests
    assert first == EditRequest("fr-capital", "The capital of France is", "France", "Rome", "Paris",
                                ("France's capital is",), ("The capital of Spain is",), "Madrid",
                                ("Berlin is a",), ("In France,",))
    assert second == EditRequest("1", "Germany's capital is", "Germany", "Bonn")  # index among non-blank lines


def test_jsonl_portability_questions_need_their_new_answer(tmp_path):
    multi_hop = generic(portability=["The head of state of the country whose capital is Rome is"],
                        portability_new="Mattarella", portability_true="Macron")
    path = tmp_path / "edits.jsonl"
    path.write_text(json.dumps(multi_hop) + "\n" + json.dumps({**multi_hop, "portability_new": None}) + "\n")
    first = load_requests(str(path), limit=1).requests[0]
    assert (first.portability, first.portability_new, first.portability_true) == (
        ("The head of state of the country whose capital is Rome is",), "Mattarella", "Macron")
    with pytest.raises(RequestError) as info:
        load_requests(str(path))
    assert_located(info.value, path, 1, "1", "portability_new")


def test_jsonl_prompts_may_be_rome_templates_filled_with_the_subject(tmp_path):
    """A '{}' in a JSONL edit's own prompts stands for its subject, as in ROME's templates; a
    literal brace pair of another kind survives, and a fact of the pool may be a template too."""
    templated = generic(prompt="The capital of {} is", paraphrases=["{}'s capital {city} is"],
                        generation_prompts=["{} is a country where"], neighbourhood=["The capital of Spain is"],
                        portability=["The mayor of the capital of {} is"], portability_new="Gualtieri")
    request = load_requests(write_jsonl(tmp_path, [templated])).requests[0]
    assert request.prompt == "The capital of France is" and request.subject == "France"
    assert request.paraphrases == ("France's capital {city} is",)
    assert request.generation_prompts == ("France is a country where",)
    assert request.portability == ("The mayor of the capital of France is",)
    assert request.neighbourhood == ("The capital of Spain is",)
    pool = write_jsonl(tmp_path, [generic(prompt="{} has the capital", target_true="Paris")], name="pool.jsonl")
    assert load_fact_pool(pool) == [Fact("France has the capital", "Paris", "France")]


def test_detect_format_by_keys(tmp_path):
    json_path = tmp_path / "x.json"
    assert detect_format(json_path, mquake()) == "mquake"
    assert detect_format(json_path, rome()) == "counterfact"
    assert detect_format(json_path, easyedit()) == "counterfact"
    assert detect_format(json_path, zsre()) == "zsre"
    assert detect_format(json_path, generic()) == "jsonl"
    assert detect_format(tmp_path / "x.JSONL", easyedit()) == "jsonl"
    for bad in ({"foo": 1}, ["not", "a", "dict"]):
        with pytest.raises(RequestError) as info:
            detect_format(json_path, bad)
        assert_located(info.value, json_path, 0, None, "(format)")


def test_generic_records_in_a_json_list(tmp_path):
    path = write_json(tmp_path, [generic(case_id=3)])
    assert load_requests(path).requests == [EditRequest("3", "The capital of France is", "France", "Rome")]


def test_explicit_format_overrides_detection(tmp_path):
    path = write_json(tmp_path, [easyedit()])
    with pytest.raises(RequestError) as info:
        load_requests(path, format="zsre")
    assert_located(info.value, path, 0, "0", "src")


def test_to_dict_from_dict_round_trip(tmp_path):
    request = EditRequest("5", "The capital of France is", "France", "Rome", "Paris", ("a",), ("b", "c"),
                          "Madrid", ("d",), ("e",))
    d = request.to_dict()
    assert d["paraphrases"] == ["a"] and d["neighbourhood"] == ["b", "c"]
    assert json.loads(json.dumps(d)) == d
    assert EditRequest.from_dict(d) == request
    assert EditRequest.from_dict({**d, "case_id": 5}) == request
    with pytest.raises(ValueError, match="unknown"):
        EditRequest.from_dict({**d, "extra": 1})
    # to_dict output is itself a valid JSONL record
    path = write_jsonl(tmp_path, [d])
    assert load_requests(path).requests == [request]


# ---------------------------------------------------------------- file-level errors

def test_missing_file():
    with pytest.raises(RequestError) as info:
        load_requests("/nonexistent/dir/edits.json")
    assert_located(info.value, "/nonexistent/dir/edits.json", "-", None, "(file)")
    assert "not found" in str(info.value)
    with pytest.raises(RequestError):
        load_fact_pool(Path("/nonexistent/dir/pool.json"))


def test_a_directory_or_a_pattern_with_no_match_is_named_as_such(tmp_path):
    with pytest.raises(RequestError) as info:
        load_requests(tmp_path)
    assert str(info.value) == f"{tmp_path}: is a directory, not a file of records"
    with pytest.raises(RequestError) as info:
        load_fact_pool(tmp_path)
    assert str(info.value) == f"{tmp_path}: is a directory, not a file of records"
    with pytest.raises(RequestError) as info:
        load_requests(str(tmp_path / "part-*.jsonl"))
    assert str(info.value) == f"{tmp_path / 'part-*.jsonl'}: no file matches this pattern"


def test_invalid_json_and_top_level(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('[{"prompt": 1,', encoding="utf-8")
    with pytest.raises(RequestError) as info:
        load_requests(bad)
    assert_located(info.value, bad, "-", None, "(file)")
    assert "invalid JSON" in str(info.value)

    obj = write_json(tmp_path, {"prompt": "x"}, name="obj.json")
    with pytest.raises(RequestError) as info:
        load_requests(obj)
    assert_located(info.value, obj, "-", None, "(file)")
    assert "expected a list" in str(info.value)
    with pytest.raises(RequestError):
        load_fact_pool(obj)


def test_invalid_jsonl_line_number(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(generic()) + "\n\n{oops\n", encoding="utf-8")
    with pytest.raises(RequestError) as info:
        load_requests(path)
    assert_located(info.value, path, "-", None, "(file)")
    assert "line 3" in str(info.value)


def test_bad_arguments(tmp_path):
    path = write_json(tmp_path, [generic()])
    with pytest.raises(ValueError) as info:
        load_requests(path, format="rome")
    assert all(name in str(info.value) for name in FORMATS)
    with pytest.raises(ValueError, match="zsre_target"):
        load_requests(path, zsre_target="pred")
    with pytest.raises(ValueError, match="limit"):
        load_requests(path, limit=-1)
    with pytest.raises(ValueError, match="offset"):
        load_requests(path, offset=-1)


def test_offset_skips_records_and_keeps_their_file_indices(tmp_path):
    records = [generic(case_id=f"c{i}", prompt=f"Prompt {i} about X", subject="X") for i in range(5)]
    for path in (write_json(tmp_path, records), write_jsonl(tmp_path, records)):
        split = load_requests(path, limit=2, offset=3).requests
        assert [r.case_id for r in split] == ["c3", "c4"]
        assert [r.case_id for r in load_requests(path, offset=4).requests] == ["c4"]
        # An error in a skipped record does not matter; one after the offset names its file index.
        bad = records[:1] + [dict(records[1], target_new=7)] + records[2:]
        assert len(load_requests(write_json(tmp_path, bad), offset=2).requests) == 3
        with pytest.raises(RequestError, match="record 1"):
            load_requests(write_json(tmp_path, bad), offset=1)


def test_an_offset_past_whole_files_carries_over_and_reads_each_file_once(tmp_path, monkeypatch):
    records = [generic(case_id=f"c{i}", prompt=f"Prompt {i} about X", subject="X") for i in range(7)]
    (tmp_path / "parts").mkdir()
    write_json(tmp_path / "parts", records[:2], name="a.json")
    write_jsonl(tmp_path / "parts", records[2:5], name="b.jsonl")
    write_json(tmp_path / "parts", records[5:], name="c.json")
    reads, read_text = [], Path.read_text
    monkeypatch.setattr(Path, "read_text", lambda self, *a, **k: reads.append(self.name) or read_text(self, *a, **k))
    pattern = str(tmp_path / "parts" / "*")
    for offset in (0, 2, 3, 5, 6, 7, 9):
        reads.clear()
        got = [r.case_id for r in load_requests(pattern, offset=offset).requests]
        assert got == [f"c{i}" for i in range(offset, 7)], offset
        assert reads == ["a.json", "b.jsonl", "c.json"], offset
    reads.clear()
    assert [r.case_id for r in load_requests(pattern, offset=3, limit=3).requests] == ["c3", "c4", "c5"]
    assert reads == ["a.json", "b.jsonl", "c.json"]


# ---------------------------------------------------------------- record-level errors

def _without(record, *keys):
    record = copy.deepcopy(record)
    target = record
    for key in keys[:-1]:
        target = target[key]
    del target[keys[-1]]
    return record


def _with(record, value, *keys):
    record = copy.deepcopy(record)
    target = record
    for key in keys[:-1]:
        target = target[key]
    target[keys[-1]] = value
    return record


RR = "requested_rewrite"
BAD_RECORDS = [
    # (id, bad record, expected case_id, field, message fragment); the bad record is record 1
    ("easy-missing-subject", _without(easyedit(1), "subject"), "1", "subject", "missing"),
    ("easy-empty-target", easyedit(1, new=""), "1", "target_new", "empty"),
    ("easy-blank-target", easyedit(1, new="   "), "1", "target_new", "empty"),
    ("easy-number-target", easyedit(1, new=42), "1", "target_new", "expected a string, got number"),
    ("easy-dict-target", easyedit(1, new={"str": "x"}), "1", "target_new", "got object"),
    ("easy-subject-absent", easyedit(1, subject="Someone Else"), "1", "prompt", "does not contain the subject"),
    ("easy-equal-targets", easyedit(1, new="French"), "1", "target_new", "equals target_true, nothing to edit"),
    ("easy-bad-case-id", easyedit([1]), None, "case_id", "expected an integer"),
    ("not-an-object", ["a", "list"], None, "(record)", "expected an object"),
    ("rome-missing-rewrite-subject", _without(rome(1), RR, "subject"), "1", f"{RR}.subject", "missing"),
    ("rome-no-placeholder", _with(rome(1), "The mother tongue is", RR, "prompt"), "1", f"{RR}.prompt", "{}"),
    ("rome-dict-target", _with(rome(1), {"x": 1}, RR, "target_new", "str"), "1", f"{RR}.target_new.str",
     "expected a string, got object"),
    ("rome-number-target", _with(rome(1), 7, RR, "target_true", "str"), "1", f"{RR}.target_true.str", "number"),
    ("rome-plain-target", _with(rome(1), "English", RR, "target_new"), "1", f"{RR}.target_new",
     "expected an object"),
    ("rome-equal-targets", rome(1, new="French"), "1", "target_new", "nothing to edit"),
    ("rome-paraphrases-str", _with(rome(1), "one prompt", "paraphrase_prompts"), "1", "paraphrase_prompts",
     "expected a list of strings"),
    ("rome-neighbour-item", _with(rome(1), ["ok", 3], "neighborhood_prompts"), "1", "neighborhood_prompts",
     "item 1"),
    ("rome-attribute-empty-item", _with(rome(1), [""], "attribute_prompts"), "1", "attribute_prompts",
     "item 0"),
]


@pytest.mark.parametrize("record,case_id,field,fragment", [b[1:] for b in BAD_RECORDS],
                         ids=[b[0] for b in BAD_RECORDS])
def test_bad_counterfact_record(tmp_path, record, case_id, field, fragment):
    first = easyedit(0, prompt="Paris is the capital of", subject="Paris", new="Italy", true="France")
    path = write_json(tmp_path, [first, record], name="cf.json")
    with pytest.raises(RequestError) as info:
        load_requests(path, format="counterfact")
    assert_located(info.value, path, 1, case_id, field)
    assert fragment in info.value.message
    result = load_requests(path, format="counterfact", skip_invalid=True)
    assert [r.case_id for r in result.requests] == ["0"] and result.skipped[0].field == field
    assert load_fact_pool(path, format="counterfact") == [Fact("Paris is the capital of", "France", "Paris")]


@pytest.mark.parametrize("record,field,fragment", [
    (_without(zsre(), "src"), "src", "missing"),
    (zsre(subject="Nobody"), "src", "does not contain the subject"),
    (zsre(alt=""), "alt", "empty"),
    (zsre(alt="uniform"), "target_new", "equals target_true"),
    (zsre(answers=()), "answers", "empty list"),
    (_with(zsre(), "uniform", "answers"), "answers", "expected a list of strings"),
    (_with(zsre(), 3, "loc_ans"), "loc_ans", "got number"),
])
def test_bad_zsre_record(tmp_path, record, field, fragment):
    path = write_json(tmp_path, [zsre(subject="Acme", src="What does Acme make?"), record], name="z.json")
    with pytest.raises(RequestError) as info:
        load_requests(path)
    assert_located(info.value, path, 1, "1", field)
    assert fragment in info.value.message


def test_zsre_case_id_from_record(tmp_path):
    path = write_json(tmp_path, [{**zsre(), "case_id": "z-9"}])
    assert load_requests(path).requests[0].case_id == "z-9"


@pytest.mark.parametrize("record,field,fragment", [
    (_without(generic(), "target_new"), "target_new", "missing"),
    (generic(prompt="  "), "prompt", "empty"),
    (generic(subject="Spain"), "prompt", "does not contain the subject 'Spain' (nor a '{}' where it goes)"),
    (generic(neighbourhood=["The capital of {} is"]), "neighbourhood", "item 0: has a '{}' placeholder"),
    (generic(attribute_prompts=["Rome", "{} speaks"]), "attribute_prompts", "item 1: has a '{}' placeholder"),
    (generic(target_new=1.5), "target_new", "got number"),
    (generic(target_true="Rome"), "target_new", "nothing to edit"),
    (generic(paraphrases="France's capital"), "paraphrases", "expected a list of strings"),
    (generic(neighbourhood=[None]), "neighbourhood", "item 0"),
    (generic(generation_prompts={"a": 1}), "generation_prompts", "got object"),
])
def test_bad_jsonl_record(tmp_path, record, field, fragment):
    path = write_jsonl(tmp_path, [generic(prompt="Spain's capital is", subject="Spain"), record])
    with pytest.raises(RequestError) as info:
        load_requests(path)
    assert_located(info.value, path, 1, "1", field)
    assert fragment in info.value.message


def test_bad_mquake_rewrite_names_rewrite_case_id(tmp_path):
    good = {"prompt": "{} works for", "subject": "Ann", "target_new": {"str": "IBM"}, "target_true": {"str": "HP"}}
    bad = {**good, "prompt": "Ann works for"}
    path = write_json(tmp_path, [mquake(3), mquake(7, [good, bad])])
    with pytest.raises(RequestError) as info:
        load_requests(path)
    assert_located(info.value, path, 1, "7:1", f"{RR}.prompt")
    # A partly bad MQuAKE case is dropped whole: its rewrites only make sense together.
    result = load_requests(path, skip_invalid=True)
    assert [r.case_id for r in result.requests] == ["3:0"] and len(result.skipped) == 1

    no_answer = {k: v for k, v in mquake(5).items() if k != "new_answer"}
    path = write_json(tmp_path, [no_answer], name="m1.json")
    with pytest.raises(RequestError) as info:
        load_requests(path)
    assert_located(info.value, path, 0, "5", "new_answer")

    for rewrites, fragment in ([], "empty list"), ("x", "expected a list"):
        path = write_json(tmp_path, [{"case_id": 4, RR: rewrites}], name="m2.json")
        with pytest.raises(RequestError) as info:
            load_requests(path, format="mquake")
        assert_located(info.value, path, 0, "4", RR)
        assert fragment in info.value.message


def test_request_error_format_and_pickle():
    err = RequestError("f.json", 3, None, "prompt", "empty string")
    assert str(err) == "f.json: record 3 (case_id ?): field 'prompt': empty string"
    assert isinstance(err, ValueError)
    again = pickle.loads(pickle.dumps(err))
    assert str(again) == str(err) and again.field == "prompt"
    expected = "f.json: record 3 (case_id x1): field 'prompt': m"
    assert str(RequestError("f.json", 3, "x1", "prompt", "m")) == expected


# ---------------------------------------------------------------- cross-record checks

def test_duplicate_case_id(tmp_path):
    records = [generic(case_id=5), generic(case_id=6, prompt="France's capital is"),
               generic(case_id="5", prompt="The capital of France, the city, is")]
    path = write_jsonl(tmp_path, records)
    with pytest.raises(RequestError) as info:
        load_requests(path)
    assert_located(info.value, path, 2, "5", "case_id")
    assert "record 0" in info.value.message
    result = load_requests(path, skip_invalid=True)
    assert [r.case_id for r in result.requests] == ["5", "6"] and len(result.skipped) == 1


def test_conflicting_targets_and_allowed_repeats(tmp_path):
    records = [generic(case_id="a"), generic(case_id="b"),  # same edit twice: allowed
               generic(case_id="c", target_new="Berlin")]   # same prompt, new target: conflict
    path = write_jsonl(tmp_path, records)
    with pytest.raises(RequestError) as info:
        load_requests(path)
    assert_located(info.value, path, 2, "c", "target_new")
    assert "record 0" in info.value.message and "'Rome'" in info.value.message
    result = load_requests(path, skip_invalid=True)
    assert [r.case_id for r in result.requests] == ["a", "b"]
    assert [(e.index, e.case_id) for e in result.skipped] == [(2, "c")]


def test_conflict_inside_one_mquake_record(tmp_path):
    rw = {"prompt": "{} works for", "subject": "Ann", "target_new": {"str": "IBM"}, "target_true": {"str": "HP"}}
    path = write_json(tmp_path, [mquake(9, [rw, {**rw, "target_new": {"str": "Sony"}}])])
    with pytest.raises(RequestError) as info:
        load_requests(path)
    assert_located(info.value, path, 0, "9:1", "target_new")


def test_dropped_record_is_not_remembered(tmp_path):
    # Record 0 is invalid; with skip_invalid its case_id and prompt must not block record 1.
    records = [generic(case_id=1, target_true="Rome"), generic(case_id=1, target_new="Rome")]
    result = load_requests(write_jsonl(tmp_path, records), skip_invalid=True)
    assert [r.case_id for r in result.requests] == ["1"] and len(result.skipped) == 1


def test_skip_invalid_collects_and_first_error_wins(tmp_path):
    records = [generic(case_id=0), generic(case_id=1, subject="Spain"), generic(case_id=2, prompt="France is in"),
               generic(case_id=3, target_new=""), generic(case_id=4, prompt="The flag of France is")]
    path = write_jsonl(tmp_path, records)
    with pytest.raises(RequestError) as info:
        load_requests(path)
    assert info.value.index == 1
    result = load_requests(path, skip_invalid=True)
    assert [r.case_id for r in result.requests] == ["0", "2", "4"]
    assert [(e.index, e.field) for e in result.skipped] == [(1, "prompt"), (3, "target_new")]


def test_limit_reads_only_first_records(tmp_path):
    path = tmp_path / "edits.jsonl"
    path.write_text(json.dumps(generic()) + "\n\n" + json.dumps(generic(case_id=9)) + "\n{broken\n",
                    encoding="utf-8")
    assert len(load_requests(path, limit=2).requests) == 2  # the broken third line is never parsed
    assert load_requests(path, limit=0).requests == []
    with pytest.raises(RequestError):
        load_requests(path)
    json_path = write_json(tmp_path, [generic(), generic(case_id=1, target_new="")])
    assert len(load_requests(json_path, limit=1).requests) == 1


def test_empty_files(tmp_path):
    assert load_requests(write_json(tmp_path, [])) == LoadResult([], [])
    (tmp_path / "empty.jsonl").write_text("\n\n", encoding="utf-8")
    assert load_requests(tmp_path / "empty.jsonl").requests == []
    assert load_fact_pool(tmp_path / "empty.jsonl") == []


def test_fact_pool_fixtures(tmp_path):
    records = [rome(0), rome(1, subject="Paris Hilton"), easyedit(2)]
    # ROME targets and EasyEdit ground_truth both become facts; duplicates of a prompt keep the first
    facts = load_fact_pool(write_json(tmp_path, records[:2]))
    assert facts == [Fact("The mother tongue of Danielle Darrieux is", "French", "Danielle Darrieux"),
                     Fact("The mother tongue of Paris Hilton is", "French", "Paris Hilton")]
    jsonl = write_jsonl(tmp_path, [generic(), generic(target_true="Paris"),
                                   generic(case_id=5, target_true="Lyon")])
    assert load_fact_pool(jsonl) == [Fact("The capital of France is", "Paris", "France")]
    mq = write_json(tmp_path, [mquake()], name="mq.json")
    assert load_fact_pool(mq) == [Fact("Ellie Kemper is a citizen of", "United States", "Ellie Kemper")]
