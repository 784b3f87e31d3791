"""Triton kernels for the hybrid attention, behind one entry point.

``hybrid_attention_kernel(core, q_raw, k_raw, v, cos, sin, hidden, scale, key_valid, softcap, state)``
returns exactly what ``core(q_raw, k_raw, v, q_rope, k_rope, hidden, scale, key_valid, softcap, state)``
returns (``HybridAttentionCore`` in ``linearize/attention_variants.py`` is the specification).

Covered by the fused kernels (forward, backward, decode step):
* feature map ``softmax``, gate ``key`` or ``none``, ``normalize`` false,
* branches ``hybrid`` with mix ``average`` (Liger-GLA), ``linear`` (GLA only), ``window`` (SWA only),
* no sinks, no softcap, head dim a power of two in [16, 256], v head dim == q/k head dim,
* training / prefill without a state, prefill with a fresh state (nothing in the window buffer;
  no gradient through it), and single-token decode with a state (window a power of two).

Everything else runs the PyTorch reference ``core(...)`` explicitly (``kernel_fallback_reason``
says why): Lizard (hedgehog maps, learned gate, normalised, sinks, learned mix), LoLCATs (shared
normaliser), softcap (Gemma 2), prefill on top of a non-empty cache, gradients through a state.
On CPU tensors the kernels only run under ``TRITON_INTERPRET=1`` (tests); otherwise reference.
"""

from __future__ import annotations

import os

import torch

try:
    import triton

    from .decode import _hybrid_decode
    from .hybrid_chunked import _hybrid_bwd_kv, _hybrid_bwd_q, _hybrid_fwd

    HAS_TRITON = True
except Exception:  # noqa: BLE001 - no triton: everything falls back to the reference
    HAS_TRITON = False

__all__ = ["hybrid_attention_kernel", "kernel_fallback_reason", "HybridAttentionFunction"]

INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def _apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
    return x * cos + _rotate_half(x) * sin


def _is_pow2(n: int) -> bool:
    return n > 0 and (n & (n - 1)) == 0


def kernel_fallback_reason(core, q_raw, v, softcap=None, state=None) -> str | None:
    """None when the fused kernels compute this call; otherwise why the reference runs."""
    spec = core.spec
    if not HAS_TRITON:
        return "triton is not importable"
    if not q_raw.is_cuda and not INTERPRET:
        return "CPU tensors outside the Triton interpreter"
    if q_raw.dtype not in (torch.float32, torch.float16, torch.bfloat16):
        return f"dtype {q_raw.dtype}"
    D, DV = q_raw.shape[-1], v.shape[-1]
    if not (_is_pow2(D) and 16 <= D <= 256) or DV != D:
        return f"head dim {D} / value dim {DV} (needs equal powers of two in [16, 256])"
    if spec.shared:
        return "mix 'shared' (LoLCATs) is reference-only"
    if spec.has_linear:
        if spec.feature_map != "softmax":
            return f"feature map {spec.feature_map!r} is reference-only"
        if spec.gate not in ("key", "none"):
            return f"gate {spec.gate!r} is reference-only"
        if spec.normalize:
            return "normalised linear branch is reference-only"
    if spec.has_window:
        if spec.num_sinks:
            return "sinks are reference-only"
        if softcap is not None:
            return "softcap is reference-only"
    if spec.branches == "hybrid" and spec.mix != "average":
        return f"mix {spec.mix!r} is reference-only"
    T = q_raw.shape[2]
    if state is not None:
        if T == 1:
            if spec.has_window and not _is_pow2(spec.window):
                return "decode kernel needs a power-of-two window"
        else:
            if torch.is_grad_enabled() and (q_raw.requires_grad or v.requires_grad):
                return "gradients through a decoding state are reference-only"
            if spec.has_window and bool(state["valid"].any()):
                return "prefill on top of a non-empty window buffer is reference-only"
    return None


def _flags(spec):
    has_lin, has_win = spec.has_linear, spec.has_window
    mix_lin = 0.5 if (has_lin and has_win) else 1.0
    mix_win = 0.5 if (has_lin and has_win) else 1.0
    gate = 1 if (has_lin and spec.gate == "key") else 0
    return has_lin, has_win, gate, mix_lin, mix_win


def _block_t(gate: int, device_is_cuda: bool) -> int:
    # Key gate: BT = 16 bounds the intra-chunk exponent (see hybrid_chunked). Otherwise larger tiles.
    if gate == 1:
        return 16
    return 64 if device_is_cuda else 32


def _cos_sin(cos: torch.Tensor, sin: torch.Tensor, B: int, T: int, D: int):
    cos = cos.reshape(-1, T, D)
    sin = sin.reshape(-1, T, D)
    if cos.stride(-1) != 1:
        cos = cos.contiguous()
    if sin.stride(-1) != 1 or sin.stride() != cos.stride():
        sin, cos = sin.contiguous(), cos.contiguous()
    stride_cb = 0 if cos.shape[0] == 1 else cos.stride(0)
    return cos, sin, stride_cb, cos.stride(1)


def _lastdim_contig(x: torch.Tensor) -> torch.Tensor:
    return x if x.stride(-1) == 1 else x.contiguous()


def _fwd(q, k, v, cos, sin, valid, spec, scale, s0=None, want_state=False):
    B, H, T, D = q.shape
    HKV = k.shape[1]
    G = H // HKV
    DV = v.shape[-1]
    has_lin, has_win, gate, mix_lin, mix_win = _flags(spec)
    BT = _block_t(gate, q.is_cuda)
    BV = DV if (INTERPRET or not q.is_cuda) else min(DV, 64)
    cos, sin, scb, sct = _cos_sin(cos, sin, B, T, D)
    o = torch.empty(B, H, T, DV, device=q.device, dtype=v.dtype)
    m = torch.empty(B, H, T, device=q.device, dtype=torch.float32)
    den = torch.empty_like(m)
    st = torch.empty(B, HKV, D, DV, device=q.device, dtype=torch.float32) if want_state else m
    s0_t = s0.float().contiguous() if s0 is not None else m
    valid_t = valid if valid is not None else m
    grid = (B * HKV, DV // BV)
    _hybrid_fwd[grid](
        q, k, v, cos, sin, valid_t, o, m, den, s0_t, st,
        q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
        v.stride(0), v.stride(1), v.stride(2), o.stride(0), o.stride(1), o.stride(2), scb, sct,
        T, HKV, float(scale), float(spec.gate_scale), mix_lin, mix_win,
        G=G, D=D, DV=DV, BV=BV, BT=BT, W=int(spec.window) if has_win else 1,
        HAS_LIN=has_lin, HAS_WIN=has_win, GATE=gate, HAS_VALID=valid is not None,
        HAS_S0=s0 is not None, STORE_ST=want_state,
        num_warps=4,
    )
    return o, m, den, (st if want_state else None)


class HybridAttentionFunction(torch.autograd.Function):
    """Fused hybrid attention from raw q/k/v: out (B, H, T, D) in v.dtype; grads for q, k, v."""

    @staticmethod
    def forward(ctx, q, k, v, cos, sin, valid, spec, scale):
        q, k, v = _lastdim_contig(q), _lastdim_contig(k), _lastdim_contig(v)
        o, m, den, _ = _fwd(q, k, v, cos, sin, valid, spec, scale)
        ctx.save_for_backward(q, k, v, cos, sin, valid, m, den)
        ctx.spec, ctx.scale = spec, scale
        return o

    @staticmethod
    def backward(ctx, do):
        q, k, v, cos, sin, valid, m, den = ctx.saved_tensors
        spec, scale = ctx.spec, ctx.scale
        do = _lastdim_contig(do)
        B, H, T, D = q.shape
        HKV, DV = k.shape[1], v.shape[-1]
        G = H // HKV
        has_lin, has_win, gate, mix_lin, mix_win = _flags(spec)
        BT = _block_t(gate, q.is_cuda)
        cos, sin, scb, sct = _cos_sin(cos, sin, B, T, D)
        dq = torch.empty(B, H, T, D, device=q.device, dtype=q.dtype)
        dk = torch.empty(B, HKV, T, D, device=q.device, dtype=k.dtype)
        dv = torch.empty(B, HKV, T, DV, device=q.device, dtype=v.dtype)
        delta = torch.empty(B, H, T, device=q.device, dtype=torch.float32)
        dlq = torch.empty(B, HKV, T, D, device=q.device, dtype=torch.float32) if has_lin else delta
        valid_t = valid if valid is not None else delta
        common = (
            q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
            v.stride(0), v.stride(1), v.stride(2), do.stride(0), do.stride(1), do.stride(2), scb, sct,
            T, HKV, float(scale), float(spec.gate_scale), mix_lin, mix_win,
        )
        meta = dict(G=G, D=D, DV=DV, BT=BT, W=int(spec.window) if has_win else 1, HAS_LIN=has_lin,
                    HAS_WIN=has_win, GATE=gate, HAS_VALID=valid is not None, num_warps=8)
        grid = (B * HKV,)
        _hybrid_bwd_q[grid](q, k, v, cos, sin, valid_t, do, m, den, dq, delta, dlq, *common, **meta)
        _hybrid_bwd_kv[grid](q, k, v, cos, sin, valid_t, do, m, den, delta, dlq, dk, dv, *common, **meta)
        return dq, dk, dv, None, None, None, None, None


def _decode(core, q, k, v, cos, sin, key_valid, scale, state):
    spec = core.spec
    B, H, _, D = q.shape
    HKV = k.shape[1]
    G, DV = H // HKV, v.shape[-1]
    has_lin, has_win, gate, mix_lin, mix_win = _flags(spec)
    step_valid = (key_valid[:, -1] if key_valid is not None else torch.ones(B, dtype=torch.bool, device=q.device))
    step_valid = step_valid.to(torch.int8).contiguous()
    q, k, v = _lastdim_contig(q), _lastdim_contig(k), _lastdim_contig(v)
    cos, sin, scb, _ = _cos_sin(cos, sin, B, 1, D)
    o = torch.empty(B, H, 1, DV, device=q.device, dtype=v.dtype)
    new_state = {}
    dummy = o
    s_old = s_new = kb = vb = kb_new = vb_new = wvalid = dummy
    W = 1
    if has_lin:
        s_old = state["linear"].float().contiguous()
        s_new = torch.empty_like(s_old)
        new_state["linear"] = s_new
    if has_win:
        W = spec.window
        kb, vb = state["k"].contiguous(), state["v"].contiguous()
        kb_new, vb_new = torch.empty_like(kb), torch.empty_like(vb)
        wvalid_b = torch.cat([state["valid"][:, 1:], step_valid.bool()[:, None]], dim=1)
        wvalid = wvalid_b.to(torch.int8).contiguous()
        new_state.update(k=kb_new, v=vb_new, valid=wvalid_b)
    BV = DV if (INTERPRET or not q.is_cuda) else min(DV, 32)
    _hybrid_decode[(B * HKV, DV // BV)](
        q, k, v, cos, sin, step_valid, s_old, s_new, kb, vb, kb_new, vb_new, wvalid, o,
        q.stride(0), q.stride(1), k.stride(0), k.stride(1), v.stride(0), v.stride(1), scb,
        o.stride(0), o.stride(1),
        HKV, float(scale), float(spec.gate_scale), mix_lin, mix_win,
        G=G, D=D, DV=DV, BV=BV, W=W, HAS_LIN=has_lin, HAS_WIN=has_win, GATE=gate, num_warps=4,
    )
    return o, new_state


def _reference(core, q_raw, k_raw, v, cos, sin, hidden, scale, key_valid, softcap, state):
    q_rope, k_rope = _apply_rope(q_raw, cos, sin), _apply_rope(k_raw, cos, sin)
    T = q_raw.shape[2]
    return core(q_raw, k_raw, v, q_rope, k_rope, hidden, scale, key_valid, softcap, state,
                recurrent=(T == 1 and state is not None))


def hybrid_attention_kernel(core, q_raw, k_raw, v, cos, sin, hidden, scale, key_valid=None, softcap=None,
                            state=None):
    """Fused hybrid attention (see module docstring); falls back to ``core(...)`` when not covered."""
    if kernel_fallback_reason(core, q_raw, v, softcap, state) is not None:
        return _reference(core, q_raw, k_raw, v, cos, sin, hidden, scale, key_valid, softcap, state)
    spec = core.spec
    B, H, T, D = q_raw.shape
    valid = key_valid.to(torch.int8).contiguous() if key_valid is not None else None
    if state is None:
        out = HybridAttentionFunction.apply(q_raw, k_raw, v, cos, sin, valid, spec, scale)
        return out, None
    if T == 1:
        return _decode(core, q_raw, k_raw, v, cos, sin, key_valid, scale, state)
    # Prefill into a fresh state (checked: empty window buffer, no grad).
    q, k, vv = _lastdim_contig(q_raw), _lastdim_contig(k_raw), _lastdim_contig(v)
    s0 = state["linear"] if spec.has_linear else None
    out, _, _, st = _fwd(q, k, vv, cos, sin, valid, spec, scale, s0=s0, want_state=spec.has_linear)
    new_state = {}
    if spec.has_window:
        w = spec.window
        tail = min(w, T)
        k_tail = _apply_rope(k_raw[:, :, -tail:], cos[:, -tail:] if cos.shape[1] == T else cos,
                             sin[:, -tail:] if sin.shape[1] == T else sin)
        valid_new = key_valid.bool() if key_valid is not None else torch.ones(B, T, dtype=torch.bool,
                                                                               device=v.device)
        new_state.update(
            k=torch.cat([state["k"], k_tail.to(state["k"].dtype)], dim=2)[:, :, -w:],
            v=torch.cat([state["v"], v[:, :, -tail:].to(state["v"].dtype)], dim=2)[:, :, -w:],
            valid=torch.cat([state["valid"], valid_new[:, -tail:]], dim=1)[:, -w:],
        )
    if spec.has_linear:
        new_state["linear"] = st
    return out, new_state
