"""Training examples -> token ids and labels. The only module that knows about -100.

Prompt and target are tokenized separately and concatenated (target as " " + target), exactly as
the evaluation scores them, so the boundary between prompt and target is a *position*, known
without looking at token values. A prompt whose tokens also occur in the target is therefore
masked correctly.
"""

from __future__ import annotations

import numpy as np

IGNORE_INDEX = -100  # positions with this label contribute nothing to the loss


def target_text(target: str) -> str:
    """Targets follow the prompt after one space, as in ROME/MEMIT evaluation."""
    return " " + target.strip()


def encode_pair(tokenizer, prompt: str, target: str) -> tuple[list[int], list[int]]:
    """Token ids of the prompt and of the target, without special tokens."""
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    target_ids = tokenizer(target_text(target), add_special_tokens=False)["input_ids"]
    if not target_ids:
        raise ValueError(f"target {target!r} tokenizes to nothing")
    return prompt_ids, target_ids


def encode_example(tokenizer, prompt: str, target: str, conditional: bool = True) -> dict[str, list[int]]:
    prompt_ids, target_ids = encode_pair(tokenizer, prompt, target)
    input_ids = prompt_ids + target_ids
    if conditional:
        labels = [IGNORE_INDEX] * len(prompt_ids) + list(target_ids)
    else:
        # Every token but the first, which has nothing before it to be predicted from.
        labels = [IGNORE_INDEX] + list(input_ids[1:])
    return {"input_ids": input_ids, "labels": labels}


class TokenizeBatch:
    """Ray Data `map_batches` stage: a batch of examples -> `input_ids`, `labels` (ragged lists).

    A class so each Ray worker loads the tokenizer once, not once per batch.
    """

    def __init__(self, tokenizer_path: str, conditional: bool):
        from transformers import AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(tokenizer_path)
        self.conditional = conditional

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        encoded = [
            encode_example(self.tokenizer, p, t, self.conditional) for p, t in zip(batch["prompt"], batch["target"])
        ]
        out = dict(batch)
        out["input_ids"] = _ragged([e["input_ids"] for e in encoded])
        out["labels"] = _ragged([e["labels"] for e in encoded])
        out["n_tokens"] = np.array([len(e["input_ids"]) for e in encoded], dtype=np.int64)
        return out


def _ragged(rows: list[list[int]]) -> np.ndarray:
    array = np.empty(len(rows), dtype=object)
    for i, row in enumerate(rows):
        array[i] = np.asarray(row, dtype=np.int64)
    return array


def pad_batch(input_ids, labels, pad_id: int):
    """Left-pad ragged rows into tensors: input_ids, attention_mask, position_ids, labels.

    Left padding puts every target at the end of its row, so the loss needs logits for the last
    few positions only (loss.py). position_ids count real tokens, so padding does not shift
    positions: a row scores the same padded or alone.
    """
    import torch

    width = max(len(row) for row in input_ids)
    n = len(input_ids)
    ids = torch.full((n, width), pad_id, dtype=torch.long)
    mask = torch.zeros((n, width), dtype=torch.long)
    lab = torch.full((n, width), IGNORE_INDEX, dtype=torch.long)
    for i, (row_ids, row_labels) in enumerate(zip(input_ids, labels)):
        k = len(row_ids)
        ids[i, width - k :] = torch.as_tensor(np.asarray(row_ids, dtype=np.int64))
        mask[i, width - k :] = 1
        lab[i, width - k :] = torch.as_tensor(np.asarray(row_labels, dtype=np.int64))
    positions = (mask.cumsum(dim=1) - 1).clamp(min=0)
    return {"input_ids": ids, "attention_mask": mask, "position_ids": positions, "labels": lab}
