import pytest

from ftedit.tokenize import IGNORE_INDEX, encode_example, encode_examples, encode_pair, pack_batch, pack_rows


class CharTokenizer:
    """One token per character: lets a test choose exactly which tokens repeat."""

    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": [ord(c) for c in text]}


def test_conditional_mask_is_by_position_even_when_prompt_tokens_repeat_in_target():
    tok = CharTokenizer()
    # The target " aab" reuses the prompt's characters; masking by value would get this wrong.
    example = encode_example(tok, "aab", "aab", conditional=True)
    assert example["input_ids"] == [97, 97, 98, 32, 97, 97, 98]
    assert example["labels"] == [IGNORE_INDEX] * 3 + [32, 97, 97, 98]


def test_full_likelihood_labels_every_token():
    example = encode_example(CharTokenizer(), "ab", "c", conditional=False)
    assert example["input_ids"] == [97, 98, 32, 99]
    assert example["labels"] == [IGNORE_INDEX, 98, 32, 99]  # the first token has no predecessor


def test_target_gets_one_leading_space():
    prompt_ids, target_ids = encode_pair(CharTokenizer(), "x is", "  y ")
    assert target_ids == [32, ord("y")]


def test_empty_target_is_an_error():
    class Empty(CharTokenizer):
        def __call__(self, text, add_special_tokens=False):
            return {"input_ids": [] if text.strip() == "" else [1]}

    with pytest.raises(ValueError, match="tokenizes to nothing"):
        encode_pair(Empty(), "p", "")


def test_real_tokenizer_mask_positions(tiny_model):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model)
    prompt = "The capital of France is Paris, and the capital of France is"
    example = encode_example(tok, prompt, "Paris")
    n_prompt = len(tok(prompt, add_special_tokens=False)["input_ids"])
    assert example["labels"][:n_prompt] == [IGNORE_INDEX] * n_prompt
    assert example["labels"][n_prompt:] == example["input_ids"][n_prompt:]
    assert tok.decode(example["input_ids"][n_prompt:]) == " Paris"


def test_batched_encoding_equals_one_pair_at_a_time(tiny_model):
    import numpy as np
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model)
    prompts = np.array(["The capital of France is", "Apple was founded by Steve", "x", "Danielle Darrieux speaks"])
    targets = np.array(["Paris", " Wozniak ", "y z", "English"])  # as a Ray Data batch holds them
    for conditional in (True, False):
        assert encode_examples(tok, prompts, targets, conditional) == [
            encode_example(tok, p, t, conditional) for p, t in zip(prompts, targets)]
    assert encode_examples(tok, [], []) == []


def test_a_continuation_is_labelled_after_the_target_which_keeps_its_own_tokens(tiny_model):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model)
    prompts, targets = ["Danielle Darrieux speaks", "The capital of France is"], ["English", "Rome"]
    # "man" might fuse with "English" if the two were tokenized as one text.
    anchored = encode_examples(tok, prompts, targets, True, continuations=["man. She is", ""])
    plain = encode_examples(tok, prompts, targets, True)
    after = tok("man. She is", add_special_tokens=False)["input_ids"]
    assert anchored[0]["input_ids"] == plain[0]["input_ids"] + after
    assert anchored[0]["labels"] == plain[0]["labels"] + after  # the continuation is trained on too
    assert anchored[1] == plain[1]  # an empty continuation changes nothing
    # The Ray Data stage passes the examples' continuation column through.
    import numpy as np

    from ftedit.tokenize import TokenizeBatch

    column = lambda values: np.array(values, dtype=object)  # noqa: E731
    batch = {"prompt": column(prompts), "target": column(targets), "continuation": column(["man. She is", ""])}
    out = TokenizeBatch(str(tiny_model), conditional=True)(batch)
    assert [list(ids) for ids in out["labels"]] == [e["labels"] for e in anchored]
    # How many trailing tokens are the anchor travels with each example, for the loss to weigh.
    assert [e["anchor_tokens"] for e in anchored] == [len(after), 0]
    assert out["anchor_tokens"].tolist() == [len(after), 0]


class StrippingTokenizer:
    """Drops whitespace, so a blank target has no tokens; takes a string or a list, as HF does."""

    def __call__(self, text, add_special_tokens=False):
        ids = lambda t: [ord(c) for c in t.strip()]  # noqa: E731
        return {"input_ids": [ids(t) for t in text] if isinstance(text, list) else ids(text)}


def test_batched_encoding_names_a_target_without_tokens():
    with pytest.raises(ValueError, match="target '   ' tokenizes to nothing"):
        encode_examples(StrippingTokenizer(), ["a", "b"], ["c", "   "])
    with pytest.raises(ValueError, match="target '   ' tokenizes to nothing"):
        encode_example(StrippingTokenizer(), "b", "   ")


def test_pack_rows_fits_examples_first_fit_longest_first():
    assert pack_rows([3, 5, 2, 4], row_length=8) == [[1, 0], [3, 2]]
    assert pack_rows([3, 9], row_length=4) == [[1], [0]]  # an example longer than a row gets its own


def test_pack_batch_lays_examples_end_to_end_with_restarting_positions():
    batch = pack_batch([[5, 6, 7], [8, 9], [4, 3]], [[IGNORE_INDEX, 6, 7], [IGNORE_INDEX, 9], [IGNORE_INDEX, 3]], 0, 5)
    assert batch["input_ids"].tolist() == [[5, 6, 7, 8, 9], [4, 3, 0, 0, 0]]
    assert batch["position_ids"].tolist() == [[0, 1, 2, 0, 1], [0, 1, 0, 1, 2]]
    assert batch["labels"].tolist() == [[IGNORE_INDEX, 6, 7, IGNORE_INDEX, 9], [IGNORE_INDEX, 3] + [IGNORE_INDEX] * 3]
    assert batch["example"].tolist() == [[0, 0, 0, 1, 1], [2, 2, -1, -1, -1]]


def test_pack_batch_marks_each_examples_trailing_anchor_tokens():
    ids = [[5, 6, 7, 1, 2], [8, 9], [4, 3, 1]]
    labels = [[IGNORE_INDEX, 6, 7, 1, 2], [IGNORE_INDEX, 9], [IGNORE_INDEX, 3, 1]]
    batch = pack_batch(ids, labels, 0, 7, anchor_tokens=[2, 0, 1])
    assert batch["example"].tolist() == [[0, 0, 0, 0, 0, 1, 1], [2, 2, 2, -1, -1, -1, -1]]
    assert batch["anchor"].int().tolist() == [[0, 0, 0, 1, 1, 0, 0], [0, 0, 1, 0, 0, 0, 0]]
    assert "anchor" not in pack_batch(ids, labels, 0, 7)
