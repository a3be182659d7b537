"""MQuAKE neighbourhood prompts: other subjects' unedited facts with an edit's relation and old answer."""

import json
from pathlib import Path


from ftedit.mquake_neighbours import NeighbourIndex
from ftedit.requests import load_requests


def case(case_id, subject, relation, new, old, hops=(), edited=True):
    """An MQuAKE record editing (subject, relation) from `old` to `new`; `hops` are extra unedited
    facts of its chain as (subject, relation, object, cloze)."""
    first = (subject, relation, old, f"{subject} r{relation}")
    facts = [first, *hops]
    return {
        "case_id": case_id,
        "requested_rewrite": [{"prompt": "{} r" + relation, "subject": subject, "relation_id": relation,
                               "target_new": {"str": new.upper(), "id": new}, "target_true": {"str": old.upper(), "id": old}}],
        "single_hops": [{"cloze": cloze, "question": cloze + "?", "answer": o.upper()} for _, _, o, cloze in facts],
        "orig": {"triples": [[s, r, o] for s, r, o, _ in facts],
                 "edit_triples": [[subject, relation, new]] if edited else []},
    }


def test_neighbours_share_relation_and_old_answer_and_are_never_edited_in_the_file():
    records = [
        case(1, "Ann", "P27", "HR", "US", hops=[("US", "P35", "Trump", "US head is")]),
        case(2, "Bob", "P27", "FR", "US", hops=[("Cid", "P27", "US", "Cid rP27"),      # a neighbour of both
                                                 ("Dee", "P27", "CA", "Dee rP27"),      # another old answer
                                                 ("Eve", "P19", "US", "Eve rP19")]),    # another relation
        case(3, "Fay", "P27", "DE", "US", hops=[("Ann", "P27", "US", "Ann rP27 (chain)"),  # Ann is edited (case 1)
                                                 ("Gus", "P27", "US", "Gus rP27")]),
    ]
    index = NeighbourIndex(records, per_edit=10)
    for record in records:
        rewrite = record["requested_rewrite"][0]
        prompts = index.prompts_for(rewrite)
        # Only Cid's and Gus's citizenship: Ann, Bob and Fay are edited somewhere in the file
        # (with their own rewrite among them), Dee's answer and Eve's relation differ.
        assert sorted(prompts) == ["Cid rP27", "Gus rP27"], record["case_id"]
        assert prompts == index.prompts_for(json.loads(json.dumps(rewrite)))  # fixed by the rewrite
    assert index.prompts_for({"relation_id": "P27", "target_true": {"id": "CA"}, "subject": "X"}) == ("Dee rP27",)
    assert NeighbourIndex(records, per_edit=1).prompts_for(records[0]["requested_rewrite"][0]) in (("Cid rP27",), ("Gus rP27",))
    assert NeighbourIndex(records, per_edit=0).prompts_for(records[0]["requested_rewrite"][0]) == ()
    assert index.prompts_for({"relation_id": "P36", "target_true": {"id": "US"}}) == ()


def test_records_without_usable_chains_give_no_neighbours_and_no_error():
    good = case(1, "Ann", "P27", "HR", "US", hops=[("Cid", "P27", "US", "Cid rP27")])
    misaligned = case(2, "Bob", "P27", "FR", "US", hops=[("Dee", "P27", "US", "Dee rP27")])
    misaligned["single_hops"].pop()  # hops and triples no longer line up: the record is skipped
    broken = [{"case_id": 3}, "not an object", {"orig": {"triples": [["a", "b"]], "edit_triples": None},
                                                "single_hops": [{"cloze": "x"}]}]
    index = NeighbourIndex([good, misaligned, *broken], per_edit=5)
    assert index.prompts_for(good["requested_rewrite"][0]) == ("Cid rP27",)
    assert index.prompts_for({"relation_id": None}) == () and index.prompts_for("nonsense") == ()


def test_a_slice_of_an_mquake_file_reads_it_once_and_indexes_all_of_it(tmp_path, monkeypatch):
    records = [case(1, "Ann", "P27", "HR", "US", hops=[("Cid", "P27", "US", "Cid rP27")]),
               case(2, "Bob", "P27", "FR", "US")]
    path = tmp_path / "mquake.json"
    path.write_text(json.dumps(records))
    reads, read_text = [], Path.read_text
    monkeypatch.setattr(Path, "read_text", lambda self, *a, **k: reads.append(self.name) or read_text(self, *a, **k))
    # Bob's neighbour is a hop of record 0, outside the slice: the index still sees it.
    (bob,) = load_requests(path, offset=1, mquake_neighbours=5).requests
    assert bob.subject == "Bob" and bob.neighbourhood == ("Cid rP27",)
    assert reads == ["mquake.json"]  # the slice and the index come from one parse
    lines = tmp_path / "mquake.jsonl"  # JSONL skips lines before the offset, so it reads again
    lines.write_text("\n".join(json.dumps(r) for r in records))
    (bob,) = load_requests(lines, format="mquake", offset=1, mquake_neighbours=5).requests
    assert bob.neighbourhood == ("Cid rP27",)


def test_real_mquake_edits_get_unedited_same_relation_same_answer_statements(shared_data):
    path = shared_data / "mquake" / "MQuAKE-CF.json"
    records = json.loads(path.read_text())
    facts = {hop["cloze"]: tuple(triple) for r in records for hop, triple in zip(r["single_hops"], r["orig"]["triples"])}
    edited = {(s, rel) for r in records for s, rel, _ in r["orig"]["edit_triples"]}
    requests = load_requests(path, limit=100, mquake_neighbours=10).requests
    rewrites = [rw for r in records[:100] for rw in r["requested_rewrite"]]
    assert len(requests) == len(rewrites) == 123
    with_neighbours = 0
    for request, rewrite in zip(requests, rewrites):
        assert len(request.neighbourhood) <= 10 and len(set(request.neighbourhood)) == len(request.neighbourhood)
        with_neighbours += bool(request.neighbourhood)
        for prompt in request.neighbourhood:
            subject, relation, obj = facts[prompt]
            assert (relation, obj) == (rewrite["relation_id"], rewrite["target_true"]["id"]), prompt
            assert (subject, relation) not in edited  # so never the edit's own subject either
    assert with_neighbours == 72  # the rest: no unedited fact in the file shares relation and answer
    first = requests[0]  # Ellie Kemper is a citizen of Croatia (was: United States of America)
    assert len(first.neighbourhood) == 10 and all(p.endswith(" is a citizen of") for p in first.neighbourhood)
    # The neighbourhood prompts are evaluation prompts (never trained on); 0 turns them off.
    assert set(first.neighbourhood) <= set(first.eval_prompts())
    assert all(not r.neighbourhood for r in load_requests(path, limit=100).requests)
