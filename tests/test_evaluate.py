import math

import pytest
import torch

from ftedit.config import EvalConfig
from ftedit.evaluate import evaluate, metric_kind, score_probes
from ftedit.model import load_causal_lm
from ftedit.requests import EditRequest

REQUESTS = [
    EditRequest("a", "The capital of France is", "France", "Rome", "Paris",
                paraphrases=("France's capital city is called",), neighbourhood=("The Louvre is in the city of",)),
    EditRequest("b", "Apple was founded by Steve", "Apple", "Wozniak", "Jobs",
                paraphrases=("The founder of Apple is Steve", "Apple's first CEO was Steve"),
                neighbourhood=("The founder of NeXT was Steve",)),
]


@pytest.fixture(scope="module")
def model_and_tokenizer(tiny_model):
    return load_causal_lm(tiny_model)


def reference_nll(model, tok, prompt, target):
    """Unbatched, unpadded: the definition of the score."""
    p = tok(prompt, add_special_tokens=False)["input_ids"]
    t = tok(" " + target, add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([p + t])).logits[0]
    logprobs = torch.log_softmax(logits.float(), -1)
    return -sum(logprobs[len(p) - 1 + i, tok_id].item() for i, tok_id in enumerate(t)) / len(t)


@pytest.mark.parametrize("row_length", [1, 16, 1000])
def test_scores_match_the_unbatched_definition_at_any_batch_size(model_and_tokenizer, row_length):
    model, tok = model_and_tokenizer
    probes = [(r.prompt, r.target_new) for r in REQUESTS] + [(p, "Paris") for p in REQUESTS[1].paraphrases]
    by_one = score_probes(model, tok, probes, batch_size=1, row_length=row_length)
    batched = score_probes(model, tok, probes, batch_size=8, row_length=row_length)
    for probe in probes:
        expected = reference_nll(model, tok, *probe)
        assert by_one[probe].nll == pytest.approx(expected, abs=1e-4)
        assert batched[probe].nll == pytest.approx(expected, abs=1e-4)
        assert batched[probe].argmax == by_one[probe].argmax
        assert len(batched[probe].correct) == len(tok(" " + probe[1], add_special_tokens=False)["input_ids"])


def test_counterfact_metrics_from_scores(model_and_tokenizer):
    model, tok = model_and_tokenizer
    result = evaluate(model, tok, REQUESTS, "counterfact", EvalConfig(batch_size=4))
    r = REQUESTS[1]
    nll = {p: (reference_nll(model, tok, p, r.target_new), reference_nll(model, tok, p, r.target_true))
           for p in (r.prompt, *r.paraphrases, *r.neighbourhood)}
    record = result.records[1]
    assert record["es"] == float(nll[r.prompt][1] > nll[r.prompt][0])
    assert record["ps"] == pytest.approx(sum(nll[p][1] > nll[p][0] for p in r.paraphrases) / 2)
    assert record["ns"] == float(nll[r.neighbourhood[0]][1] < nll[r.neighbourhood[0]][0])
    n0, t0 = nll[r.prompt]
    assert record["em"] == pytest.approx(math.exp(-n0) - math.exp(-t0), abs=1e-5)
    s = result.summary
    assert s["efficacy"] == s["es"] and s["locality"] == s["ns"] and s["n_records"] == 2
    assert s["easyedit_locality"] == 100.0  # the model agrees with itself


def test_zsre_metrics_are_token_accuracies(model_and_tokenizer):
    model, tok = model_and_tokenizer
    result = evaluate(model, tok, REQUESTS, "zsre", EvalConfig(batch_size=4))
    for key in ("efficacy", "generalization", "specificity", "edit_score"):
        assert 0.0 <= result.summary[key] <= 100.0
    assert "es" not in result.summary


def test_easyedit_locality_compares_with_the_reference(model_and_tokenizer, tiny_model):
    model, tok = model_and_tokenizer
    before = evaluate(model, tok, REQUESTS, "counterfact", EvalConfig(batch_size=4))
    other, _ = load_causal_lm(tiny_model)
    with torch.no_grad():
        for p in other.parameters():
            p.add_(torch.randn_like(p) * 0.5)
    after = evaluate(other, tok, REQUESTS, "counterfact", EvalConfig(batch_size=4), reference=before)
    assert after.summary["easyedit_locality"] < 100.0


def test_metric_kind():
    assert metric_kind("jsonl", "auto") == "counterfact"
    assert metric_kind("zsre", "auto") == "zsre"
    assert metric_kind("jsonl", "auto", missing_true=["z"]) == "zsre"
    with pytest.raises(ValueError, match="target_true; missing for case_id \\['z'\\]"):
        metric_kind("jsonl", "counterfact", missing_true=["z"])


def test_fluency_generates_greedily_from_each_edit_and_scores_entropy(model_and_tokenizer):
    from ftedit.fluency import generate_greedy
    from ftedit.metrics import ngram_entropy

    model, tok = model_and_tokenizer
    result = evaluate(model, tok, REQUESTS, "counterfact", EvalConfig(batch_size=4, fluency_tokens=12))
    for request, record in zip(REQUESTS, result.records):
        # No generation prompts in these requests: the edit prompt is continued, greedily, and
        # batching (left padding) does not change what is generated.
        alone = generate_greedy(model, tok, [request.prompt], 12, batch_size=1)[0]
        assert record["generations"] == [request.prompt + alone]
        assert record["fluency"] == pytest.approx(ngram_entropy(alone))
    assert result.summary["fluency"] == pytest.approx(100 * sum(r["fluency"] for r in result.records) / 2)
    assert "fluency" not in evaluate(model, tok, REQUESTS, "counterfact", EvalConfig(batch_size=4)).summary


def test_fluency_continues_past_the_end_of_text(tiny_model):
    """A model that would stop at once (EOS most likely everywhere) still writes the full length."""
    from ftedit.fluency import generate_greedy

    model, tok = load_causal_lm(tiny_model)
    eos = model.generation_config.eos_token_id

    def end_of_text_first(module, inputs, logits):
        logits[..., eos] += 100.0
        return logits

    model.get_output_embeddings().register_forward_hook(end_of_text_first)
    texts = generate_greedy(model, tok, ["The capital of France is", "Who wrote Hamlet?"], 8, batch_size=2)
    out = model.generate(**tok(["Who wrote Hamlet?"], return_tensors="pt"), max_new_tokens=8, do_sample=False)
    assert out[0, -1].item() == eos  # left alone, the model would stop
    assert all(len(tok(t, add_special_tokens=False)["input_ids"]) >= 4 for t in texts), texts


def test_generation_needs_no_pad_token(tiny_model):
    """GPT-J's and Llama 3's tokenizers have none; padding is done by hand with the EOS id."""
    from ftedit.fluency import generate_greedy

    model, tok = load_causal_lm(tiny_model)
    prompts = ["The capital of France is", "Who wrote the play Hamlet, and when?"]
    with_pad = generate_greedy(model, tok, prompts, 6, batch_size=2)
    tok.pad_token = None
    assert tok.pad_token_id is None
    assert generate_greedy(model, tok, prompts, 6, batch_size=2) == with_pad
    assert generate_greedy(model, tok, prompts[1:], 6, batch_size=1) == with_pad[1:]


def test_portability_from_multi_hop_questions(model_and_tokenizer):
    model, tok = model_and_tokenizer
    request = EditRequest("m:0", "Ellie Kemper is a citizen of", "Ellie Kemper", "Croatia", "United States",
                          portability=("Who is the head of state of the country Ellie Kemper is a citizen of?",
                                       "Who leads the country of Ellie Kemper's citizenship?"),
                          portability_new="Kolinda Grabar", portability_true="Donald Trump")
    plain = EditRequest("p:0", "The capital of France is", "France", "Rome", "Paris")
    result = evaluate(model, tok, [request, plain], "counterfact", EvalConfig(batch_size=3))
    wins = [reference_nll(model, tok, q, "Kolinda Grabar") < reference_nll(model, tok, q, "Donald Trump")
            for q in request.portability]
    assert result.records[0]["portability"] == pytest.approx(sum(wins) / 2)
    assert "portability" not in result.records[1]
    assert result.summary["portability"] == pytest.approx(100 * sum(wins) / 2)
    zsre = evaluate(model, tok, [request], "zsre", EvalConfig(batch_size=3))
    assert 0.0 <= zsre.records[0]["portability"] <= 1.0
