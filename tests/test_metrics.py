import math

import pytest

from ftedit.metrics import (
    ngram_entropy,
    ProbeScore,
    accuracy_record,
    agreement,
    counterfact_record,
    easyedit_locality_record,
    harmonic_mean,
    portability_record,
    summarize,
)


def S(nll=0.0, correct=(True,), argmax=(0,)):
    return ProbeScore(nll=nll, correct=tuple(correct), argmax=tuple(argmax))


def pair(nll_new, nll_true):
    return (S(nll_new), S(nll_true))


# ---------------------------------------------------------------- counterfact

def test_counterfact_single_prompt_hand_computed():
    r = counterfact_record([pair(0.5, 1.0)], [pair(2.0, 1.0)], [pair(0.5, 1.0)])
    assert r["es"] == 1.0
    assert r["em"] == pytest.approx(math.exp(-0.5) - math.exp(-1.0))
    assert r["em"] == pytest.approx(0.23865, abs=1e-5)
    assert r["ps"] == 0.0
    assert r["pm"] == pytest.approx(math.exp(-2.0) - math.exp(-1.0))
    # neighbourhood direction reversed: new target more likely -> failure
    assert r["ns"] == 0.0
    assert r["nm"] == pytest.approx(math.exp(-1.0) - math.exp(-0.5))
    assert r["nm"] == pytest.approx(-0.23865, abs=1e-5)
    assert all(isinstance(v, float) for v in r.values())


def test_counterfact_neighbourhood_success_when_true_more_likely():
    r = counterfact_record([pair(0.5, 1.0)], [], [pair(3.0, 0.2), pair(0.1, 0.2)])
    assert r["ns"] == 0.5
    expected = ((math.exp(-0.2) - math.exp(-3.0)) + (math.exp(-0.2) - math.exp(-0.1))) / 2
    assert r["nm"] == pytest.approx(expected)


def test_counterfact_ties_are_failures():
    r = counterfact_record([pair(1.0, 1.0)], [pair(1.0, 1.0)], [pair(1.0, 1.0)])
    assert (r["es"], r["ps"], r["ns"]) == (0.0, 0.0, 0.0)
    assert (r["em"], r["pm"], r["nm"]) == (0.0, 0.0, 0.0)


def test_counterfact_empty_groups_give_none():
    r = counterfact_record([pair(0.5, 1.0)], [], [])
    assert r["ps"] is None and r["pm"] is None
    assert r["ns"] is None and r["nm"] is None
    assert r["es"] == 1.0
    assert set(r) == {"es", "ps", "ns", "em", "pm", "nm"}


def test_counterfact_mean_over_prompts():
    r = counterfact_record([pair(0.5, 1.0), pair(1.0, 0.5), pair(0.1, 0.2)], [], [])
    assert r["es"] == pytest.approx(2 / 3)


# ---------------------------------------------------------------- zsRE

def test_accuracy_record_multi_token():
    eff = [S(correct=(True, False, True, True))]  # 0.75
    gen = [S(correct=(True, False)), S(correct=(True, True, True))]  # (0.5 + 1) / 2
    loc = [S(correct=(False,)), S(correct=(True, True, False))]  # (0 + 2/3) / 2
    r = accuracy_record(eff, gen, loc)
    assert r["efficacy"] == pytest.approx(0.75)
    assert r["generalization"] == pytest.approx(0.75)  # pooled tokens would give 4/5
    assert r["specificity"] == pytest.approx(1 / 3)  # pooled tokens would give 2/4
    assert set(r) == {"efficacy", "generalization", "specificity"}


def test_accuracy_record_empty_group():
    r = accuracy_record([S(correct=(True,))], [], [])
    assert r == {"efficacy": 1.0, "generalization": None, "specificity": None}


# ---------------------------------------------------------------- EasyEdit locality

def test_agreement():
    pre = S(argmax=(5, 6, 7, 8))
    post = S(argmax=(5, 0, 7, 0))
    assert agreement(pre, post) == 0.5
    assert agreement(pre, pre) == 1.0


def test_agreement_length_mismatch():
    with pytest.raises(ValueError):
        agreement(S(argmax=(1, 2)), S(argmax=(1, 2, 3)))


def test_easyedit_locality_record():
    pairs = [(S(argmax=(1, 2)), S(argmax=(1, 3))), (S(argmax=(4,)), S(argmax=(4,)))]
    assert easyedit_locality_record(pairs) == pytest.approx(0.75)
    assert easyedit_locality_record([]) is None


# ---------------------------------------------------------------- harmonic mean

def test_harmonic_mean():
    assert harmonic_mean([100, 50, 50]) == pytest.approx(60.0)
    assert harmonic_mean([2.0]) == 2.0
    assert harmonic_mean([1, 0, 3]) == 0.0
    assert harmonic_mean([100, None, 50, None]) == pytest.approx(200 / 3)
    with pytest.raises(ValueError):
        harmonic_mean([])
    with pytest.raises(ValueError):
        harmonic_mean([None, None])


# ---------------------------------------------------------------- summarize

def test_summarize_counterfact_per_record_averaging():
    # record A: 1 rewrite prompt, success; record B: 3 rewrite prompts, all fail.
    a = counterfact_record([pair(0.5, 1.0)], [pair(0.5, 1.0)], [pair(1.0, 0.5)])
    b = counterfact_record([pair(1.0, 0.5)] * 3, [pair(0.5, 1.0)], [pair(0.5, 1.0)] * 2)
    s = summarize([a, b], "counterfact")
    # MEMIT: per-record mean then mean over records = (1 + 0) / 2 = 50,
    # pooled prompts would give 1/4 = 25.
    assert s["es"] == pytest.approx(50.0)
    assert s["ps"] == pytest.approx(100.0)
    assert s["ns"] == pytest.approx(50.0)  # pooled would be 1/3
    d = math.exp(-0.5) - math.exp(-1.0)
    assert s["em"] == pytest.approx(100 * (d + -d) / 2)
    assert s["pm"] == pytest.approx(100 * d)
    assert s["nm"] == pytest.approx(100 * (d + -d) / 2)
    assert s["efficacy"] == s["es"]
    assert s["generalization"] == s["ps"]
    assert s["locality"] == s["ns"]
    assert s["edit_score"] == pytest.approx(3 / (1 / 50 + 1 / 100 + 1 / 50))  # 60
    assert s["edit_score"] == pytest.approx(60.0)
    assert s["n_records"] == s["n_locality"] == 2
    assert "easyedit_locality" not in s


def test_summarize_counterfact_none_groups_and_easyedit():
    a = counterfact_record([pair(0.5, 1.0)], [], [pair(1.0, 0.5)])
    a["easyedit_locality"] = 1.0
    b = counterfact_record([pair(0.5, 1.0)], [], [pair(0.5, 1.0)])
    b["easyedit_locality"] = 0.5
    s = summarize([a, b], "counterfact")
    assert s["ps"] is None and s["pm"] is None and s["generalization"] is None
    assert s["easyedit_locality"] == pytest.approx(75.0)
    # hmean(100, 50) over the non-None ones
    assert s["edit_score"] == pytest.approx(200 / 3)


def test_summarize_skips_none_per_key():
    a = {"es": 1.0, "ps": None, "ns": 0.0, "em": 0.1, "pm": None, "nm": 0.0}
    b = {"es": 0.0, "ps": 0.5, "ns": 1.0, "em": 0.3, "pm": 0.2, "nm": 0.0}
    s = summarize([a, b], "counterfact")
    assert s["ps"] == pytest.approx(50.0)
    assert s["pm"] == pytest.approx(20.0)
    assert s["em"] == pytest.approx(20.0)


def test_summarize_zsre():
    a = accuracy_record([S(correct=(True, True))], [S(correct=(True, False))], [S(correct=(True,))])
    b = accuracy_record([S(correct=(True, True, True))], [S(correct=(False, True))], [])
    s = summarize([a, b], "zsre")
    assert s["efficacy"] == pytest.approx(100.0)
    assert s["generalization"] == pytest.approx(50.0)
    assert s["specificity"] == pytest.approx(100.0)  # b's None is skipped
    assert s["locality"] == s["specificity"]
    assert s["edit_score"] == pytest.approx(3 / (1 / 100 + 1 / 50 + 1 / 100))
    assert s["edit_score"] == pytest.approx(75.0)
    assert s["n_records"] == 2 and s["n_locality"] == 1  # the report says locality covers 1 of 2


def test_summarize_zero_locality_gives_zero_score():
    a = accuracy_record([S(correct=(True,))], [S(correct=(True,))], [S(correct=(False,))])
    s = summarize([a], "zsre")
    assert s["locality"] == 0.0
    assert s["edit_score"] == 0.0


def test_summarize_unknown_kind():
    with pytest.raises(ValueError):
        summarize([], "mquake")


def test_ngram_entropy_hand_computed():
    # "a b a b": bigrams (a b) x2, (b a) x1 -> H2 = -(2/3 log2 2/3 + 1/3 log2 1/3);
    # trigrams (a b a), (b a b) -> H3 = 1 bit. Weighted 2/3 and 4/3, then averaged.
    h2 = -(2 / 3 * math.log2(2 / 3) + 1 / 3 * math.log2(1 / 3))
    assert ngram_entropy("a b a b") == pytest.approx((2 / 3 * h2 + 4 / 3 * 1.0) / 2)
    assert ngram_entropy("English English English English English") == 0.0  # a degenerate edit
    assert ngram_entropy("one") == 0.0
    fluent = "Danielle Darrieux was a French actress, singer and dancer who appeared in many films."
    assert ngram_entropy(fluent) > ngram_entropy("French French French, French French French.")


def test_summarize_averages_fluency_without_scoring_it():
    records = [
        {"es": 1.0, "ps": 1.0, "ns": 1.0, "em": 0.0, "pm": 0.0, "nm": 0.0, "fluency": 5.0},
        {"es": 1.0, "ps": 1.0, "ns": 1.0, "em": 0.0, "pm": 0.0, "nm": 0.0, "fluency": 6.0},
    ]
    s = summarize(records, "counterfact")
    assert s["fluency"] == pytest.approx(550.0)  # x100, as MEMIT reports generation entropy
    assert s["edit_score"] == pytest.approx(100.0)


def test_portability_compares_answers_or_falls_back_to_token_accuracy():
    # Three multi-hop questions: the new answer wins the first and the third (ties are failures).
    new = [S(1.0, (True, False)), S(2.0, (False, False)), S(0.5, (True, True))]
    true = [S(1.5), S(2.0), S(3.0)]
    assert portability_record(new, true) == pytest.approx(2 / 3)
    assert portability_record(new) == pytest.approx((0.5 + 0.0 + 1.0) / 3)
    assert portability_record([]) is None
    with pytest.raises(ValueError, match="2 true-answer scores"):
        portability_record(new, true[:2])


def test_summarize_reports_portability_only_where_records_carry_it():
    base = {"es": 1.0, "ps": 1.0, "ns": 0.5, "em": 0.0, "pm": 0.0, "nm": 0.0}
    s = summarize([{**base, "portability": 1 / 3}, base, {**base, "portability": 0.0}], "counterfact")
    assert s["portability"] == pytest.approx(100 / 6)  # mean over the two records that have questions
    assert s["edit_score"] == pytest.approx(harmonic_mean([100.0, 100.0, 50.0]))  # not part of the score
    assert "portability" not in summarize([base], "counterfact")
