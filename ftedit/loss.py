"""Logits at the positions that predict labelled tokens, and the mean NLL over those tokens.

Batches are left-padded (tokenize.pad_batch), so every row's target ends at the last position.
The model is then asked for logits only over the last K positions that can carry a label
(`logits_to_keep`, accepted by transformers causal LMs): with the conditional loss that is a
handful of positions instead of the whole sequence, which skips most of the vocabulary
projection and softmax, the costliest part of a small model's step. Training and evaluation
share this code, so they score exactly the same thing.
"""

from __future__ import annotations

import torch

from ftedit.tokenize import IGNORE_INDEX


def positions_to_keep(labels: torch.Tensor) -> int:
    """K such that the last K logits predict every labelled token (left-padded batch)."""
    labelled = (labels != IGNORE_INDEX).any(dim=0).nonzero()
    if labelled.numel() == 0:
        return 1
    first = int(labelled[0])
    # A label at position 0 has no preceding token to predict it from (as in the usual shift).
    return max(1, min(labels.shape[1], labels.shape[1] - first + 1))


def target_logits(model, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits, labels) aligned so that logits[:, i] predicts labels[:, i]; shape (B, K-1, V)."""
    keep = positions_to_keep(batch["labels"])
    out = model(
        input_ids=batch["input_ids"],
        attention_mask=batch["attention_mask"],
        position_ids=batch["position_ids"],
        logits_to_keep=keep,
    )
    logits = out.logits[:, :-1]  # the last position predicts nothing in the sequence
    labels = batch["labels"][:, batch["labels"].shape[1] - keep + 1 :]
    return logits, labels


def lm_loss(model, batch: dict) -> torch.Tensor:
    """Mean negative log-likelihood over labelled tokens (the target tokens, conditional mode)."""
    logits, labels = target_logits(model, batch)
    return torch.nn.functional.cross_entropy(
        logits.reshape(-1, logits.shape[-1]).float(), labels.reshape(-1), ignore_index=IGNORE_INDEX
    )
