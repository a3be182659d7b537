"""Save a Hugging Face checkpoint with random weights, from a model's config.json and a tokenizer.

For speed measurements on a host that cannot fetch the real weights (a GPU machine with no model
hub): a training step costs the same whatever the weights hold, so `throughput.py` and the job
measure the model's real tokens/s on such a checkpoint; edit scores on it mean nothing.

    python benchmarks/random_checkpoint.py --model-config benchmarks/model_configs/smollm2-135m.json \
        --tokenizer TOKENIZER_DIR --out DIR [--seed 0]
"""

import argparse
from pathlib import Path


def random_model(model_config: str | Path, seed: int = 0, device="cpu", dtype: str | None = None,
                 attention: str | None = None):
    """A causal LM built from `model_config` with seeded random weights, allocated and initialised
    on `device` (never in host memory when that is an accelerator); `dtype` None: the config's."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(model_config)
    torch.manual_seed(seed)
    with torch.device(device):
        return AutoModelForCausalLM.from_config(config, dtype=getattr(torch, dtype) if dtype else None,
                                                attn_implementation=attention)


def save_random_checkpoint(model_config: str | Path, tokenizer_dir: str | Path, out_dir: str | Path, seed: int = 0) -> Path:
    from transformers import AutoTokenizer

    model = random_model(model_config, seed)
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    if len(tokenizer) > model.config.vocab_size:
        raise ValueError(f"{tokenizer_dir}: the tokenizer has {len(tokenizer)} tokens, more than the "
                         f"{model.config.vocab_size} of {model_config}'s vocab_size")
    out_dir = Path(out_dir)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-config", required=True, help="a Hugging Face config.json")
    parser.add_argument("--tokenizer", required=True, help="a directory holding the model's tokenizer files")
    parser.add_argument("--out", required=True)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    print(save_random_checkpoint(args.model_config, args.tokenizer, args.out, args.seed))


if __name__ == "__main__":
    main()
