"""A tiny randomly initialised Llama with its own byte-level BPE tokenizer, built offline.

For tests and smoke runs: the whole pipeline runs on it in seconds, and nothing is downloaded.
Deterministic: the same seed gives the same weights and tokenizer.
"""

from __future__ import annotations

from pathlib import Path

# Text the tokenizer's merges are learned from; byte-level BPE still encodes any other text.
_CORPUS = (
    "The mother tongue of Danielle Darrieux is French. The capital of France is Paris. "
    "Toko Yasuda plays the guitar. Michel Rocard is a native speaker of French. "
    "Where is the Eiffel Tower? It is in Paris, the city of France. The official language of "
    "Italy is Italian. What is the twin city of Lyon? It is Beijing. Apple was founded by Steve Jobs. "
    "Therefore, because I think you are right, the answer is English, German, Spanish or Japanese."
)


def build_tiny_model(out_dir: str | Path, seed: int = 0, vocab_size: int = 512) -> Path:
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    out_dir = Path(out_dir)
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator([_CORPUS] * 4, trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe, bos_token="<|endoftext|>", eos_token="<|endoftext|>", pad_token="<|endoftext|>"
    )
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        tie_word_embeddings=True,
        # Wider than the usual 0.02: with 64 dimensions and tied embeddings, 0.02 caps every logit
        # near 1, so LoRA could never make any answer confident and edits would barely register.
        initializer_range=0.2,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir
