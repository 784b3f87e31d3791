"""Held-out perplexity of a causal LM on text, in fixed-length windows, with a progress bar."""

from __future__ import annotations

import math

import torch
from tqdm.auto import tqdm


def tokenize_documents(tokenizer, documents: list[str], max_tokens: int | None = None) -> torch.Tensor:
    """Concatenate documents (separated by EOS) into one 1-D token tensor, cut at ``max_tokens``."""
    ids: list[int] = []
    eos = tokenizer.eos_token_id
    for doc in documents:
        ids.extend(tokenizer(doc, add_special_tokens=False)["input_ids"])
        if eos is not None:
            ids.append(eos)
        if max_tokens and len(ids) >= max_tokens:
            break
    return torch.tensor(ids[:max_tokens] if max_tokens else ids, dtype=torch.long)


@torch.no_grad()
def perplexity(
    model,
    tokens: torch.Tensor,
    seq_len: int = 512,
    batch_size: int = 4,
    desc: str = "perplexity",
    progress: bool = True,
) -> float:
    """exp(mean next-token NLL) over non-overlapping windows of ``seq_len`` tokens."""
    n_windows = len(tokens) // seq_len
    if n_windows == 0:
        raise ValueError(f"need at least {seq_len} tokens for perplexity, got {len(tokens)}")
    windows = tokens[: n_windows * seq_len].view(n_windows, seq_len)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    total_nll, total_tokens = 0.0, 0
    bar = tqdm(total=n_windows * seq_len, desc=desc, unit="tok", unit_scale=True, disable=not progress, leave=False)
    for start in range(0, n_windows, batch_size):
        batch = windows[start : start + batch_size].to(device)
        logits = model(input_ids=batch, use_cache=False).logits[:, :-1].float()
        nll = torch.nn.functional.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1), reduction="sum"
        )
        total_nll += nll.item()
        total_tokens += batch[:, 1:].numel()
        bar.update(batch.numel())
    bar.close()
    model.train(was_training)
    return math.exp(total_nll / total_tokens)
