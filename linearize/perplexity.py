"""Held-out perplexity of a causal LM on text, in fixed-length windows, overall and by position.

A model that is good at 512 tokens of context can still break beyond the length it was trained at;
the perplexity of the tokens predicted at positions 1024-2048 of a 2048-token window shows it where
the overall number hides it. Position ``i`` is the index of the last token of the context (the
prediction of token ``i + 1`` sees ``i + 1`` tokens).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm

# Position buckets of every perplexity report: [start, end) in tokens of context.
POSITION_BUCKETS = ((0, 64), (64, 256), (256, 1024), (1024, 2048), (2048, 8192))
# Context lengths the main job and the recovery benchmark evaluate at.
EVAL_LENGTHS = (512, 2048)
# Tokens per forward pass when batching windows (memory of logits and attention on a CPU).
_TOKENS_PER_BATCH = 2048


def bucket_name(start: int, end: int) -> str:
    return f"{start}-{end}"


@dataclass
class PerplexityReport:
    """Perplexity over ``tokens`` predicted tokens in windows of ``seq_len``, and per position bucket."""

    seq_len: int
    tokens: int
    overall: float
    by_position: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"seq_len": self.seq_len, "tokens": self.tokens, "overall": self.overall,
                "by_position": dict(self.by_position)}


def tokenize_documents(tokenizer, documents, max_tokens: int | None = None) -> torch.Tensor:
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
def perplexity_report(
    model,
    tokens: torch.Tensor,
    seq_len: int = 512,
    batch_size: int | None = None,
    desc: str = "perplexity",
    progress: bool = True,
) -> PerplexityReport:
    """exp(mean next-token NLL) over non-overlapping windows of ``seq_len`` tokens, overall and for
    every bucket of :data:`POSITION_BUCKETS` that starts inside the window."""
    n_windows = len(tokens) // seq_len
    if n_windows == 0:
        raise ValueError(f"need at least {seq_len} tokens for perplexity, got {len(tokens)}")
    batch_size = batch_size or max(1, _TOKENS_PER_BATCH // seq_len)
    windows = tokens[: n_windows * seq_len].view(n_windows, seq_len)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    nll_by_position = torch.zeros(seq_len - 1, dtype=torch.float64)
    bar = tqdm(total=n_windows * seq_len, desc=desc, unit="tok", unit_scale=True, disable=not progress, leave=False)
    for start in range(0, n_windows, batch_size):
        batch = windows[start : start + batch_size].to(device)
        logits = model(input_ids=batch, use_cache=False).logits[:, :-1].float()
        nll = torch.nn.functional.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1), reduction="none"
        ).view(batch.shape[0], -1)
        nll_by_position += nll.sum(dim=0).double().cpu()
        bar.update(batch.numel())
    bar.close()
    model.train(was_training)

    def ppl(lo: int, hi: int) -> float:
        return math.exp(nll_by_position[lo:hi].sum().item() / (n_windows * (hi - lo)))

    buckets = {bucket_name(lo, hi): ppl(lo, min(hi, seq_len - 1)) for lo, hi in POSITION_BUCKETS if lo < seq_len - 1}
    return PerplexityReport(seq_len, n_windows * (seq_len - 1), ppl(0, seq_len - 1), buckets)


def perplexity(model, tokens: torch.Tensor, seq_len: int = 512, batch_size: int | None = None,
               desc: str = "perplexity", progress: bool = True) -> float:
    """exp(mean next-token NLL) over non-overlapping windows of ``seq_len`` tokens."""
    return perplexity_report(model, tokens, seq_len, batch_size, desc, progress).overall


def length_stability(student: PerplexityReport, teacher: PerplexityReport, train_len: int) -> tuple[float, float] | None:
    """(student / teacher perplexity over the positions inside the training length, the worst bucket's ratio
    beyond it). A model that holds past the length it was trained at has the second no larger than the first.
    Buckets that straddle ``train_len`` count on neither side; None when one side has no bucket."""

    spans = {bucket_name(lo, hi): (lo, hi) for lo, hi in POSITION_BUCKETS}

    def span(name: str) -> tuple[int, int]:
        lo, hi = spans[name]
        return lo, min(hi, student.seq_len - 1)

    inside = [name for name in student.by_position if span(name)[1] <= train_len]
    beyond = [name for name in student.by_position if span(name)[0] >= train_len]
    if not inside or not beyond:
        return None
    widths = {name: span(name)[1] - span(name)[0] for name in inside}
    log_ratio = sum(w * math.log(student.by_position[n] / teacher.by_position[n]) for n, w in widths.items())
    inside_ratio = math.exp(log_ratio / sum(widths.values()))
    return inside_ratio, max(student.by_position[n] / teacher.by_position[n] for n in beyond)
