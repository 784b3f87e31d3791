"""Triton kernels for the hybrid attention, behind one entry point.

``hybrid_attention_kernel(core, q_raw, k_raw, v, cos, sin, hidden, scale, key_valid, softcap, state)``
returns exactly what ``core(q_raw, k_raw, v, q_rope, k_rope, hidden, scale, key_valid, softcap, state)``
returns (``HybridAttentionCore`` in ``linearize/attention_variants.py`` is the specification).

Covered by the fused kernels (training / prefill forward + backward, chunk-parallel):
* feature maps ``softmax`` or ``hedgehog`` (per-head W, gradient of W), gate ``key``, ``learned``
  (the per-token per-kv-head log-gate ``logsigmoid(gate_proj(hidden))`` is computed by torch and
  passed in; its gradient flows back through torch to ``gate_proj``; the decode step takes it in the
  kernel) or ``none``, ``normalize`` on/off,
* branches ``hybrid`` with mix ``average`` (Liger-GLA) or ``learned`` (Lizard's alpha, gradient),
  ``linear`` (GLA only), ``window`` (SWA only), sinks in the window denominator (power-of-two count,
  gradient), no softcap, head dim a power of two in [16, 256], v head dim == q/k head dim,
* mix ``shared`` (LoLCATs: window and linear weights over one normaliser, gradients of W_q, W_k and
  window_factor; ``lolcats_chunked.py``), window a multiple of the chunk length (32).
So Liger-GLA, Lizard and LoLCATs train on the kernels, with gradients of every learned parameter.
Decode step (T = 1 with a state, power-of-two window) and prefill into a fresh state (no grad): the
same features (Liger-GLA, Lizard, GLA, SWA) and LoLCATs (``_lolcats_decode``; its prefill runs the fused
kernels, then builds the state in torch), states in ``HybridAttentionCore.empty_state``'s layout
(normalised: the ``z`` column after the values; LoLCATs: the normaliser column and the ``kfeat`` buffer),
so the reference and the kernels can alternate.

Everything else runs the PyTorch reference ``core(...)`` explicitly (``kernel_fallback_reason``
says why): LoLCATs with a window that is no multiple of the chunk length (prefill / training), softcap
(Gemma 2), prefill on top of a non-empty window buffer (LoLCATs: or linear state), gradients through a
state (grad enabled with inputs or learned parameters requiring it); on the GPU, hedgehog maps at head
dim > 128, and fp32 activations with hedgehog maps at head dim 128 when gradients are needed (shared
memory of one sm_90 block); on GPUs other than sm_90, any kind of call whose launches need more shared
memory than the GPU gives a block (``shared_memory.py`` compiles them to find out, once per kind).
On CPU tensors the kernels only run under ``TRITON_INTERPRET=1`` (tests); otherwise reference.
"""

from __future__ import annotations

import functools
import os
from typing import NamedTuple

import torch

from ..attention_reference import apply_rope as _apply_rope

try:
    import triton

    from .decode import _hybrid_decode, _lolcats_decode
    from .hybrid_chunked import (
        _chunk_scan, _chunk_state, _hybrid_bwd_kv, _hybrid_bwd_q, _hybrid_fwd, chunk_state_dtype
    )
    from .lolcats_chunked import LolcatsAttentionFunction, lolcats_config

    HAS_TRITON = True
except Exception:  # noqa: BLE001 - no triton: everything falls back to the reference
    HAS_TRITON = False

__all__ = ["hybrid_attention_kernel", "kernel_fallback_reason", "HybridAttentionFunction"]

# Version of ``hybrid_attention_kernel``'s calling convention and state layout; checkpoints' shipped modeling
# code uses these kernels only when it needs exactly this version (``modeling_linearized.find_installed_kernels``).
KERNEL_INTERFACE_VERSION = 1

INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"
# (compute capability, shared memory per block) of the GPU that ``offline_compile.use_target`` compiles for
# without one; None otherwise.
OFFLINE_TARGET: tuple[int, int] | None = None


def _is_pow2(n: int) -> bool:
    return n > 0 and (n & (n - 1)) == 0


def _next_pow2(n: int) -> int:
    return 1 << max(n - 1, 0).bit_length()


def _on_gpu(x: torch.Tensor) -> bool:
    """Whether launches for ``x`` take the GPU's launch configuration (the interpreter takes its own, smaller
    one); ``linearize.kernels.offline_compile`` sets it for CPU tensors to compile the GPU's launches."""
    return x.is_cuda and not INTERPRET


@functools.lru_cache(maxsize=None)
def _cuda_block(index: int) -> tuple[int, int]:
    props = torch.cuda.get_device_properties(index)
    return props.major * 10 + props.minor, props.shared_memory_per_block_optin


def gpu_block(x: torch.Tensor) -> tuple[int, int] | None:
    """(compute capability as 80 / 89 / 90 ..., shared memory one block may opt into) of the GPU whose launches
    ``x`` takes (``OFFLINE_TARGET`` when compiling without one); None in the interpreter."""
    if x.is_cuda and not INTERPRET:
        return _cuda_block(x.device.index if x.device.index is not None else torch.cuda.current_device())
    return OFFLINE_TARGET if _on_gpu(x) else None


def _block_shared(x: torch.Tensor) -> int | None:
    """Shared memory per block of the GPU whose launches ``x`` takes; None in the interpreter."""
    block = gpu_block(x)
    return block[1] if block is not None else None


def kernel_fallback_reason(core, q_raw, k_raw, v, softcap=None, state=None) -> str | None:
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
    T = q_raw.shape[2]
    decode = state is not None and T == 1
    if spec.shared and not decode:
        chunk = lolcats_config(D, _on_gpu(q_raw))["BT"]
        if spec.window % chunk:
            return f"LoLCATs kernels need a window that is a multiple of the chunk length ({chunk})"
    if _weighted_linear(spec) and bool((core.linear_weight.detach().abs() < 1e-3).any()):
        return "mix 'weighted-linear' with a head's linear weight below 1e-3 (the kernels divide by it)"
    if spec.has_window:
        if spec.num_sinks and not _is_pow2(spec.num_sinks):
            return f"{spec.num_sinks} sinks (kernels need a power of two)"
        if softcap is not None:
            return "softcap is reference-only"
    wants_grad = torch.is_grad_enabled() and (q_raw.requires_grad or k_raw.requires_grad or v.requires_grad
                                              or any(p.requires_grad for p in core.parameters()))
    if _on_gpu(q_raw) and spec.has_linear and spec.feature_map == "hedgehog" and not decode:
        # Compile-only report (scripts/kernel_registers.py, sm_90): these launches would fail with OutOfResources.
        if D > 128:
            return f"hedgehog maps at head dim {D}: the kernels need more shared memory than an sm_90 block has"
        if D == 128 and q_raw.dtype == torch.float32 and wants_grad and state is None:
            return ("fp32 activations with hedgehog maps at head dim 128: the backward kernels' fp32 dot operands "
                    "need more shared memory than an sm_90 block has (bf16 / fp16 fit)")
    if state is not None:
        if wants_grad:
            return "gradients through a decoding state are reference-only"
        if T == 1:
            if spec.has_window and not _is_pow2(spec.window):
                return "decode kernel needs a power-of-two window"
        else:
            if spec.has_window and bool(state["valid"].any()):
                return "prefill on top of a non-empty window buffer is reference-only"
            if spec.shared and bool(state["linear"].any()):
                return "LoLCATs prefill on top of a non-empty linear state is reference-only"
    block = gpu_block(q_raw)
    if block is not None and block[0] != 90:
        from .shared_memory import shared_memory_fallback

        return shared_memory_fallback(core, q_raw, v, state, wants_grad, block)
    return None


class _Flags(NamedTuple):
    has_lin: bool
    has_win: bool
    gate: int  # 0 none, 1 key (per key dim, from k), 2 per-head log-gate tensor (learned gate)
    fmap: int  # 0 softmax, 1 hedgehog
    norm: bool
    ns: int  # number of sinks
    mixp: bool  # learned per-head alpha on the window branch
    mix_lin: float
    mix_win: float


def _flags(spec, head_dim: int | None = None) -> _Flags:
    """Compile-time switches and mixing constants of ``spec``. Mix ``weighted-linear`` (``a * o_lin + o_win``)
    runs as ``a * (o_lin + (1/a) * o_win)``: the kernels take ``1/a`` as the window's per-head weight and the
    caller multiplies by ``a`` (:func:`_weight_output`). The linear branch's constant factor (``linear_scale``)
    folds into ``mix_lin``; it needs ``head_dim`` (without it the factor is left out, for launch tables)."""
    has_lin, has_win = spec.has_linear, spec.has_window
    hybrid = has_lin and has_win
    mixp = hybrid and spec.mix in ("learned", "weighted-linear")
    gate = {"key": 1, "learned": 2}.get(spec.gate, 0) if has_lin else 0
    fmap = 1 if (has_lin and spec.feature_map == "hedgehog") else 0
    # Checkpoints' shipped specs from before linear_scale existed have no linear_factor (factor 1).
    factor = spec.linear_factor(head_dim) if head_dim and hasattr(spec, "linear_factor") else 1.0
    return _Flags(has_lin, has_win, gate, fmap, has_lin and spec.normalize, spec.num_sinks if has_win else 0, mixp,
                  (0.5 if (hybrid and not mixp) else 1.0) * factor, 0.5 if hybrid else 1.0)


def _weighted_linear(spec) -> bool:
    return spec.has_linear and spec.has_window and spec.mix == "weighted-linear"


def _weight_output(core, out: torch.Tensor) -> torch.Tensor:
    """Mix ``weighted-linear``: the kernels computed ``o_lin + (1/a) o_win``; the output is ``a`` times that."""
    if not _weighted_linear(core.spec):
        return out
    return out * core.linear_weight.to(out.dtype).view(1, -1, 1, 1)


class _Blocks(NamedTuple):
    BT: int  # chunk of the chunk-level states
    BC: int  # rows of every tile: a chunk is walked in BT / BC tiles, the state stepped in registers
    SUB: int  # the key gate's sub-block: bounds its factorised in-tile exponent, SUB * max|g|


def _blocks(f: _Flags, device_is_cuda: bool) -> _Blocks:
    """GPU: one 32-row tile per 32-token chunk. 32 rows keep each program's tiles in registers at head dim 128
    (sm_90, scripts/kernel_registers.py, Liger-GLA: no spills in the forward, ~0.3 kB per thread in the
    backward; one 64-row tile spills ~0.9 kB in the forward and 2-4 kB in the backward, and the hedgehog maps'
    64 x 2D feature tiles do not fit at all). 64-token chunks in two 32-row tiles (the state stepped in
    registers) would halve the stored chunk states and the scan's length, but hold an fp32 state or state
    gradient through the head loop: ~0.2 / 1.0 / 1.0 kB of spills (forward / dq / dk, dv); the GPU sweep in
    scripts/gpu_check_kernels.py times it ("BT 64"). The learned gate keeps one tile per chunk whatever BT:
    across tiles its per-token gradient terms would have to cancel through two differently rounded state
    paths (the forward's stepped state, the backward's stepped state gradient), and in fp16 ``gate_proj.bias``
    came out 2.6e-2 off instead of < 1e-2 (``test_normalised_fp16_gradients_stay_in_range_when_features_barely_
    meet``); within one tile its pair terms come from the same A and dA on both sides and cancel exactly.
    The interpreter: 32-token chunks in 16-row tiles (learned gate: one tile), 8-row key-gate sub-blocks, so
    that short test sequences cross several of each."""
    if device_is_cuda:
        return _Blocks(32, 32, 16)
    return _Blocks(32, 32 if f.gate == 2 else 16, 8)


def _launch(f: _Flags, D: int, device_is_cuda: bool, dtype: torch.dtype = torch.bfloat16,
            shared: int | None = None) -> dict[str, dict]:
    """Launch options per kernel of a variant at head dim D (= Dv): value block BV (BK for the scan),
    num_warps, num_stages, on a GPU that gives a block ``shared`` bytes (None: sm_90's 227 KiB).

    Chosen from the compile-only report of scripts/kernel_registers.py (sm_90, bf16), which compiles
    exactly these: the F x BV fp32 accumulator of ``_chunk_state`` bounds its BV; hedgehog maps (F = 2D)
    take 8 warps and no software pipelining (its multi-buffered loads of the per-head W and of the window
    blocks do not fit beside the F-wide tiles), as do fp32 activations (whose dot operands are fp32) and the
    backward at head dim 128 (already spilling; two stages add 12 - 152 B per thread); the bf16 / fp16
    forward at head dim 128 with softmax maps takes two stages: its loads then run ahead of the window /
    state dots (cp.async), which nothing else overlaps at one 8-warp block per SM, at 252 registers, no
    spills and 112 KiB of shared memory in bf16 (fp16, whose key-gate dots are fp32: 8 B of spills, 32 at
    one stage; three stages spill in both). The forward takes all value columns in one program with softmax
    maps (the window scores and the in-chunk attention are then computed once per head).

    Then timed on an H200 (the launch sweep of scripts/gpu_check_kernels.py, B 2, T 8k, bf16, 2026-11-26):
    4 warps instead of 8 in Liger-GLA's forward (1.82 -> 1.27 ms) and in its backward (fwd + bwd 7.09 ->
    6.50 ms) at head dim 128, although both then spill (0.4 and 1.3 - 2 kB per thread): two blocks share an
    SM. Taken for bf16 softmax-map variants at D >= 128; fp16's forward needs 128 KiB of shared memory, one
    block per SM at 4 warps, unmeasured, so fp16 keeps 8. Hedgehog maps keep 8 warps in the backward (4:
    Lizard 19.4 -> 26.8 ms) and in bf16 take all value columns in the forward (64 before: Lizard's forward
    5.14 -> 3.39 ms, 132 B of spills); fp16 / fp32 keep 64, unmeasured. Otherwise 8 warps in the forward with
    a window branch, hedgehog maps or D = 128. The interpreter takes whole value blocks.

    Three of these choices need more shared memory than some GPUs give a block (compiled for sm_80 and
    sm_89 on CPU, bf16, D = 128, ``scripts/kernel_registers.py --arch``), so they are taken only where they
    fit: the two-stage forward (Liger-GLA: 112 KiB in bf16, 128 in fp16; one stage 80), the hedgehog forward
    over all value columns (Lizard: 128 KiB; 64 columns 64) and the 8-warp hedgehog backward (Lizard
    ``_hybrid_bwd_q``: 168 KiB; 4 warps 152 KiB with 4.8 kB of spills per thread, so it fits an A100's 163
    KiB; the H200 timed 4 warps 1.4x slower). Untimed on those GPUs; whatever still does not fit runs the
    reference (``shared_memory.py``)."""
    F = 2 * D if f.fmap else D
    if not device_is_cuda:
        return dict(state=dict(BV=D, num_warps=4), scan=dict(BK=F, num_warps=4), fwd=dict(BV=D, num_warps=4),
                    bwd=dict(num_warps=8))

    def fits(kib: int) -> bool:  # needs measured at D = 128 (at D = 64 sm_90 compiles need at most 74 KiB)
        return shared is None or D < 128 or shared >= kib * 1024

    bf16 = dtype == torch.bfloat16
    stages = 1 if (f.fmap or D >= 128 or dtype == torch.float32) else 3
    fwd_stages = 2 if (D >= 128 and not f.fmap and dtype != torch.float32 and fits(112 if bf16 else 128)) else stages
    swept = bf16 and D >= 128 and not f.fmap  # 4 warps won the H200 sweep here, in the forward and the backward
    bwd_warps = 4 if (swept or (f.fmap and not fits(168))) else 8
    return dict(
        state=dict(BV=min(D, 32 if f.fmap else 64), num_warps=8 if f.fmap else 4, num_stages=1 if f.fmap else 3),
        scan=dict(BK=min(F, 32), num_warps=4),
        fwd=dict(BV=D if ((bf16 and fits(128)) or not f.fmap) else min(D, 64),
                 num_warps=4 if swept else 8 if (f.has_win or f.fmap or D >= 128) else 4, num_stages=fwd_stages),
        bwd=dict(num_warps=bwd_warps, num_stages=stages),
    )


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


def _strides(*tensors):
    out = []
    for x in tensors:
        out += [x.stride(0), x.stride(1), x.stride(2)]
    return out


def _meta(f: _Flags, G, D, DV, blk: _Blocks, W, has_valid):
    return dict(G=G, D=D, F=2 * D if f.fmap else D, DV=DV, BT=blk.BT, BC=blk.BC, SUB=blk.SUB, W=W,
                HAS_LIN=f.has_lin, HAS_WIN=f.has_win, GATE=f.gate, FMAP=f.fmap, NORM=f.norm, MIXP=f.mixp,
                HAS_VALID=has_valid)


class _Params(NamedTuple):
    """Learned inputs of the kernels (None when the variant has none)."""

    lg: torch.Tensor | None  # (B, Hkv, T) fp32 log-gates (learned gate), unmasked
    wq: torch.Tensor | None  # (H, D, D) hedgehog weights of q
    wk: torch.Tensor | None  # (Hkv, D, D)
    alpha: torch.Tensor | None  # (H,)
    sinks: torch.Tensor | None  # (H, m)


def _ptr(x, dummy):
    return x if x is not None else dummy


def _dot_weights(P: _Params, dtype: torch.dtype) -> _Params:
    """The hedgehog weights in the activation dtype: the kernels feed them to ``tl.dot`` in that dtype, and
    loading them so halves their staged shared memory (their gradients stay fp32)."""
    if P.wq is None:
        return P
    return P._replace(wq=P.wq.to(dtype), wk=P.wk.to(dtype))


def _chunk_states(q, k, v, valid, spec, f, blk, P, states=True, do=None, rinv=None, dden=None, bufs=None,
                  s0=None, want_state=False):
    """Chunk start states h (B, Hkv, NT, F, Dv) in ``chunk_state_dtype`` and z (B, Hkv, NT, F) (fp32,
    normalised only) and/or, with ``do``, the gradients w.r.t. each chunk's end state (same shapes and
    dtypes); the final state (fp32) if asked."""
    B, H, T, D = q.shape
    HKV, DV = k.shape[1], v.shape[-1]
    F = 2 * D if f.fmap else D
    NT = triton.cdiv(T, blk.BT)
    dev = q.device
    dummy = torch.empty(1, device=dev, dtype=torch.float32)
    if bufs is None:
        h = torch.empty(B, HKV, NT, F, DV, device=dev, dtype=chunk_state_dtype(q.dtype, f.gate == 2 or want_state))
        z = torch.empty(B, HKV, NT, F, device=dev, dtype=torch.float32) if f.norm else dummy
        gtot = torch.empty(B, HKV, NT, D if f.gate == 1 else 1, device=dev, dtype=torch.float32) if f.gate else dummy
    else:
        h, z, gtot = bufs
    # A mode that does not run still compiles: its pointers take the other mode's dtypes (the branches of
    # ``_chunk_scan``'s ``if mode`` must agree in type), so the unused gradient buffers alias the states.
    dh = torch.empty_like(h) if do is not None else h
    dz = torch.empty_like(z) if (do is not None and f.norm) else z
    st = torch.empty(B, HKV, F, DV + f.norm, device=dev, dtype=torch.float32) if want_state else dummy
    s0_t = s0.float().contiguous() if s0 is not None else dummy
    do_t = do if do is not None else v
    cfg = _launch(f, D, _on_gpu(q), q.dtype, _block_shared(q))
    _chunk_state[(NT, B * HKV, DV // cfg["state"]["BV"])](
        q, k, v, _ptr(valid, dummy), do_t, _ptr(P.lg, dummy), _ptr(P.wq, dummy), _ptr(P.wk, dummy),
        _ptr(rinv, dummy), _ptr(dden, dummy), h, z, dh, dz, gtot, *_strides(q, k, v, do_t),
        T, HKV, NT, float(spec.gate_scale), float(f.mix_lin),
        G=H // HKV, D=D, F=F, DV=DV, BT=blk.BT, BC=blk.BC, GATE=f.gate, FMAP=f.fmap, NORM=f.norm,
        HAS_VALID=valid is not None, STATES=states, WITH_DO=do is not None, **cfg["state"],
    )
    first = 0 if states else 1
    modes = (1 if states else 0) + (1 if do is not None else 0)
    _chunk_scan[(B * HKV, F // cfg["scan"]["BK"], modes)](
        h, z, dh, dz, gtot, s0_t, st, NT, first, D=D, F=F, DV=DV, GATE=f.gate, NORM=f.norm,
        HAS_S0=s0 is not None, STORE_ST=want_state, **cfg["scan"],
    )
    return (h, z, gtot), ((dh, dz) if do is not None else None), (st if want_state else None)


def _fwd(q, k, v, cos, sin, valid, spec, scale, P, s0=None, want_state=False):
    B, H, T, D = q.shape
    HKV = k.shape[1]
    G = H // HKV
    DV = v.shape[-1]
    f = _flags(spec, D)
    cuda = _on_gpu(q)
    blk = _blocks(f, cuda)
    NT = triton.cdiv(T, blk.BT)
    cfg = _launch(f, D, cuda, q.dtype, _block_shared(q))["fwd"]
    P = _dot_weights(P, q.dtype)
    cos, sin, scb, sct = _cos_sin(cos, sin, B, T, D)
    o = torch.empty_like(q, dtype=v.dtype)  # q's layout (DV == D): see the module docstring of hybrid_chunked
    m = torch.empty(B, H, T, device=q.device, dtype=torch.float32)
    den = torch.empty_like(m)
    h = z = st = None
    if f.has_lin:
        (h, z, _), _, st = _chunk_states(q, k, v, valid, spec, f, blk, P, s0=s0, want_state=want_state)
    _hybrid_fwd[(NT, B * HKV, DV // cfg["BV"])](
        q, k, v, cos, sin, _ptr(valid, m), _ptr(P.lg, m), _ptr(P.wq, m), _ptr(P.wk, m), _ptr(P.alpha, m),
        _ptr(P.sinks, m), o, m, den, _ptr(h, m), _ptr(z, m),
        *_strides(q, k, v, o), scb, sct,
        T, HKV, NT, float(scale), float(spec.gate_scale), f.mix_lin, f.mix_win, float(spec.eps),
        NS=f.ns, **_meta(f, G, D, DV, blk, int(spec.window) if f.has_win else 1, valid is not None), **cfg,
    )
    return o, m, den, st


class HybridAttentionFunction(torch.autograd.Function):
    """Fused hybrid attention from raw q/k/v: out (B, H, T, D) in v.dtype; grads for q, k, v and the
    learned inputs (log-gates of a learned gate, hedgehog weights, mix alpha, sinks)."""

    @staticmethod
    def forward(ctx, q, k, v, cos, sin, valid, spec, scale, lg=None, wq=None, wk=None, alpha=None, sinks=None):
        q, k, v = _lastdim_contig(q), _lastdim_contig(k), _lastdim_contig(v)
        P = _Params(*(x.contiguous() if x is not None else None for x in (lg, wq, wk, alpha, sinks)))
        o, m, den, _ = _fwd(q, k, v, cos, sin, valid, spec, scale, P)
        ctx.save_for_backward(q, k, v, cos, sin, valid, m, den, *P)
        ctx.spec, ctx.scale = spec, scale
        return o

    @staticmethod
    def backward(ctx, do):
        q, k, v, cos, sin, valid, m, den, *params = ctx.saved_tensors
        P = _Params(*params)
        spec, scale = ctx.spec, ctx.scale
        do = _lastdim_contig(do)
        B, H, T, D = q.shape
        HKV, DV = k.shape[1], v.shape[-1]
        G = H // HKV
        f = _flags(spec, D)
        F = 2 * D if f.fmap else D
        cuda = _on_gpu(q)
        blk = _blocks(f, cuda)
        BT = blk.BT
        NT = triton.cdiv(T, BT)
        cos, sin, scb, sct = _cos_sin(cos, sin, B, T, D)
        dev = q.device
        dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)  # the inputs' layouts
        delta = torch.empty(B, H, T, device=dev, dtype=torch.float32)
        dummy = delta
        # Per token: the q side of the gate gradient, per key dim (key gate) or summed (per-head gate).
        dlq = (torch.empty(B, HKV, T, F, device=dev, dtype=torch.float32) if f.gate == 1
               else torch.empty(B, HKV, T, device=dev, dtype=torch.float32) if f.gate == 2 else dummy)
        rinv = torch.empty(B, H, T, device=dev, dtype=torch.float32) if f.norm else dummy
        dden = torch.empty_like(rinv) if f.norm else dummy
        dlg = torch.zeros(B, HKV, T, device=dev, dtype=torch.float32) if f.gate == 2 else dummy
        dwq = torch.zeros(P.wq.shape, device=dev, dtype=torch.float32) if f.fmap else dummy
        dwk = torch.zeros(P.wk.shape, device=dev, dtype=torch.float32) if f.fmap else dummy
        PK = _dot_weights(P, q.dtype)
        h = z = dh = dz = dummy
        bufs = None
        if f.has_lin:
            if f.norm:  # the pull on the states needs 1/den and dden from _hybrid_bwd_q: two passes
                bufs, _, _ = _chunk_states(q, k, v, valid, spec, f, blk, PK)
            else:
                bufs, (dh, dz), _ = _chunk_states(q, k, v, valid, spec, f, blk, PK, do=do)
            h, z = bufs[0], bufs[1]
        common = (
            *_strides(q, k, v, do), scb, sct,
            T, HKV, NT, float(scale), float(spec.gate_scale), f.mix_lin, f.mix_win, float(spec.eps),
        )
        meta = dict(**_meta(f, G, D, DV, blk, int(spec.window) if f.has_win else 1, valid is not None),
                    **_launch(f, D, cuda, q.dtype, _block_shared(q))["bwd"])
        ins = (q, k, v, cos, sin, _ptr(valid, dummy), _ptr(PK.lg, dummy), _ptr(PK.wq, dummy), _ptr(PK.wk, dummy),
               _ptr(PK.alpha, dummy))
        grid = (NT, B * HKV)
        _hybrid_bwd_q[grid](*ins, do, m, den, h, z, dq, delta, dlq, rinv, dden, dwq, *_strides(dq), *common, **meta)
        if f.has_lin and f.norm:
            _, (dh, dz), _ = _chunk_states(q, k, v, valid, spec, f, blk, PK, states=False, do=do, rinv=rinv,
                                           dden=dden, bufs=bufs)
        _hybrid_bwd_kv[grid](*ins, do, m, den, delta, dlq, rinv, dden, h, z, dh, dz, dk, dv, dlg, dwk,
                             *_strides(dk, dv), *common, **meta)
        grads = [None] * 5
        if f.gate == 2:  # reverse cumulative sum within each chunk (the kernel added the cross-chunk part)
            chunks = torch.nn.functional.pad(dlg, (0, NT * BT - T)).view(B, HKV, NT, BT)
            grads[0] = chunks.flip(-1).cumsum(-1).flip(-1).view(B, HKV, NT * BT)[..., :T]
            if valid is not None:
                grads[0] = grads[0] * valid[:, None, :]
        if f.fmap:
            grads[1], grads[2] = dwq.to(P.wq.dtype), dwk.to(P.wk.dtype)
        if f.mixp:
            grads[3] = delta.sum(dim=(0, 2)).to(P.alpha.dtype)
        if f.ns:
            mw = P.alpha.float().view(1, H, 1, 1) if f.mixp else f.mix_win
            safe_den = torch.where(den > 0, den, 1.0)
            psink = torch.exp(P.sinks.float()[None, :, None, :] - m[..., None]) / safe_den[..., None]
            grads[4] = (-(mw * delta[..., None] * psink).sum(dim=(0, 2))).to(P.sinks.dtype)
        return (dq, dk, dv, None, None, None, None, None, *grads)


def _decode_launch(W: int, D: int, DV: int, G: int, device_is_cuda: bool, feature_buffer: bool = False) -> dict:
    """Launch options of a decode kernel (shared with scripts/kernel_registers.py): value columns per program
    BV (32 on GPU: the step is parallel over B * Hkv x Dv / 32 programs; whole in the interpreter), head-dim
    block BD of the hedgehog projections, the query heads of a kv head as a tile of GP rows and the window as
    WP slots (both padded to ``tl.dot``'s 16), and num_warps: the rotated window (WP x D, fp32) sits in
    registers, and from 16k elements on 4 warps spill (ptxas, sm_90); LoLCATs (``feature_buffer``) shifts a
    W x 2D feature buffer beside it."""
    WP = max(16, _next_pow2(W))
    return dict(BV=min(DV, 32) if device_is_cuda else DV, BD=min(D, 32), GP=max(16, _next_pow2(G)), WP=WP,
                num_warps=8 if (2 if feature_buffer else 1) * WP * D >= 16384 else 4)


def _last_column(key_valid) -> tuple[int, int]:
    """(batch stride, offset of the last column) of the key-validity mask, which the decode kernels read in
    place for this step's token; (0, 0) without a mask."""
    if key_valid is None:
        return 0, 0
    return key_valid.stride(0), (key_valid.shape[1] - 1) * key_valid.stride(1)


def _decode(core, q, k, v, cos, sin, hidden, key_valid, scale, state):
    """One decode step (T = 1) through ``_hybrid_decode``: new state tensors in the reference's layout."""
    spec = core.spec
    B, H, _, D = q.shape
    HKV = k.shape[1]
    G, DV = H // HKV, v.shape[-1]
    f = _flags(spec, D)
    P = _state_params(core, None)
    q, k, v = _lastdim_contig(q), _lastdim_contig(k), _lastdim_contig(v)
    cos, sin, scb, _ = _cos_sin(cos, sin, B, 1, D)
    o = torch.empty(B, H, 1, DV, device=q.device, dtype=v.dtype)
    new_state = {}
    dummy = o
    s_old = s_new = kb = vb = kb_new = vb_new = wvalid_old = wvalid_new = hid = gw = gb = dummy
    if f.gate == 2:  # the kernel takes logsigmoid(gate_proj(hidden)) of the step itself
        hid, gw, gb = _lastdim_contig(hidden), core.gate_proj.weight, core.gate_proj.bias
    W = 1
    if f.has_lin:
        s_old = state["linear"].float().contiguous()
        s_new = torch.empty_like(s_old)
        new_state["linear"] = s_new
    if f.has_win:
        W = spec.window
        kb, vb = state["k"].contiguous(), state["v"].contiguous()
        kb_new, vb_new = torch.empty_like(kb), torch.empty_like(vb)
        wvalid_old = state["valid"].contiguous()
        wvalid_new = torch.empty_like(wvalid_old)
        new_state.update(k=kb_new, v=vb_new, valid=wvalid_new)
    cfg = _decode_launch(W, D, DV, G, _on_gpu(q))
    _hybrid_decode[(B * HKV, DV // cfg["BV"])](
        q, k, v, cos, sin, _ptr(key_valid, dummy), hid, gw, gb, _ptr(P.wq, dummy), _ptr(P.wk, dummy),
        _ptr(P.alpha, dummy), _ptr(P.sinks, dummy), s_old, s_new, kb, vb, kb_new, vb_new, wvalid_old, wvalid_new, o,
        q.stride(0), q.stride(1), k.stride(0), k.stride(1), v.stride(0), v.stride(1), scb,
        o.stride(0), o.stride(1), *_last_column(key_valid), hid.stride(0), gw.stride(0), gw.shape[-1],
        HKV, float(scale), float(spec.gate_scale), f.mix_lin, f.mix_win, float(spec.eps),
        G=G, D=D, DV=DV, W=W, HAS_LIN=f.has_lin, HAS_WIN=f.has_win, GATE=f.gate, FMAP=f.fmap, NORM=f.norm,
        NS=f.ns, MIXP=f.mixp, HAS_KV=key_valid is not None, **cfg,
    )
    return _weight_output(core, o), new_state


def _reference(core, q_raw, k_raw, v, cos, sin, hidden, scale, key_valid, softcap, state):
    q_rope, k_rope = _apply_rope(q_raw, cos, sin), _apply_rope(k_raw, cos, sin)
    T = q_raw.shape[2]
    return core(q_raw, k_raw, v, q_rope, k_rope, hidden, scale, key_valid, softcap, state,
                recurrent=(T == 1 and state is not None))


def _learned_inputs(core, hidden):
    """The learned parameters the kernels read, as autograd inputs (gradients flow back to them).

    The learned gate's logits are a small linear map of the hidden states: torch computes the per-token
    per-kv-head log-gate ``logsigmoid(gate_proj(hidden))`` (B, Hkv, T) and the kernel takes it from there;
    ``hidden=None`` leaves it out (the decode kernel computes it from ``gate_proj``'s weights itself)."""
    f = _flags(core.spec)
    lg = wq = wk = alpha = sinks = None
    if f.gate == 2 and hidden is not None:
        lg = torch.nn.functional.logsigmoid(core.gate_proj(hidden).float()).transpose(1, 2)
    if f.fmap:
        wq, wk = core.feature_map_q.weight, core.feature_map_k.weight
    if f.mixp:
        alpha = 1.0 / core.linear_weight if _weighted_linear(core.spec) else core.mix_alpha
    if f.ns:
        sinks = core.sinks
    return lg, wq, wk, alpha, sinks


def _state_params(core, hidden) -> _Params:
    """The learned inputs as plain contiguous tensors, for the no-grad calls with a decoding state."""
    with torch.no_grad():
        return _Params(*(x.contiguous() if x is not None else None for x in _learned_inputs(core, hidden)))


def hybrid_attention_kernel(core, q_raw, k_raw, v, cos, sin, hidden, scale, key_valid=None, softcap=None,
                            state=None):
    """Fused hybrid attention (see module docstring); falls back to ``core(...)`` when not covered."""
    if kernel_fallback_reason(core, q_raw, k_raw, v, softcap, state) is not None:
        return _reference(core, q_raw, k_raw, v, cos, sin, hidden, scale, key_valid, softcap, state)
    return run_kernels(core, q_raw, k_raw, v, cos, sin, hidden, scale, key_valid, state)


def run_kernels(core, q_raw, k_raw, v, cos, sin, hidden, scale, key_valid=None, state=None):
    """The kernel path of ``hybrid_attention_kernel``, unchecked: only for calls ``kernel_fallback_reason``
    accepts (and for ``shared_memory.drive``, which asks what those calls launch)."""
    spec = core.spec
    B, H, T, D = q_raw.shape
    if T == 1 and state is not None:
        if spec.shared:
            return _decode_lolcats(core, q_raw, k_raw, v, cos, sin, key_valid, scale, state)
        return _decode(core, q_raw, k_raw, v, cos, sin, hidden, key_valid, scale, state)
    valid = key_valid.to(torch.int8).contiguous() if key_valid is not None else None
    if state is None and spec.shared:
        cos_t, sin_t, _, _ = _cos_sin(cos, sin, B, T, D)
        out = LolcatsAttentionFunction.apply(
            _lastdim_contig(q_raw), _lastdim_contig(k_raw), _lastdim_contig(v), cos_t, sin_t, valid,
            core.feature_map_q.weight, core.feature_map_k.weight, core.window_factor, spec.window, scale,
            lolcats_config(D, _on_gpu(q_raw)))
        return out, None
    if state is None:
        learned = _learned_inputs(core, hidden)
        out = HybridAttentionFunction.apply(q_raw, k_raw, v, cos, sin, valid, spec, scale, *learned)
        return _weight_output(core, out), None
    # Prefill into a fresh state (checked: empty window buffer, no grad).
    if spec.shared:
        return _prefill_lolcats(core, q_raw, k_raw, v, cos, sin, hidden, scale, key_valid, state)
    q, k, vv = _lastdim_contig(q_raw), _lastdim_contig(k_raw), _lastdim_contig(v)
    s0 = state["linear"] if spec.has_linear else None
    out, _, _, st = _fwd(q, k, vv, cos, sin, valid, spec, scale, _state_params(core, hidden), s0=s0,
                         want_state=spec.has_linear)
    new_state = _window_tail(state, k_raw, v, cos, sin, key_valid, spec.window) if spec.has_window else {}
    if spec.has_linear:
        new_state["linear"] = st
    return _weight_output(core, out), new_state


def _key_valid_or_ones(key_valid, B: int, device) -> torch.Tensor:
    """The validity of the keys of a prefill (B, T) as bool, all True without a mask."""
    return key_valid.bool() if key_valid is not None else torch.ones(B, 1, dtype=torch.bool, device=device)


def _window_tail(state, k_raw, v, cos, sin, key_valid, w: int) -> dict:
    """Window buffers after a prefill of T tokens: the last ``w`` rotated keys, values and validities (older
    buffer contents first when T < w), in the reference's layout."""
    B, _, T, _ = k_raw.shape
    tail = min(w, T)
    k_tail = _apply_rope(k_raw[:, :, -tail:], cos[:, -tail:] if cos.shape[1] == T else cos,
                         sin[:, -tail:] if sin.shape[1] == T else sin)
    valid = _key_valid_or_ones(key_valid, B, v.device).expand(B, T)
    return dict(
        k=torch.cat([state["k"], k_tail.to(state["k"].dtype)], dim=2)[:, :, -w:],
        v=torch.cat([state["v"], v[:, :, -tail:].to(state["v"].dtype)], dim=2)[:, :, -w:],
        valid=torch.cat([state["valid"], valid[:, -tail:]], dim=1)[:, -w:],
    )


def _prefill_lolcats(core, q_raw, k_raw, v, cos, sin, hidden, scale, key_valid, state):
    """LoLCATs prefill into a fresh state (checked: empty window and linear state, no grad): the fused
    kernels' output (nothing precedes the prompt), then the state in the reference's layout: the last W
    keys in the window buffers (their features in ``kfeat``), the older keys summed into the linear state
    (features x [v, 1])."""
    out, _ = hybrid_attention_kernel(core, q_raw, k_raw, v, cos, sin, hidden, scale, key_valid, None, None)
    B, _, T, _ = k_raw.shape
    w = core.spec.window
    valid = _key_valid_or_ones(key_valid, B, v.device).expand(B, T)[:, None, :, None].float()
    new_state = _window_tail(state, k_raw, v, cos, sin, key_valid, w)
    tail = min(w, T)
    kf_tail = core.feature_map_k(k_raw[:, :, -tail:]) * valid[:, :, -tail:]
    new_state["kfeat"] = torch.cat([state["kfeat"], kf_tail.to(state["kfeat"].dtype)], dim=2)[:, :, -w:]
    linear = state["linear"]
    if T > w:
        old = valid[:, :, : T - w]
        v_old = v[:, :, : T - w].float()
        v_old = torch.cat([v_old, torch.ones_like(v_old[..., :1])], dim=-1) * old
        linear = linear + torch.einsum("bhtf,bhtd->bhfd", core.feature_map_k(k_raw[:, :, : T - w]) * old, v_old)
    new_state["linear"] = linear
    return out, new_state


def _decode_lolcats(core, q, k, v, cos, sin, key_valid, scale, state):
    """One LoLCATs decode step through ``_lolcats_decode``: new state tensors in the reference's layout."""
    spec = core.spec
    B, H, _, D = q.shape
    HKV, DV, W = k.shape[1], v.shape[-1], spec.window
    q, k, v = _lastdim_contig(q), _lastdim_contig(k), _lastdim_contig(v)
    cos, sin, scb, _ = _cos_sin(cos, sin, B, 1, D)
    o = torch.empty(B, H, 1, DV, device=q.device, dtype=v.dtype)
    s_old = state["linear"].float().contiguous()
    kb, vb, fb = state["k"].contiguous(), state["v"].contiguous(), state["kfeat"].float().contiguous()
    wvalid_old = state["valid"].contiguous()
    new_state = dict(linear=torch.empty_like(s_old), k=torch.empty_like(kb), v=torch.empty_like(vb),
                     valid=torch.empty_like(wvalid_old), kfeat=torch.empty_like(fb))
    cfg = _decode_launch(W, D, DV, H // HKV, _on_gpu(q), feature_buffer=True)
    with torch.no_grad():
        _lolcats_decode[(B * HKV, DV // cfg["BV"])](
            q, k, v, cos, sin, _ptr(key_valid, o), core.feature_map_q.weight,
            core.feature_map_k.weight, core.window_factor, s_old, new_state["linear"], kb, vb, fb, new_state["k"],
            new_state["v"], new_state["kfeat"], wvalid_old, new_state["valid"], o,
            q.stride(0), q.stride(1), k.stride(0), k.stride(1), v.stride(0), v.stride(1), scb, o.stride(0),
            o.stride(1), *_last_column(key_valid), HKV, float(scale),
            G=H // HKV, D=D, DV=DV, W=W, HAS_KV=key_valid is not None, **cfg,
        )
    return o, new_state
