"""Continuation anchors: after each new fact, the unedited model's own next words, trained on too.

Conditional fine-tuning teaches "prompt -> new target" and says nothing about what comes next, so
an edited model that has stated the new fact tends to state it again ("... is English English
English ..."): the fluency loss the paper reports. With `augment.continuation_tokens = n`, an
edit's training examples (the edit prompt and its prefixed copies) go on past the new target with
the first n tokens that the *unedited* model writes after "prompt + new target", up to the first
line break, and the loss covers them too. Nothing is invented: the continuation is the model's
own greedy text on the edited context, generated once per edit before training, so the model is
taught to carry on after the new fact as it would have.
"""

from __future__ import annotations

import json

import numpy as np

from ftedit.tokenize import target_text


class Continuations:
    """Ray Data stage on request rows: adds `continuation`, the unedited model's greedy text after
    each request's prompt and new target (at most `max_new_tokens`, cut at the first line break)."""

    def __init__(self, model_path: str, dtype: str, max_new_tokens: int, batch_size: int = 32):
        from ftedit.placement import load_replica

        self.model, self.tokenizer = load_replica(model_path, dtype)
        self.max_new_tokens = max_new_tokens
        self.batch_size = batch_size

    def continue_texts(self, texts: list[str]) -> list[str]:
        from ftedit.fluency import generate_greedy

        # The model may end here (end-of-text): then there is nothing to anchor, not forced text.
        # No special tokens: the continuation is trained after "prompt + target" as tokenized for
        # training (no BOS), so it is generated in that same context.
        generated = generate_greedy(self.model, self.tokenizer, texts, self.max_new_tokens, self.batch_size,
                                    full_length=False, add_special_tokens=False)
        return [text.split("\n")[0] for text in generated]

    def __call__(self, batch: dict) -> dict:
        requests = [json.loads(text) for text in batch["request"]]
        texts = [r["prompt"] + target_text(r["target_new"]) for r in requests]
        return {**batch, "continuation": np.array(self.continue_texts(texts), dtype=object)}
