"""Tiny random models of every supported family, built locally from configs."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import (
    Gemma2Config,
    Gemma2ForCausalLM,
    Gemma3ForCausalLM,
    Gemma3TextConfig,
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
    Qwen3Config,
    Qwen3ForCausalLM,
)

COMMON = dict(
    vocab_size=128,
    hidden_size=96,
    intermediate_size=96,
    num_hidden_layers=3,
    num_attention_heads=6,
    num_key_value_heads=2,
    head_dim=16,
    max_position_embeddings=512,
    pad_token_id=0,
    bos_token_id=1,
    eos_token_id=2,
)

FAMILIES = {
    "llama": (LlamaConfig, LlamaForCausalLM, {}),
    "mistral": (MistralConfig, MistralForCausalLM, {"sliding_window": None}),
    "qwen2": (Qwen2Config, Qwen2ForCausalLM, {}),
    "qwen3": (Qwen3Config, Qwen3ForCausalLM, {}),
    "gemma2": (Gemma2Config, Gemma2ForCausalLM, {"sliding_window": 256, "query_pre_attn_scalar": 16}),
    "gemma3_text": (Gemma3TextConfig, Gemma3ForCausalLM, {"sliding_window": 256, "query_pre_attn_scalar": 16}),
}


def tiny_model(family: str = "llama", seed: int = 0, **overrides):
    """A small random ``*ForCausalLM`` of ``family`` in eval mode (fp32, eager attention)."""
    config_cls, model_cls, extra = FAMILIES[family]
    torch.manual_seed(seed)
    config = config_cls(**{**COMMON, **extra, **overrides})
    model = model_cls(config)
    model.config._attn_implementation = "eager"
    return model.eval()


def save_word_tokenizer(path: Path) -> None:
    """A minimal word-level tokenizer (64 ids: <pad> <s> </s> w0..w59 <unk>) saved into ``path``."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, **{f"w{i}": i + 3 for i in range(60)}, "<unk>": 63}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>", unk_token="<unk>"
    ).save_pretrained(path)


def save_tiny_teacher(path: Path, family: str = "llama", seed: int = 0, **overrides) -> Path:
    """A loadable teacher directory: a tiny random ``family`` model and a word-level tokenizer."""
    path = Path(path)
    tiny_model(family, seed=seed, **overrides).save_pretrained(path)
    save_word_tokenizer(path)
    return path


def word_text(n_words: int, seed: int = 0, paragraph_every: int = 40) -> str:
    """Text in the word tokenizer's vocabulary (w0..w59), a blank line every ``paragraph_every`` words."""
    import random

    rng = random.Random(seed)
    words = []
    for i in range(n_words):
        words.append(f"w{(i * 7 + rng.randrange(3)) % 60}")
        if (i + 1) % paragraph_every == 0:
            words.append("\n\n")
    return " ".join(words).replace(" \n\n ", "\n\n")
