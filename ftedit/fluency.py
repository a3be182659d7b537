"""Fluency of the edited model: greedy generations from each edit's subject, scored by n-gram entropy.

ROME/MEMIT measure it on the `generation_prompts` of CounterFact records; data without them
(zsRE, EasyEdit-style CounterFact, plain JSONL) uses the edit prompt itself, which names the
subject. A model that has been over-trained on its edits tends to repeat the new target
("English English English ..."), which the entropy exposes while the edit score does not.
"""

from __future__ import annotations

import logging
import time

import torch

from ftedit.model import pad_token_id
from ftedit.placement import input_device
from ftedit.edit_request import EditRequest

log = logging.getLogger(__name__)


def generation_prompts(request: EditRequest, per_edit: int) -> list[str]:
    return list(request.generation_prompts or (request.prompt,))[:per_edit]


@torch.no_grad()
def generate_greedy(model, tokenizer, prompts: list[str], max_new_tokens: int, batch_size: int,
                    full_length: bool = True, add_special_tokens: bool = True) -> list[str]:
    """Greedy continuations (the generated text only) of every prompt, in left-padded batches.

    `full_length`: exactly `max_new_tokens` per prompt, never stopping at end-of-text.
    `add_special_tokens`: False to generate in the context training and scoring use (no BOS),
    when the text is to be trained on; True (the tokenizer's default) for fluency, as ROME does.
    """
    device = input_device(model)
    pad = pad_token_id(tokenizer)
    model.eval()
    texts: list[str] = []
    started = time.perf_counter()
    for start in range(0, len(prompts), batch_size):
        ids = tokenizer(prompts[start : start + batch_size], add_special_tokens=add_special_tokens)["input_ids"]
        batch = _left_padded(ids, pad, device)
        # Exactly `max_new_tokens` per prompt, as ROME's generate_fast: an instruction-tuned model
        # ends its answer to a question at once, and an empty text would score as no fluency.
        out = model.generate(**batch, max_new_tokens=max_new_tokens,
                             min_new_tokens=max_new_tokens if full_length else None,
                             do_sample=False, pad_token_id=pad, use_cache=True)
        texts += tokenizer.batch_decode(out[:, batch["input_ids"].shape[1] :], skip_special_tokens=True)
    log.info("  generated %d continuations of %d tokens (%.0f s)", len(prompts), max_new_tokens, time.perf_counter() - started)
    return texts


def _left_padded(rows: list[list[int]], pad: int, device) -> dict:
    """Left-padded ids and attention mask, so generation continues from the last position of
    every row. Padded by hand: many causal-LM tokenizers (GPT-J, Llama 3) have no pad token."""
    width = max(len(row) for row in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, width - len(row):] = torch.tensor(row, dtype=torch.long)
        mask[i, width - len(row):] = 1
    return {"input_ids": ids.to(device), "attention_mask": mask.to(device)}
