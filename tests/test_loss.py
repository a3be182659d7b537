import torch

from ftedit.loss import lm_loss, positions_to_keep
from ftedit.model import load_causal_lm
from ftedit.tokenize import IGNORE_INDEX, encode_example, pad_batch

PAIRS = [("The capital of France is", "Paris"), ("Hi", "there you go"), ("A longer prompt about the city of light is", "Paris")]


def test_left_padded_conditional_loss_equals_per_example_reference(tiny_model):
    model, tok = load_causal_lm(tiny_model)
    examples = [encode_example(tok, p, t) for p, t in PAIRS]
    batch = pad_batch([e["input_ids"] for e in examples], [e["labels"] for e in examples], pad_id=0)
    loss = lm_loss(model, batch)
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    total, count = 0.0, 0
    with torch.no_grad():
        for e in examples:  # transformers' own loss, one unpadded example at a time
            labels = torch.tensor([e["labels"]])
            n = int((labels != IGNORE_INDEX).sum())
            total += model(input_ids=torch.tensor([e["input_ids"]]), labels=labels).loss.item() * n
            count += n
    assert abs(loss.item() - total / count) < 1e-5


def test_full_likelihood_keeps_every_position(tiny_model):
    model, tok = load_causal_lm(tiny_model)
    examples = [encode_example(tok, p, t, conditional=False) for p, t in PAIRS]
    batch = pad_batch([e["input_ids"] for e in examples], [e["labels"] for e in examples], pad_id=0)
    width = batch["labels"].shape[1]
    assert positions_to_keep(batch["labels"]) == width  # every position of the longest row
    with torch.no_grad():
        expected = sum(
            model(input_ids=torch.tensor([e["input_ids"]]), labels=torch.tensor([e["labels"]])).loss.item()
            * (len(e["input_ids"]) - 1) for e in examples
        ) / sum(len(e["input_ids"]) - 1 for e in examples)
        assert abs(lm_loss(model, batch).item() - expected) < 1e-5


def test_keep_covers_the_longest_target():
    labels = torch.tensor([[IGNORE_INDEX, IGNORE_INDEX, 5, 6], [IGNORE_INDEX, IGNORE_INDEX, IGNORE_INDEX, 7]])
    assert positions_to_keep(labels) == 3
