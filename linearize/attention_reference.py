"""Plain PyTorch reference of the hybrid attention math (SPEC §2).

These functions are the specification: the Triton kernels in ``linearize.kernels`` are
optimisations of them and are tested against them. Two forms of each op exist:

* a chunked parallel form (training and prefill), numerically stable because cumulative
  log-gates only ever enter as differences inside a chunk (every exponent is <= 0);
* a step-by-step recurrent form (decoding), used to check the chunked form.

Shapes (GQA without copying keys/values per query head):
    queries          (B, Hkv, G, T, D)   G = H / Hkv query heads per key/value head
    keys / values    (B, Hkv, T, D) / (B, Hkv, T, Dv)
    log-gates        (B, Hkv, T, F) per key dimension, or (B, Hkv, T, 1) per head; values <= 0
    linear state S   (B, Hkv, F, Dv)
"""

from __future__ import annotations

import math

import torch

NEG_INF = float("-inf")


def _pad_time(x: torch.Tensor, multiple: int, dim: int) -> torch.Tensor:
    """Zero-pad ``x`` along ``dim`` up to a multiple of ``multiple``."""
    length = x.shape[dim]
    extra = (-length) % multiple
    if extra == 0:
        return x
    shape = list(x.shape)
    shape[dim] = extra
    return torch.cat([x, x.new_zeros(shape)], dim=dim)


def gla_chunked(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    log_gate: torch.Tensor | None = None,
    initial_state: torch.Tensor | None = None,
    chunk_size: int = 16,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Causal gated linear attention, chunked parallel form.

    ``S_t = diag(exp(g_t)) S_{t-1} + k_t^T v_t`` and ``o_t = q_t S_t`` (scale 1, no normaliser).
    Returns ``(o, final_state)`` with ``o`` shaped like ``q`` but with ``Dv`` features.
    Positions to be ignored must carry ``k = 0`` and ``g = 0``: they then leave the state untouched.
    """
    B, Hkv, G, T, F = q.shape
    Dv = v.shape[-1]
    C = chunk_size
    compute_dtype = torch.float32 if q.dtype in (torch.float16, torch.bfloat16) else q.dtype
    q, k, v = q.to(compute_dtype), k.to(compute_dtype), v.to(compute_dtype)
    if log_gate is None:
        log_gate = k.new_zeros(B, Hkv, T, 1)
    log_gate = log_gate.to(compute_dtype)
    N = -(-T // C)
    qc = _pad_time(q, C, 3).reshape(B, Hkv, G, N, C, F)
    kc = _pad_time(k, C, 2).reshape(B, Hkv, N, C, F)
    vc = _pad_time(v, C, 2).reshape(B, Hkv, N, C, Dv)
    gc = _pad_time(log_gate, C, 2).reshape(B, Hkv, N, C, -1).cumsum(dim=3)  # within-chunk cumulative
    per_dim = gc.shape[-1] != 1

    # Intra-chunk: A[t, s] = sum_f q_tf k_sf exp(b_tf - b_sf) for s <= t (every exponent <= 0).
    causal = torch.ones(C, C, dtype=torch.bool, device=q.device).tril()
    diff = gc.unsqueeze(4) - gc.unsqueeze(3)  # (B, Hkv, N, C_t, C_s, F|1)
    decay = torch.exp(diff.masked_fill(~causal[..., None], NEG_INF))
    if per_dim:
        # k_s weighted by exp(b_t - b_s) for every t, then one batched matmul with q_t.
        weighted_k = kc.unsqueeze(3) * decay  # (B, Hkv, N, C_t, C_s, F)
        scores = torch.matmul(qc.permute(0, 1, 3, 4, 2, 5), weighted_k.transpose(-1, -2)).permute(0, 1, 4, 2, 3, 5)
    else:
        scores = torch.einsum("bhgntf,bhnsf->bhgnts", qc, kc) * decay[..., 0].unsqueeze(2)
    o = torch.einsum("bhgnts,bhnsd->bhgntd", scores, vc)

    # Chunk-local contributions to the state, decayed to the chunk's end.
    last = gc[:, :, :, -1:, :]  # (B, Hkv, N, 1, F|1)
    k_to_end = kc * torch.exp(last - gc)
    local_states = torch.einsum("bhncf,bhncd->bhnfd", k_to_end, vc)
    chunk_decay = torch.exp(last[:, :, :, 0, :])  # (B, Hkv, N, F|1)

    state = (
        initial_state.to(compute_dtype)
        if initial_state is not None
        else q.new_zeros(B, Hkv, F, Dv)
    )
    starts = []
    for n in range(N):
        starts.append(state)
        state = chunk_decay[:, :, n, :, None] * state + local_states[:, :, n]
    start_states = torch.stack(starts, dim=2)  # (B, Hkv, N, F, Dv)

    # Inter-chunk: q_t exp(b_t) S_{chunk start}.
    q_decayed = qc * torch.exp(gc).unsqueeze(2)
    o = o + torch.einsum("bhgncf,bhnfd->bhgncd", q_decayed, start_states)
    o = o.reshape(B, Hkv, G, N * C, Dv)[:, :, :, :T]
    return o, state


def gla_recurrent(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    log_gate: torch.Tensor | None = None,
    initial_state: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Step-by-step form of :func:`gla_chunked` (same arguments, same results)."""
    B, Hkv, G, T, F = q.shape
    Dv = v.shape[-1]
    compute_dtype = torch.float32 if q.dtype in (torch.float16, torch.bfloat16) else q.dtype
    state = (
        initial_state.to(compute_dtype)
        if initial_state is not None
        else q.new_zeros(B, Hkv, F, Dv, dtype=compute_dtype)
    )
    outputs = []
    for t in range(T):
        if log_gate is not None:
            state = torch.exp(log_gate[:, :, t].to(compute_dtype))[..., None] * state
        state = state + k[:, :, t, :, None].to(compute_dtype) * v[:, :, t, None, :].to(compute_dtype)
        outputs.append(torch.einsum("bhgf,bhfd->bhgd", q[:, :, :, t].to(compute_dtype), state))
    o = torch.stack(outputs, dim=3) if outputs else q.new_zeros(B, Hkv, G, 0, Dv)
    return o, state


def _scores(q, k, scale: float, softcap: float | None):
    s = torch.einsum("bhgtd,bhsd->bhgts", q, k) * scale
    if softcap is not None:
        s = softcap * torch.tanh(s / softcap)
    return s


def window_attention_chunked(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    window: int,
    scale: float,
    key_valid: torch.Tensor | None = None,
    softcap: float | None = None,
    chunk_size: int = 64,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Sliding-window softmax attention, returned as un-normalised partial sums.

    The key sequence may start with ``P = k.shape[2] - q.shape[3]`` earlier keys (a window
    buffer carried over from a previous call); query ``t`` sits at key position ``P + t`` and
    sees keys ``j`` with ``P + t - window < j <= P + t`` that are valid (``key_valid`` (B, S)).

    Returns ``(num, den, row_max)``: ``num = sum_j exp(s_j - m) v_j``, ``den = sum_j exp(s_j - m)``,
    ``m`` the row maximum over the keys seen (0 for a row that sees none, whose sums are 0).
    Callers combine these with sinks, linear terms or plain normalisation.
    """
    B, Hkv, G, T, D = q.shape
    S = k.shape[2]
    P = S - T
    compute_dtype = torch.float32 if q.dtype in (torch.float16, torch.bfloat16) else q.dtype
    q, k, v = q.to(compute_dtype), k.to(compute_dtype), v.to(compute_dtype)
    nums, dens, maxes = [], [], []
    for start in range(0, T, chunk_size):
        end = min(start + chunk_size, T)
        k_lo = max(0, P + start - window + 1)
        k_hi = P + end
        s = _scores(q[:, :, :, start:end], k[:, :, k_lo:k_hi], scale, softcap)
        qpos = torch.arange(P + start, P + end, device=q.device)[:, None]
        kpos = torch.arange(k_lo, k_hi, device=q.device)[None, :]
        allowed = (kpos <= qpos) & (kpos > qpos - window)
        allowed = allowed.view(1, 1, 1, end - start, k_hi - k_lo)
        if key_valid is not None:
            allowed = allowed & key_valid[:, None, None, None, k_lo:k_hi].bool()
        s = s.masked_fill(~allowed, NEG_INF)
        m = s.amax(dim=-1)
        m = torch.where(torch.isfinite(m), m, torch.zeros_like(m))
        p = torch.exp(s - m[..., None])
        nums.append(torch.einsum("bhgts,bhsd->bhgtd", p, v[:, :, k_lo:k_hi]))
        dens.append(p.sum(dim=-1))
        maxes.append(m)
    if not nums:
        empty = q.new_zeros(B, Hkv, G, 0)
        return q.new_zeros(B, Hkv, G, 0, v.shape[-1]), empty, empty
    return torch.cat(nums, dim=3), torch.cat(dens, dim=3), torch.cat(maxes, dim=3)


def window_attention_step(
    q: torch.Tensor,
    k_window: torch.Tensor,
    v_window: torch.Tensor,
    valid_window: torch.Tensor,
    scale: float,
    softcap: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Recurrent form: one query per row (B, Hkv, G, D) over a window buffer (B, Hkv, W, D).

    Same partial sums as :func:`window_attention_chunked`, for one step.
    """
    compute_dtype = torch.float32 if q.dtype in (torch.float16, torch.bfloat16) else q.dtype
    q, k_window, v_window = q.to(compute_dtype), k_window.to(compute_dtype), v_window.to(compute_dtype)
    s = torch.einsum("bhgd,bhwd->bhgw", q, k_window) * scale
    if softcap is not None:
        s = softcap * torch.tanh(s / softcap)
    s = s.masked_fill(~valid_window[:, None, None, :].bool(), NEG_INF)
    m = s.amax(dim=-1)
    m = torch.where(torch.isfinite(m), m, torch.zeros_like(m))
    p = torch.exp(s - m[..., None])
    return torch.einsum("bhgw,bhwd->bhgd", p, v_window), p.sum(dim=-1), m


def add_sinks(
    den: torch.Tensor, row_max: torch.Tensor, sinks: torch.Tensor, num: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Fold sink logits (Hkv, G, m) into the denominator: ``den + sum_j exp(s_j)`` (rescaled).

    Works for chunked partial sums (..., T) and single steps alike; returns ``(num, den)``
    rescaled to the common maximum so nothing overflows.
    """
    extra_dims = den.dim() - 3  # (B, Hkv, G, [T])
    sink = sinks.to(den.dtype).view(1, *sinks.shape[:2], *([1] * extra_dims), sinks.shape[-1])
    sink_max = sink.amax(dim=-1)
    new_max = torch.maximum(row_max, sink_max)
    rescale = torch.exp(row_max - new_max)
    den = den * rescale + torch.exp(sink - new_max.unsqueeze(-1)).sum(dim=-1)
    return num * rescale.unsqueeze(-1), den


def safe_divide(num: torch.Tensor, den: torch.Tensor, eps: float = 0.0) -> torch.Tensor:
    """``num / (den + eps)`` where rows with a zero denominator give 0 instead of NaN."""
    den = den + eps
    ok = den != 0
    return torch.where(ok.unsqueeze(-1), num / torch.where(ok, den, torch.ones_like(den)).unsqueeze(-1), 0.0)


def softmax_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    scale: float,
    key_valid: torch.Tensor | None = None,
    softcap: float | None = None,
    window: int | None = None,
) -> torch.Tensor:
    """Plain causal softmax attention (the teacher's path), grouped layout, for attention transfer."""
    T, S = q.shape[3], k.shape[2]
    num, den, _ = window_attention_chunked(
        q, k, v, window=window or S + 1, scale=scale, key_valid=key_valid, softcap=softcap, chunk_size=max(T, 1)
    )
    return safe_divide(num, den)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotary position embedding (rotate-half convention) of x (B, heads, T, D); cos/sin (B, T, D)."""
    cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
    return x * cos + rotate_half(x) * sin


def default_scale(head_dim: int) -> float:
    return 1.0 / math.sqrt(head_dim)
