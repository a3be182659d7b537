import pytest
import torch

from ftedit.loss import check_packing, lm_loss, target_logits
from ftedit.model import load_causal_lm
from ftedit.tokenize import IGNORE_INDEX, encode_example, encode_examples, pack_batch

PAIRS = [("The capital of France is", "Paris"), ("Hi", "there you go"), ("A longer prompt about the city of light is", "Paris")]


def _reference_loss(model, examples) -> float:
    """transformers' own loss, one unpadded example at a time, weighted by labelled tokens."""
    total, count = 0.0, 0
    with torch.no_grad():
        for e in examples:
            labels = torch.tensor([e["labels"]])
            n = int((labels[:, 1:] != IGNORE_INDEX).sum())
            total += model(input_ids=torch.tensor([e["input_ids"]]), labels=labels).loss.item() * n
            count += n
    return total / count


@pytest.mark.parametrize("row_length", [1, 12, 1000])  # one example per row, some rows shared, one row
def test_packed_conditional_loss_equals_per_example_reference(tiny_model, row_length):
    model, tok = load_causal_lm(tiny_model)
    examples = [encode_example(tok, p, t) for p, t in PAIRS]
    batch = pack_batch([e["input_ids"] for e in examples], [e["labels"] for e in examples], 0, row_length)
    loss = lm_loss(model, batch)
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    assert abs(loss.item() - _reference_loss(model, examples)) < 1e-5


def test_anchor_weight_gives_continuation_anchors_their_own_mean(tiny_model):
    """With anchor_weight w the loss is mean NLL(target tokens) + w * mean NLL(anchor tokens),
    each computed here one unpacked example at a time; without it, one mean over both."""
    model, tok = load_causal_lm(tiny_model)
    examples = encode_examples(tok, [p for p, _ in PAIRS], [t for _, t in PAIRS],
                               continuations=[" She is a", "", " and so on"])
    assert [e["anchor_tokens"] > 0 for e in examples] == [True, False, True]
    batch = pack_batch([e["input_ids"] for e in examples], [e["labels"] for e in examples], 0, 12,
                       [e["anchor_tokens"] for e in examples])
    target_nll, anchor_nll = [], []
    with torch.no_grad():
        for e in examples:
            logits = model(input_ids=torch.tensor([e["input_ids"]])).logits[0, :-1]
            nll = torch.nn.functional.cross_entropy(logits, torch.tensor(e["labels"][1:]), reduction="none",
                                                    ignore_index=IGNORE_INDEX)
            labelled = [i for i, label in enumerate(e["labels"][1:]) if label != IGNORE_INDEX]
            n_anchor = e["anchor_tokens"]
            target_nll += nll[labelled[:len(labelled) - n_anchor]].tolist()
            anchor_nll += nll[labelled[len(labelled) - n_anchor:]].tolist()
        mean = lambda xs: sum(xs) / len(xs)  # noqa: E731
        for weight in (0.0, 0.5, 2.0):
            expected = mean(target_nll) + weight * mean(anchor_nll)
            assert abs(lm_loss(model, batch, anchor_weight=weight).item() - expected) < 1e-5
        pooled = mean(target_nll + anchor_nll)
        assert abs(lm_loss(model, batch).item() - pooled) < 1e-5
        assert abs(lm_loss(model, batch).item() - lm_loss(model, batch, anchor_weight=1.0).item()) > 1e-4
        # A batch with no anchors is the plain mean whatever the weight.
        plain = {k: v for k, v in batch.items() if k != "anchor"}
        assert lm_loss(model, plain, anchor_weight=2.0).item() == lm_loss(model, plain).item()


def test_full_likelihood_keeps_every_position(tiny_model):
    model, tok = load_causal_lm(tiny_model)
    examples = [encode_example(tok, p, t, conditional=False) for p, t in PAIRS]
    batch = pack_batch([e["input_ids"] for e in examples], [e["labels"] for e in examples], 0, 1000)
    with torch.no_grad():
        logits, labels, example = target_logits(model, batch)
        assert len(labels) == sum(len(e["input_ids"]) - 1 for e in examples)
        assert torch.bincount(example).tolist() == [len(e["input_ids"]) - 1 for e in examples]
        assert abs(lm_loss(model, batch).item() - _reference_loss(model, examples)) < 1e-5


def test_check_packing_accepts_a_transformers_model_and_rejects_one_that_mixes_sequences(tiny_model):
    model, _ = load_causal_lm(tiny_model)
    check_packing(model, pad_id=0)

    class IgnoresPositions(torch.nn.Module):
        """Runs the model as one ordinary causal sequence per row: packed examples see each other."""

        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, position_ids, **kwargs):
            return self.inner(**kwargs)

    with pytest.raises(RuntimeError, match="packed sequences"):
        check_packing(IgnoresPositions(model), pad_id=0)
