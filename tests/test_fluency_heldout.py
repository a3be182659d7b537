"""benchmarks/fluency_heldout.py: held-out prompts, counting the new target, measuring a model."""

import sys

from ftedit.requests import EditRequest
from tests.conftest import REPO

sys.path.insert(0, str(REPO / "benchmarks"))
from fluency_heldout import heldout_prompts, measure, mentions  # noqa: E402


def test_every_paraphrase_is_a_heldout_prompt_and_the_edit_prompt_is_not():
    requests = [EditRequest("a", "Danielle Darrieux speaks", "Danielle Darrieux", "English",
                            paraphrases=("Where Danielle Darrieux is from, people speak", "Danielle Darrieux talks")),
                EditRequest("b", "Apple was founded by", "Apple", "Wozniak")]  # no paraphrase: skipped
    assert heldout_prompts(requests) == [("Where Danielle Darrieux is from, people speak", "English"),
                                         ("Danielle Darrieux talks", "English")]


def test_mentions_count_whole_words_only():
    assert mentions(" English English language, english.", "English") == 3
    assert mentions(" Englishman and New York", "English") == 0
    assert mentions(" in New York, New York", " New York ") == 2


def test_measure_generates_from_every_prompt(tiny_model):
    pairs = [("The capital of France is", "Rome"), ("Apple was founded by", "Steve")]
    out = measure(str(tiny_model), pairs, tokens=6, batch_size=2)
    assert 0 <= out["repeats_new_target"] <= out["says_new_target"] <= 100
    assert out["fluency"] >= 0 and len(out["examples"]) == 2
    assert out["examples"][0].startswith("The capital of France is")
