"""Logits at the positions that predict labelled tokens, and the mean NLL over those tokens.

Batches are packed rows (tokenize.pack_batch). The model is asked for logits only where the
next token carries a label (`logits_to_keep` as a boolean mask, which transformers causal LMs
accept): with the conditional loss that is a few positions per example instead of every one,
which skips most of the vocabulary projection, the costliest part of a small model's step.
Training and evaluation share this code, so they score exactly the same thing.
"""

from __future__ import annotations

import torch

from ftedit.placement import input_device
from ftedit.tokenize import IGNORE_INDEX, pack_batch


def target_logits(model, batch: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(logits (N, V), labels (N,), example (N,)): one entry per labelled token, in row order."""
    labels = batch["labels"]
    is_label = _is_label(labels)
    predicts = torch.zeros_like(is_label)
    predicts[:, :-1] = is_label[:, 1:]  # position t predicts token t + 1
    out = model(
        input_ids=batch["input_ids"],
        position_ids=batch["position_ids"],
        attention_mask=None,  # packed rows: the block structure comes from the position ids
        use_cache=False,  # a cache would also switch off the packed-sequence masks
        logits_to_keep=predicts,
    )
    return out.logits, labels[is_label], batch["example"][is_label]


def _is_label(labels: torch.Tensor) -> torch.Tensor:
    """Where a token is scored: labelled, and not first in its row (nothing predicts that one)."""
    is_label = labels != IGNORE_INDEX
    is_label[:, 0] = False
    return is_label


def lm_loss(model, batch: dict, anchor_weight: float | None = None) -> torch.Tensor:
    """Mean negative log-likelihood over labelled tokens (the target tokens, conditional mode).

    With `anchor_weight` and a batch that marks continuation anchors (`anchor`, pack_batch), the
    anchor tokens get their own mean instead: mean NLL of the other labelled tokens + anchor_weight
    x mean NLL of the anchor tokens. In one pooled mean, 8 anchor tokens after a 2-token target
    would leave the target a fifth of its example's gradient; apart, it keeps all of it.
    """
    logits, labels, _ = target_logits(model, batch)
    if anchor_weight is None or "anchor" not in batch:
        return torch.nn.functional.cross_entropy(logits.float(), labels)
    nll = torch.nn.functional.cross_entropy(logits.float(), labels, reduction="none")
    is_anchor = batch["anchor"][_is_label(batch["labels"])]  # aligned with target_logits' labels
    loss = nll[~is_anchor].mean() if bool((~is_anchor).any()) else nll.sum() * 0
    if bool(is_anchor.any()):
        loss = loss + anchor_weight * nll[is_anchor].mean()
    return loss


@torch.no_grad()
def check_packing(model, pad_id: int) -> None:
    """Fail clearly if this model does not attend block-diagonally to packed rows.

    Transformers models built on its masking utilities do; a model with its own attention code
    (e.g. remote code) might silently let packed examples see each other, which would corrupt
    both training and scores. Two short sequences, scored packed and alone, must agree.
    """
    sequences = [[11, 12, 13, 14], [21, 22, 23]]
    labels = [[IGNORE_INDEX, 12, 13, 14], [IGNORE_INDEX, 22, 23]]
    device = input_device(model)

    def logits(rows, row_labels):
        batch = {k: v.to(device) for k, v in pack_batch(rows, row_labels, pad_id, row_length=64).items()}
        return target_logits(model, batch)[0]

    packed = logits(sequences, labels)
    alone = torch.cat([logits([s], [l]) for s, l in zip(sequences, labels)])
    tolerance = 1e-3 if packed.dtype == torch.float32 else 5e-2  # bf16/fp16 kernels differ by width
    if packed.shape != alone.shape or not torch.allclose(packed.float(), alone.float(), atol=tolerance, rtol=tolerance):
        raise RuntimeError(
            f"{type(model).__name__} does not keep packed sequences apart (position ids restarting at 0 "
            "with no attention mask); ftedit needs a transformers model that uses its masking utilities"
        )
