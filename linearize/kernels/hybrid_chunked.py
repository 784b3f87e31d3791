"""Fused chunk-parallel Triton kernels for the hybrid attention (training / prefill).

Reference these kernels are tested against: ``HybridAttentionCore._chunked``
(``linearize/attention_variants.py``), i.e. ``gla_chunked`` + ``window_attention_chunked``
(``linearize/attention_reference.py``), on the covered subset of ``AttentionSpec``.

Everything is computed from the raw (pre-RoPE) q/k and v inside the kernels: feature maps,
gate, cumulative gates, RoPE, both branches and the mix are never written to memory. The only
intermediate tensors are the chunk-level linear states (one F x Dv matrix per chunk of BT tokens and
kv head, plus the chunk's total log-gate), as in flash-linear-attention's chunk_gla: accumulated in fp32,
stored in ``chunk_state_dtype`` (bf16 for bf16 inputs; loaded back to fp32 wherever they meet fp32 math).
The G query heads of a kv head are handled inside one program, so the GQA repeat never exists.
Layout (strides are passed, nothing is made contiguous): q (B, H, T, D), k/v (B, Hkv, T, D), cos/sin (B or
1, T, D), key_valid (B, T); the output and the gradients are written through their own strides, so the
launchers allocate them like q / k / v (a model's (B, T, H, D) projections seen as (B, H, T, D)) and
neither the model's reshape of the output nor autograd's gradient layout needs a copy.

Forward (3 launches):
* ``_chunk_state`` (grid chunks x B*Hkv x Dv/BV): each chunk's contribution to the state and its total gate.
* ``_chunk_scan`` (grid B*Hkv x D/BK): the inter-chunk recurrence, in place -> start state per chunk.
* ``_hybrid_fwd`` (grid chunks x B*Hkv x Dv/BV): output of a chunk (linear branch from the chunk's
  start state, window branch over the previous W keys, mix) and per row the window max / denominator.
  The chunk's states are F x Dv (F = D, or 2D for hedgehog maps).
Backward (4 launches): ``_chunk_state`` again with the output gradient (states and each chunk's pull on
its start state), ``_chunk_scan`` (forward for states, backward for state gradients, one launch),
``_hybrid_bwd_q`` (dq, delta, gate term) and ``_hybrid_bwd_kv`` (dk, dv, gate gradient), both parallel
over chunks.

A chunk of BT tokens is walked in tiles of BC rows (``_blocks`` in ``__init__.py``; on GPU one tile per
chunk): the in-tile attention is one BC x BC matrix, the state is stepped in registers from tile to tile,
and the window branch walks its keys in blocks of BC. Numerics: with a per-head gate (or none) the in-tile
decay ``exp(b_t - b_s)`` is exact. The key gate's decay differs per key dimension, so it is factorised, per
sub-block of SUB query rows (16 on GPU), at the row r before the sub-block: ``exp(b_t - b_r) * exp(b_r - b_s)``
(``_key_sub``). The largest exponent is ``SUB * max|g|``: fp32 overflow would need ``|k_raw|`` to average
> 80 over 16 tokens. Chunk-level summaries only use exponents <= 0.
``tl.dot`` takes its operands in the input dtype (``_mm``: bf16 / fp16 tensor cores and half the staged
shared memory of fp32; fp32 inputs keep fp32 dots) and accumulates in fp32; decays, softmax statistics
and accumulators stay fp32, states are summed in fp32 (stored per ``chunk_state_dtype``); tiles that only
feed dots are held in the input dtype and upcast where they meet fp32 math. The key gate's factorised
terms (beyond fp16's range from ``e^11`` on) take fp32 dots with fp16 inputs.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

# The interpreter's tl.dot on bf16 operands is wrong (numpy has no bf16); there the operands are rounded
# to bf16 and multiplied in fp32 instead, which gives the same numbers.
_EMULATE_BF16_DOT = tl.constexpr(os.environ.get("TRITON_INTERPRET", "0") == "1")


def chunk_state_dtype(act_dtype, exact: bool = False):
    """Storage dtype of the chunk states and of their gradients (both accumulated in fp32).

    bf16 inputs store them in bf16, as flash-linear-attention's chunk_gla does by default: they feed bf16
    dots, so the bf16 rounding happens there anyway (the key gate's boundary term ``sum S * dS`` is the one
    fp32 use), and they are most of the layer's training memory above its inputs and outputs
    (scripts/layer_memory.py). fp16 and fp32 inputs keep fp32 (over long sequences the states can pass
    fp16's range), and so does ``exact``: the learned gate, whose backward splits the state gradient into
    two bf16 halves for an fp32-accurate dot (``_mm_split``) so that its per-token terms cancel, and a
    prefill, whose final decoding state the scan sums from the stored chunk contributions (bf16 ones
    doubled its error against the fp32 reference, 3.4e-3 -> 6.1e-3 at T = 320)."""
    return torch.bfloat16 if (act_dtype == torch.bfloat16 and not exact) else torch.float32


@triton.jit
def _mm(a, b, DT: tl.constexpr):
    """a @ b with both operands cast to DT (the input dtype: bf16 / fp16 tensor cores, half the staged
    shared memory of fp32; fp32 inputs keep fp32 dots), fp32 accumulation."""
    if _EMULATE_BF16_DOT and DT == tl.bfloat16:
        return tl.dot(a.to(DT).to(tl.float32), b.to(DT).to(tl.float32))
    else:
        return tl.dot(a.to(DT), b.to(DT))


@triton.jit
def _pow2_scale(x):
    """The power of two at or above max |x| (1e-30 floor): dividing by it keeps every entry in [-1, 1]."""
    return tl.exp2(tl.ceil(tl.log2(tl.maximum(tl.max(tl.max(tl.abs(x.to(tl.float32)), 1), 0), 1e-30))))


@triton.jit
def _mm_wide(a, b, DT: tl.constexpr, WIDE: tl.constexpr):
    """a @ b where, with WIDE, an operand may exceed fp16's range: the normalised branch's gradients carry
    1 / den, up to 1 / eps where a query's features barely meet the keys'. In fp16 each operand is divided
    by a power of two (exact) to at most 1 in magnitude and the product scaled back; bf16 and fp32 have
    fp32's range, so a plain ``_mm``."""
    if WIDE and DT == tl.float16:
        sa = _pow2_scale(a)
        sb = _pow2_scale(b)
        return _mm(a / sa, b / sb, DT) * (sa * sb)
    else:
        return _mm(a, b, DT)


@triton.jit
def _mm_split(a, b, DT: tl.constexpr, WIDE: tl.constexpr):
    """a @ b for ``a`` exact in DT and ``b`` fp32: ``b`` split into its DT-rounded high part and the DT-rounded
    remainder, two DT dots (about twice DT's mantissa bits of ``b``; fp32 inputs: one fp32 dot). For the
    learned gate's state terms, whose per-token gradient terms nearly cancel in the reverse cumsum. WIDE:
    ``b`` scaled into fp16's range first, as in ``_mm_wide``."""
    if DT == tl.float32:
        return _mm(a, b, DT)
    else:
        if WIDE and DT == tl.float16:
            sb = _pow2_scale(b)
            bs = b / sb
            hi = bs.to(DT)
            lo = (bs - hi.to(tl.float32)).to(DT)
            return (_mm(a, hi, DT) + _mm(a, lo, DT)) * sb
        else:
            hi = b.to(DT)
            lo = (b - hi.to(tl.float32)).to(DT)
            return _mm(a, hi, DT) + _mm(a, lo, DT)


@triton.jit
def _softmax_rows(x):
    m = tl.max(x, 1)
    e = tl.exp(x - m[:, None])
    return e / tl.sum(e, 1)[:, None]


@triton.jit
def _logsigmoid(x):
    return tl.minimum(x, 0.0) - tl.log(1.0 + tl.exp(-tl.abs(x)))


@triton.jit
def _rot_half_t(y, BT: tl.constexpr, D: tl.constexpr):
    """Transpose of rotate_half: [y2, -y1]."""
    y3 = tl.permute(tl.reshape(y, (BT, 2, D // 2)), (0, 2, 1))
    a, b = tl.split(y3)
    return tl.reshape(tl.permute(tl.join(b, -a), (0, 2, 1)), (BT, D))


@triton.jit
def _load_rows(ptr, base, t, T, stride_t, cols, other):
    return tl.load(ptr + base + t[:, None] * stride_t + cols[None, :], mask=(t < T)[:, None], other=other).to(
        tl.float32
    )


@triton.jit
def _valid_rows(valid_ptr, b, t, T, HAS_VALID: tl.constexpr):
    inside = t < T
    if HAS_VALID:
        ok = tl.load(valid_ptr + b * T + t, mask=inside, other=0) != 0
        inside = inside & ok
    return inside


@triton.jit
def _rope_rows(ptr, base, t, T, stride_t, cols, cos_ptr, sin_ptr, cbase, stride_ct, D: tl.constexpr):
    """RoPE of rows read from memory, x * cos + rotate_half(x) * sin, rotate_half read as a second load
    at the half-swapped columns (cache hits) instead of a register shuffle of the tile."""
    x = _load_rows(ptr, base, t, T, stride_t, cols, 0.0)
    xs = _load_rows(ptr, base, t, T, stride_t, (cols + D // 2) % D, 0.0)
    c = _load_rows(cos_ptr, cbase, t, T, stride_ct, cols, 0.0)
    sn = _load_rows(sin_ptr, cbase, t, T, stride_ct, cols, 0.0)
    return x * c + tl.where(cols[None, :] < D // 2, -xs, xs) * sn


@triton.jit
def _rope_grad(dx, cos_ptr, sin_ptr, cbase, t, T, stride_ct, cols, BT: tl.constexpr, D: tl.constexpr):
    c = _load_rows(cos_ptr, cbase, t, T, stride_ct, cols, 0.0)
    s = _load_rows(sin_ptr, cbase, t, T, stride_ct, cols, 0.0)
    return dx * c + _rot_half_t(dx * s, BT, D)


@triton.jit
def _fmap(x, w_ptr, head, cols, R: tl.constexpr, D: tl.constexpr, FMAP: tl.constexpr, DT: tl.constexpr):
    """Feature map of raw rows (R, D) -> (R, F): softmax (F = D) or hedgehog [softmax(xW), softmax(-xW)]."""
    if FMAP == 1:
        w = tl.load(w_ptr + head * D * D + cols[:, None] * D + cols[None, :]).to(tl.float32)
        p = _mm(x, w, DT)
        return tl.reshape(tl.permute(tl.join(_softmax_rows(p), _softmax_rows(-p)), (0, 2, 1)), (R, 2 * D))
    else:
        return _softmax_rows(x)


@triton.jit
def _fmap_bwd(x, dphi, w_ptr, dw_ptr, head, cols, R: tl.constexpr, D: tl.constexpr, FMAP: tl.constexpr,
              DT: tl.constexpr):
    """dx from dphi; hedgehog also adds x^T dproj to dw (fp32, atomic: one partial per program)."""
    if FMAP == 1:
        widx = head * D * D + cols[:, None] * D + cols[None, :]
        w = tl.load(w_ptr + widx).to(tl.float32)
        p = _mm(x, w, DT)
        a = _softmax_rows(p)
        c = _softmax_rows(-p)
        da, dc = tl.split(tl.permute(tl.reshape(dphi, (R, 2, D)), (0, 2, 1)))
        dp = a * (da - tl.sum(a * da, 1)[:, None]) - c * (dc - tl.sum(c * dc, 1)[:, None])
        tl.atomic_add(dw_ptr + widx, _mm(tl.trans(x), dp, DT))
        return _mm(dp, tl.trans(w), DT)
    else:
        sm = _softmax_rows(x)
        return sm * (dphi - tl.sum(sm * dphi, 1)[:, None])


@triton.jit
def _gate_cum(kraw, lg_ptr, lgbase, t, T, valf, gate_scale, GATE: tl.constexpr):
    """In-chunk cumulative masked log-gates and the chunk total: (BT, D) and (D,) for the key gate,
    (BT, 1) and (1,) for a per-head gate or none.

    The per-head gate is summed as a 1-D vector: ``tl.cumsum`` over a (BT, 1) tensor whose result
    meets a ``tl.dot`` layout does not compile with Triton 3.6 (triton-lang/triton#7817)."""
    if GATE == 1:
        g = _logsigmoid(kraw) / gate_scale * valf[:, None]
        return tl.cumsum(g, 0), tl.sum(g, 0)
    elif GATE == 2:
        g = tl.load(lg_ptr + lgbase + t, mask=t < T, other=0.0).to(tl.float32) * valf
        return tl.cumsum(g, 0)[:, None], tl.sum(g[:, None], 0)
    else:
        z = tl.zeros_like(valf)[:, None]
        return z, tl.sum(z, 0)


@triton.jit
def _gate_zero(D: tl.constexpr, GATE: tl.constexpr):
    """A zero log-gate total in ``_gate_cum``'s shape: (D,) for the key gate, (1,) otherwise."""
    if GATE == 1:
        return tl.zeros((D,), dtype=tl.float32)
    else:
        return tl.zeros((1,), dtype=tl.float32)


@triton.jit
def _decay(cum, mask, R: tl.constexpr):
    """exp(b_t - b_s) for a per-head gate (cum (R, 1)), masked to 0 outside ``mask``."""
    d = cum - tl.reshape(cum, (1, R))
    return tl.where(mask, tl.exp(tl.where(mask, d, 0.0)), 0.0)


@triton.jit
def _mm_gate(a, b, DT: tl.constexpr):
    """Dot of the key gate's factorised decays (``_key_sub``: up to exp(SUB max|g|), beyond fp16's range):
    in DT for bf16 / fp32 (fp32's range), in fp32 for fp16 inputs."""
    if DT == tl.float16:
        return tl.dot(a, b)
    else:
        return _mm(a, b, DT)


@triton.jit
def _key_sub(cum, i, BC: tl.constexpr, SUB: tl.constexpr):
    """The key gate's decay exp(b_t - b_s) for the query rows t of sub-block i (rows [SUB i, SUB i + SUB)),
    factorised at the row r before the sub-block (b_r = 0 for the first): (eq, ek) with
    eq_t = exp(b_t - b_r) <= 1 on the sub-block's rows (0 elsewhere) and ek_s = exp(b_r - b_s) on the rows
    before its end (<= 1 up to r, at most exp(SUB max|g|) inside; 0 after). Every causal pair (t, s) is
    covered once, by t's sub-block."""
    rows = tl.arange(0, BC)
    ref = tl.sum(tl.where((rows == i * SUB - 1)[:, None], cum, 0.0), 0)[None, :]
    own = (rows // SUB == i)[:, None]
    upto = (rows < i * SUB + SUB)[:, None]
    eq = tl.where(own, tl.exp(tl.where(own, cum - ref, 0.0)), 0.0)
    ek = tl.where(upto, tl.exp(tl.where(upto, ref - cum, 0.0)), 0.0)
    return eq, ek


@triton.jit
def _intra(qf, kf, cum, mask, BC: tl.constexpr, SUB: tl.constexpr, GATE: tl.constexpr, DT: tl.constexpr):
    """A_ts = sum_f qf_tf kf_sf exp(b_tf - b_sf) on ``mask`` (key gate: factorised per sub-block, ``_key_sub``)."""
    if GATE == 1:
        a = tl.zeros((BC, BC), dtype=tl.float32)
        for i in tl.static_range(BC // SUB):
            eq, ek = _key_sub(cum, i, BC, SUB)
            a += _mm_gate(qf * eq, tl.trans(kf * ek), DT)
    elif GATE == 2:
        a = _mm(qf, tl.trans(kf), DT) * _decay(cum, mask, BC)
    else:
        a = _mm(qf, tl.trans(kf), DT)
    return tl.where(mask, a, 0.0)


@triton.jit
def _intra_left(da, kf, cum, mask, BC: tl.constexpr, SUB: tl.constexpr, GATE: tl.constexpr, DT: tl.constexpr,
                WIDE: tl.constexpr):
    """sum_s da_ts kf_s exp(b_t - b_s)  (da already masked; WIDE: da may exceed fp16, see ``_mm_wide``)."""
    if GATE == 1:
        out = tl.zeros(kf.shape, dtype=tl.float32)
        for i in tl.static_range(BC // SUB):
            eq, ek = _key_sub(cum, i, BC, SUB)
            out += _mm_gate(da, kf * ek, DT) * eq
        return out
    elif GATE == 2:
        return _mm_wide(da * _decay(cum, mask, BC), kf, DT, WIDE)
    else:
        return _mm_wide(da, kf, DT, WIDE)


@triton.jit
def _intra_right(da, qf, cum, mask, BC: tl.constexpr, SUB: tl.constexpr, GATE: tl.constexpr, DT: tl.constexpr,
                 WIDE: tl.constexpr):
    """sum_t da_ts qf_t exp(b_t - b_s)  (da already masked; WIDE: da may exceed fp16, see ``_mm_wide``)."""
    if GATE == 1:
        out = tl.zeros(qf.shape, dtype=tl.float32)
        for i in tl.static_range(BC // SUB):
            eq, ek = _key_sub(cum, i, BC, SUB)
            out += _mm_gate(tl.trans(da), qf * eq, DT) * ek
        return out
    elif GATE == 2:
        return _mm_wide(tl.trans(da * _decay(cum, mask, BC)), qf, DT, WIDE)
    else:
        return _mm_wide(tl.trans(da), qf, DT, WIDE)


@triton.jit
def _chunk_state(
    q_ptr, k_ptr, v_ptr, valid_ptr, do_ptr, lg_ptr, wq_ptr, wk_ptr, rinv_ptr, dden_ptr,
    h_ptr, z_ptr, dh_ptr, dz_ptr, gtot_ptr,
    stride_qb, stride_qh, stride_qt,
    stride_kb, stride_kh, stride_kt,
    stride_vb, stride_vh, stride_vt,
    stride_ob, stride_oh, stride_ot,
    T, HKV, NT, gate_scale, mix_lin,
    G: tl.constexpr, D: tl.constexpr, F: tl.constexpr, DV: tl.constexpr, BV: tl.constexpr, BT: tl.constexpr,
    BC: tl.constexpr, GATE: tl.constexpr, FMAP: tl.constexpr, NORM: tl.constexpr, HAS_VALID: tl.constexpr,
    STATES: tl.constexpr, WITH_DO: tl.constexpr,
):
    """Chunk-level summaries, parallel over (chunk, batch * kv head, blocks of BV value columns).

    STATES: h[n] <- sum_s (phi(k_s) exp(G_n - b_s))^T v_s (the chunk's contribution to the next state),
            z[n] <- the same with v = 1 (NORM), gtot[n] <- G_n the chunk's total log-gate.
    WITH_DO: dh[n] <- sum_heads (phi(q_t) exp(b_t))^T dnum_t (the chunk's pull on its start state),
             dz[n] <- the same with dden_t (NORM).
    b is the in-chunk cumulative log-gate; every exponent is <= 0. The chunk is read in tiles of BC rows.
    The F x BV block of a program is its accumulator (fp32 registers), so BV bounds the register use;
    z, dz and gtot come from the first value block.
    """
    DT: tl.constexpr = q_ptr.dtype.element_ty
    n = tl.program_id(0)
    pid = tl.program_id(1)
    pid_v = tl.program_id(2)
    b = (pid // HKV).to(tl.int64)
    hk = (pid % HKV).to(tl.int64)
    rows = tl.arange(0, BC)
    cols = tl.arange(0, D)
    fcols = tl.arange(0, F)
    vcols = pid_v * BV + tl.arange(0, BV)
    cidx = (b * HKV + hk) * NT + n
    hidx = cidx * F * DV + fcols[:, None] * DV + vcols[None, :]
    acc = tl.zeros((F, BV), dtype=tl.float32)
    zacc = tl.zeros((F,), dtype=tl.float32)
    dS = tl.zeros((F, BV), dtype=tl.float32)
    dz = tl.zeros((F,), dtype=tl.float32)
    before = _gate_zero(D, GATE)  # the chunk's log-gate before the current tile
    for i in range(0, BT // BC):
        t = n * BT + i * BC + rows
        tin = t < T
        valf = _valid_rows(valid_ptr, b, t, T, HAS_VALID).to(tl.float32)
        kraw = _load_rows(k_ptr, b * stride_kb + hk * stride_kh, t, T, stride_kt, cols, 0.0)
        cum, total = _gate_cum(kraw, lg_ptr, (b * HKV + hk) * T, t, T, valf, gate_scale, GATE)
        if STATES:
            kf = _fmap(kraw, wk_ptr, hk, cols, BC, D, FMAP, DT) * valf[:, None]
            vv = _load_rows(v_ptr, b * stride_vb + hk * stride_vh, t, T, stride_vt, vcols, 0.0)
            kend = kf * tl.exp(total[None, :] - cum)
            acc = acc * tl.exp(total)[:, None] + _mm(tl.trans(kend), vv, DT)
            if NORM:
                zacc = zacc * tl.exp(total) + tl.sum(kend, 0)
        if WITH_DO:
            e_cum = tl.exp(before[None, :] + cum)
            for j in range(0, G):
                h = hk * G + j
                qt = _fmap(_load_rows(q_ptr, b * stride_qb + h * stride_qh, t, T, stride_qt, cols, 0.0), wq_ptr, h,
                           cols, BC, D, FMAP, DT) * e_cum
                do = _load_rows(do_ptr, b * stride_ob + h * stride_oh, t, T, stride_ot, vcols, 0.0)
                do = do * (valf * mix_lin)[:, None]
                if NORM:
                    rbase = (b * HKV * G + h) * T
                    do = do * tl.load(rinv_ptr + rbase + t, mask=tin, other=0.0)[:, None]
                    dz += tl.sum(qt * tl.load(dden_ptr + rbase + t, mask=tin, other=0.0)[:, None], 0)
                dS += _mm_wide(tl.trans(qt), do, DT, NORM)
        before += total
    if STATES:
        tl.store(h_ptr + hidx, acc)
        if pid_v == 0:
            if NORM:
                tl.store(z_ptr + cidx * F + fcols, zacc)
            if GATE == 1:
                tl.store(gtot_ptr + cidx * D + cols, before)
            if GATE == 2:
                tl.store(gtot_ptr + cidx + tl.arange(0, 1), before)
    if WITH_DO:
        tl.store(dh_ptr + hidx, dS)
        if NORM:
            if pid_v == 0:
                tl.store(dz_ptr + cidx * F + fcols, dz)


@triton.jit
def _scan_inputs(sp, zp, gtot_ptr, c, idx, krows, F: tl.constexpr, DV: tl.constexpr, D: tl.constexpr,
                 BK: tl.constexpr, GATE: tl.constexpr, NORM: tl.constexpr):
    """What the scan reads for chunk c: its F x Dv summary (BK rows, in the stored dtype: held so while in
    flight), its z summary (NORM) and its total log-gate per row (zeros without a gate)."""
    L = tl.load(sp + c * F * DV + idx)
    Lz = tl.zeros((BK,), dtype=tl.float32)
    g = tl.zeros((BK,), dtype=tl.float32)
    if NORM:
        Lz = tl.load(zp + c * F + krows)
    if GATE == 1:
        g = tl.load(gtot_ptr + c * D + krows)
    if GATE == 2:
        g = tl.load(gtot_ptr + c + krows * 0)
    return L, Lz, g


@triton.jit
def _chunk_scan(
    h_ptr, z_ptr, dh_ptr, dz_ptr, gtot_ptr, s0_ptr, st_ptr, NT, FIRST,
    D: tl.constexpr, F: tl.constexpr, DV: tl.constexpr, BK: tl.constexpr,
    GATE: tl.constexpr, NORM: tl.constexpr, HAS_S0: tl.constexpr, STORE_ST: tl.constexpr,
):
    """Inter-chunk recurrence over the chunk summaries, in place (accumulated in fp32).

    mode 0 (program_id(2) + FIRST): h[n] (chunk contribution) -> state at the start of chunk n
        (S_0 = s0; S_{n+1} = exp(G_n) S_n + h[n]); the final state goes to ``st``. Same for z.
    mode 1: dh[n] (chunk's pull) -> gradient w.r.t. the state at the END of chunk n
        (X_{NT-1} = 0; X_{n-1} = dh[n] + exp(G_n) X_n). Same for dz.
    Parallel over (batch * kv head, blocks of BK feature rows); each program walks all NT chunks (1024 at
    T = 32k), one load of a chunk's summaries per step. The loads run two chunks ahead of the recurrence
    (three in flight instead of one; nothing else hides their latency in so few programs); a chunk's slot
    is read two steps before the step that overwrites it, by the thread that writes it.
    ``s0`` / ``st`` are in the decoding state's layout: F x Dv, or F x (Dv + 1) with z as the last column.
    """
    pid = tl.program_id(0).to(tl.int64)
    kblk = tl.program_id(1)
    mode = tl.program_id(2) + FIRST
    krows = kblk * BK + tl.arange(0, BK)
    vcols = tl.arange(0, DV)
    idx = krows[:, None] * DV + vcols[None, :]
    SW: tl.constexpr = DV + NORM
    sbase = pid * F * SW + krows * SW
    S = tl.zeros((BK, DV), dtype=tl.float32)
    Z = tl.zeros((BK,), dtype=tl.float32)
    if mode == 0:
        sp, zp = h_ptr, z_ptr
        if HAS_S0:
            S += tl.load(s0_ptr + sbase[:, None] + vcols[None, :])
            if NORM:
                Z += tl.load(s0_ptr + sbase + DV)
    else:
        sp, zp = dh_ptr, dz_ptr
    first = pid * NT + tl.where(mode == 0, 0, NT - 1)
    step = tl.where(mode == 0, 1, -1)
    last = tl.maximum(NT - 1, 0)
    L0, Lz0, g0 = _scan_inputs(sp, zp, gtot_ptr, first, idx, krows, F, DV, D, BK, GATE, NORM)
    L1, Lz1, g1 = _scan_inputs(sp, zp, gtot_ptr, first + step * tl.minimum(1, last), idx, krows, F, DV, D, BK,
                               GATE, NORM)
    for i in range(0, NT):
        c = first + step * i
        L2, Lz2, g2 = _scan_inputs(sp, zp, gtot_ptr, first + step * tl.minimum(i + 2, last), idx, krows, F, DV, D,
                                   BK, GATE, NORM)
        tl.store(sp + c * F * DV + idx, S)
        if NORM:
            tl.store(zp + c * F + krows, Z)
        e = tl.exp(g0)
        S = S * e[:, None] + L0.to(tl.float32)
        Z = Z * e + Lz0
        L0, Lz0, g0 = L1, Lz1, g1
        L1, Lz1, g1 = L2, Lz2, g2
    if STORE_ST:
        if mode == 0:
            tl.store(st_ptr + sbase[:, None] + vcols[None, :], S)
            if NORM:
                tl.store(st_ptr + sbase + DV, Z)


@triton.jit
def _window_mix(h, alpha_ptr, mix_win, MIXP: tl.constexpr):
    if MIXP:
        return tl.load(alpha_ptr + h).to(tl.float32)
    else:
        return mix_win


@triton.jit
def _window_online(qr, tq, t0, b, valid_ptr, k_ptr, v_ptr, cos_ptr, sin_ptr, kbase, vbase, cbase, T,
                   stride_kt, stride_vt, stride_ct, rows, cols, vcols, scale, BC: tl.constexpr, BV: tl.constexpr,
                   W: tl.constexpr, D: tl.constexpr, HAS_VALID: tl.constexpr, DT: tl.constexpr):
    """Online softmax of the rotated query rows ``qr`` (the BC tokens ``tq`` of the tile starting at ``t0``)
    over the keys of their window, in blocks of BC keys: unnormalised output (BC, BV), denominator and row
    max (0 for a row that sees no key)."""
    m_i = tl.full((BC,), float("-inf"), tl.float32)
    l_i = tl.zeros((BC,), dtype=tl.float32)
    accw = tl.zeros((BC, BV), dtype=tl.float32)
    lo = tl.maximum(t0 - W + 1, 0) // BC
    for kb in range(lo, t0 // BC + 1):
        s = kb * BC + rows
        valid_s = _valid_rows(valid_ptr, b, s, T, HAS_VALID)
        kr = _rope_rows(k_ptr, kbase, s, T, stride_kt, cols, cos_ptr, sin_ptr, cbase, stride_ct, D).to(DT)
        vs = _load_rows(v_ptr, vbase, s, T, stride_vt, vcols, 0.0)
        sc = _mm(qr, tl.trans(kr), DT) * scale
        ok = (s[None, :] <= tq[:, None]) & (s[None, :] > tq[:, None] - W) & valid_s[None, :]
        sc = tl.where(ok, sc, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(sc, 1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        alpha = tl.exp(m_i - m_safe)
        p = tl.exp(sc - m_safe[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        accw = accw * alpha[:, None] + _mm(p, vs, DT)
        m_i = m_new
    return accw, l_i, tl.where(m_i == float("-inf"), 0.0, m_i)


@triton.jit
def _hybrid_fwd(
    q_ptr, k_ptr, v_ptr, cos_ptr, sin_ptr, valid_ptr, lg_ptr, wq_ptr, wk_ptr, alpha_ptr, sinks_ptr,
    o_ptr, m_ptr, den_ptr, h_ptr, z_ptr,
    stride_qb, stride_qh, stride_qt,
    stride_kb, stride_kh, stride_kt,
    stride_vb, stride_vh, stride_vt,
    stride_ob, stride_oh, stride_ot,
    stride_cb, stride_ct,
    T, HKV, NT, scale, gate_scale, mix_lin, mix_win, eps,
    G: tl.constexpr, D: tl.constexpr, F: tl.constexpr, DV: tl.constexpr, BV: tl.constexpr, BT: tl.constexpr,
    BC: tl.constexpr, SUB: tl.constexpr, W: tl.constexpr, HAS_LIN: tl.constexpr, HAS_WIN: tl.constexpr,
    GATE: tl.constexpr, FMAP: tl.constexpr, NORM: tl.constexpr, NS: tl.constexpr, MIXP: tl.constexpr,
    HAS_VALID: tl.constexpr,
):
    """Output of one chunk of BT tokens for all G query heads of a kv head; parallel over chunks.

    The chunk is walked in tiles of BC rows. The linear branch is the state at the tile's start (from
    ``_chunk_scan`` for the first tile, then stepped in registers) read by the decayed queries, plus the
    tile's BC x BC in-tile attention; the window branch runs over the previous W keys in blocks of BC.
    """
    DT: tl.constexpr = q_ptr.dtype.element_ty
    n = tl.program_id(0)
    pid = tl.program_id(1)
    pid_v = tl.program_id(2)
    b = (pid // HKV).to(tl.int64)
    hk = (pid % HKV).to(tl.int64)
    rows = tl.arange(0, BC)
    cols = tl.arange(0, D)
    fcols = tl.arange(0, F)
    vcols = pid_v * BV + tl.arange(0, BV)
    kbase = b * stride_kb + hk * stride_kh
    vbase = b * stride_vb + hk * stride_vh
    cbase = b * stride_cb
    causal = rows[:, None] >= rows[None, :]
    if HAS_LIN:
        cidx = (b * HKV + hk) * NT + n
        S = tl.load(h_ptr + cidx * F * DV + fcols[:, None] * DV + vcols[None, :])
        if BT == BC:  # not stepped: only a dot operand, held in DT (half the registers)
            S = S.to(DT)
        else:
            S = S.to(tl.float32)
        if NORM:
            Z = tl.load(z_ptr + cidx * F + fcols)
    for i in range(0, BT // BC):
        t0 = n * BT + i * BC
        t = t0 + rows
        tin = t < T
        valf = _valid_rows(valid_ptr, b, t, T, HAS_VALID).to(tl.float32)
        if HAS_LIN:
            vv = _load_rows(v_ptr, vbase, t, T, stride_vt, vcols, 0.0).to(DT)  # a dot operand, exact in DT
            kraw = _load_rows(k_ptr, kbase, t, T, stride_kt, cols, 0.0)
            kf = _fmap(kraw, wk_ptr, hk, cols, BC, D, FMAP, DT) * valf[:, None]
            cum, total = _gate_cum(kraw, lg_ptr, (b * HKV + hk) * T, t, T, valf, gate_scale, GATE)
        for j in range(0, G):
            h = hk * G + j
            qbase = b * stride_qb + h * stride_qh
            acc = tl.zeros((BC, BV), dtype=tl.float32)
            if HAS_LIN:
                qf = _fmap(_load_rows(q_ptr, qbase, t, T, stride_qt, cols, 0.0), wq_ptr, h, cols, BC, D, FMAP, DT)
                qt = qf * tl.exp(cum)  # exp(cum) per head: held across heads it would cost a tile of registers
                a = _intra(qf, kf, cum, causal, BC, SUB, GATE, DT)
                lin = _mm(a, vv, DT) + _mm(qt, S, DT)
                if NORM:
                    dn = tl.sum(a, 1) + tl.sum(qt * Z[None, :], 1) + eps
                    lin = lin * tl.where(dn == 0.0, 0.0, 1.0 / tl.where(dn == 0.0, 1.0, dn))[:, None]
                acc += mix_lin * lin
            if HAS_WIN:
                mw = _window_mix(h, alpha_ptr, mix_win, MIXP)
                qr = _rope_rows(q_ptr, qbase, t, T, stride_qt, cols, cos_ptr, sin_ptr, cbase, stride_ct, D)
                accw, l_i, m_fin = _window_online(qr, t, t0, b, valid_ptr, k_ptr, v_ptr, cos_ptr, sin_ptr, kbase,
                                                  vbase, cbase, T, stride_kt, stride_vt, stride_ct, rows, cols,
                                                  vcols, scale, BC, BV, W, D, HAS_VALID, DT)
                if NS > 0:
                    # Sink logits join the denominator only (rescaled to the common maximum).
                    sk = tl.load(sinks_ptr + h * NS + tl.arange(0, NS)).to(tl.float32)
                    m_all = tl.maximum(m_fin, tl.max(sk, 0))
                    r = tl.exp(m_fin - m_all)
                    l_i = l_i * r + tl.sum(tl.exp(sk[None, :] - m_all[:, None]), 1)
                    accw = accw * r[:, None]
                    m_fin = m_all
                acc += mw * (accw / tl.where(l_i == 0.0, 1.0, l_i)[:, None])
                if pid_v == 0:
                    rbase = (b * HKV * G + h) * T
                    tl.store(m_ptr + rbase + t, m_fin, mask=tin)
                    tl.store(den_ptr + rbase + t, l_i, mask=tin)
            acc = acc * valf[:, None]
            obase = b * stride_ob + h * stride_oh
            tl.store(o_ptr + obase + t[:, None] * stride_ot + vcols[None, :], acc.to(o_ptr.dtype.element_ty),
                     mask=tin[:, None])
        if HAS_LIN and BT // BC > 1:
            kend = kf * tl.exp(total[None, :] - cum)
            S = S * tl.exp(total)[:, None] + _mm(tl.trans(kend), vv, DT)
            if NORM:
                Z = Z * tl.exp(total) + tl.sum(kend, 0)


@triton.jit
def _window_block_probs(qr, kr, t, s, valid_s, m, inv_den, scale, W: tl.constexpr, DT: tl.constexpr):
    sc = _mm(qr, tl.trans(kr), DT) * scale
    ok = (s[None, :] <= t[:, None]) & (s[None, :] > t[:, None] - W) & valid_s[None, :]
    return tl.where(ok, tl.exp(tl.where(ok, sc, 0.0) - m[:, None]) * inv_den[:, None], 0.0)


@triton.jit
def _hybrid_bwd_q(
    q_ptr, k_ptr, v_ptr, cos_ptr, sin_ptr, valid_ptr, lg_ptr, wq_ptr, wk_ptr, alpha_ptr,
    do_ptr, m_ptr, den_ptr, h_ptr, z_ptr,
    dq_ptr, delta_ptr, dlq_ptr, rinv_ptr, dden_ptr, dwq_ptr,
    stride_dqb, stride_dqh, stride_dqt,
    stride_qb, stride_qh, stride_qt,
    stride_kb, stride_kh, stride_kt,
    stride_vb, stride_vh, stride_vt,
    stride_ob, stride_oh, stride_ot,
    stride_cb, stride_ct,
    T, HKV, NT, scale, gate_scale, mix_lin, mix_win, eps,
    G: tl.constexpr, D: tl.constexpr, F: tl.constexpr, DV: tl.constexpr, BT: tl.constexpr, BC: tl.constexpr,
    SUB: tl.constexpr, W: tl.constexpr, HAS_LIN: tl.constexpr, HAS_WIN: tl.constexpr, GATE: tl.constexpr,
    FMAP: tl.constexpr, NORM: tl.constexpr, MIXP: tl.constexpr, HAS_VALID: tl.constexpr,
):
    """dq for all G heads of one (chunk, batch, kv head), in tiles of BC rows; dq through its own strides.

    Also per row ``delta = do . o_win`` (unscaled by the mix), per token ``sum_heads phi(q) * dphi(q)``
    (gate gradient) and, normalised, per row 1 / (den + eps) and the denominator's gradient."""
    DT: tl.constexpr = q_ptr.dtype.element_ty
    n = tl.program_id(0)
    pid = tl.program_id(1)
    b = (pid // HKV).to(tl.int64)
    hk = (pid % HKV).to(tl.int64)
    rows = tl.arange(0, BC)
    cols = tl.arange(0, D)
    fcols = tl.arange(0, F)
    vcols = tl.arange(0, DV)
    kbase = b * stride_kb + hk * stride_kh
    vbase = b * stride_vb + hk * stride_vh
    cbase = b * stride_cb
    causal = rows[:, None] >= rows[None, :]
    strict = rows[:, None] > rows[None, :]
    if HAS_LIN:
        cidx = (b * HKV + hk) * NT + n
        S = tl.load(h_ptr + cidx * F * DV + fcols[:, None] * DV + vcols[None, :])
        if BT == BC:  # not stepped: only a dot operand, held in DT (half the registers)
            S = S.to(DT)
        else:
            S = S.to(tl.float32)
        if NORM:
            Z = tl.load(z_ptr + cidx * F + fcols)
    for i in range(0, BT // BC):
        t0 = n * BT + i * BC
        t = t0 + rows
        tin = t < T
        valf = _valid_rows(valid_ptr, b, t, T, HAS_VALID).to(tl.float32)
        if HAS_LIN:
            # vv is a dot operand, exact in DT (upcast where it meets fp32 math): held in DT, half the registers.
            vv = _load_rows(v_ptr, vbase, t, T, stride_vt, vcols, 0.0).to(DT)
            kraw = _load_rows(k_ptr, kbase, t, T, stride_kt, cols, 0.0)
            kf = _fmap(kraw, wk_ptr, hk, cols, BC, D, FMAP, DT) * valf[:, None]
            cum, total = _gate_cum(kraw, lg_ptr, (b * HKV + hk) * T, t, T, valf, gate_scale, GATE)
            if GATE == 1:
                dlq = tl.zeros((BC, F), dtype=tl.float32)
            if GATE == 2:
                dlq = tl.zeros((BC,), dtype=tl.float32)
        if HAS_WIN:
            lo = tl.maximum(t0 - W + 1, 0) // BC
        for j in range(0, G):
            h = hk * G + j
            qbase = b * stride_qb + h * stride_qh
            rbase = (b * HKV * G + h) * T
            do = _load_rows(do_ptr, b * stride_ob + h * stride_oh, t, T, stride_ot, vcols, 0.0) * valf[:, None]
            dq = tl.zeros((BC, D), dtype=tl.float32)
            if HAS_LIN:
                qraw = _load_rows(q_ptr, qbase, t, T, stride_qt, cols, 0.0)
                qf = _fmap(qraw, wq_ptr, h, cols, BC, D, FMAP, DT)
                dnum = do * mix_lin
                # Strictly causal part and diagonal apart (the per-head gate's ``dlq`` leaves the diagonal out:
                # it cancels exactly against the key side; the key gate's cancels in fp32).
                da = _mm(dnum, tl.trans(vv), DT)
                dstate = _mm(dnum, tl.trans(S), DT)
                diag = tl.sum(dnum * vv.to(tl.float32), 1)
                e_cum = tl.exp(cum)  # per head, as in the forward (registers)
                if NORM or GATE == 2:
                    a = _intra(qf, kf, cum, causal, BC, SUB, GATE, DT)
                if NORM:
                    qt = qf * e_cum
                    dn = tl.sum(a, 1) + tl.sum(qt * Z[None, :], 1) + eps
                    rinv = tl.where(dn == 0.0, 0.0, 1.0 / tl.where(dn == 0.0, 1.0, dn))
                    # dnum . (linear numerator), from the dots above: sum_s a_ts da_ts + sum_f qt_tf dstate_tf.
                    dden = -(tl.sum(a * da, 1) + tl.sum(qt * dstate, 1)) * rinv * rinv
                    tl.store(rinv_ptr + rbase + t, rinv, mask=tin)
                    tl.store(dden_ptr + rbase + t, dden, mask=tin)
                    da = da * rinv[:, None] + dden[:, None]
                    dstate = dstate * rinv[:, None] + dden[:, None] * Z[None, :]
                    diag = diag * rinv + dden
                da = tl.where(strict, da, 0.0)
                dqf = (_intra_left(da, kf, cum, strict, BC, SUB, GATE, DT, NORM) + dstate * e_cum
                       + kf * diag[:, None])
                if GATE == 1:
                    dlq += qf * dqf
                if GATE == 2:
                    # Intra-tile part as sum_s da_ts A_ts, from the same A and da as the key side's
                    # sum_t da_ts A_ts in _hybrid_bwd_kv, so the pair terms cancel exactly in the cumsum.
                    dlq += tl.sum(da * a, 1) + tl.sum(qf * e_cum * dstate, 1)
                dq += _fmap_bwd(qraw, dqf, wq_ptr, dwq_ptr, h, cols, BC, D, FMAP, DT)
            if HAS_WIN:
                mw = _window_mix(h, alpha_ptr, mix_win, MIXP)
                qr = _rope_rows(q_ptr, qbase, t, T, stride_qt, cols, cos_ptr, sin_ptr, cbase, stride_ct, D)
                m = tl.load(m_ptr + rbase + t, mask=tin, other=0.0)
                den = tl.load(den_ptr + rbase + t, mask=tin, other=0.0)
                inv_den = tl.where(den == 0.0, 0.0, 1.0 / tl.where(den == 0.0, 1.0, den))
                # delta = do . o_win, taken as sum_s P_ts dP_ts: the same dP values as below, so
                # dP - delta vanishes exactly where it should (e.g. a row that sees one key).
                delta = tl.zeros((BC,), dtype=tl.float32)
                for kb in range(lo, t0 // BC + 1):
                    s = kb * BC + rows
                    valid_s = _valid_rows(valid_ptr, b, s, T, HAS_VALID)
                    kr = _rope_rows(k_ptr, kbase, s, T, stride_kt, cols, cos_ptr, sin_ptr, cbase, stride_ct, D).to(DT)
                    p = _window_block_probs(qr, kr, t, s, valid_s, m, inv_den, scale, W, DT)
                    dp = _mm(do, tl.trans(_load_rows(v_ptr, vbase, s, T, stride_vt, vcols, 0.0)), DT)
                    delta += tl.sum(p * dp, 1)
                tl.store(delta_ptr + rbase + t, delta, mask=tin)
                dqr = tl.zeros((BC, D), dtype=tl.float32)
                for kb in range(lo, t0 // BC + 1):
                    s = kb * BC + rows
                    valid_s = _valid_rows(valid_ptr, b, s, T, HAS_VALID)
                    kr = _rope_rows(k_ptr, kbase, s, T, stride_kt, cols, cos_ptr, sin_ptr, cbase, stride_ct, D).to(DT)
                    p = _window_block_probs(qr, kr, t, s, valid_s, m, inv_den, scale, W, DT)
                    dp = _mm(do, tl.trans(_load_rows(v_ptr, vbase, s, T, stride_vt, vcols, 0.0)), DT)
                    dqr += _mm(p * (dp - delta[:, None]), kr, DT)
                dq += _rope_grad(dqr * (scale * mw), cos_ptr, sin_ptr, cbase, t, T, stride_ct, cols, BC, D)
            tl.store(dq_ptr + b * stride_dqb + h * stride_dqh + t[:, None] * stride_dqt + cols[None, :],
                     dq.to(dq_ptr.dtype.element_ty), mask=tin[:, None])
        if HAS_LIN:
            if GATE == 1:
                tl.store(dlq_ptr + (b * HKV + hk) * T * F + t[:, None] * F + fcols[None, :], dlq, mask=tin[:, None])
            if GATE == 2:
                tl.store(dlq_ptr + (b * HKV + hk) * T + t, dlq, mask=tin)
            if BT // BC > 1:
                kend = kf * tl.exp(total[None, :] - cum)
                S = S * tl.exp(total)[:, None] + _mm(tl.trans(kend), vv, DT)
                if NORM:
                    Z = Z * tl.exp(total) + tl.sum(kend, 0)


@triton.jit
def _hybrid_bwd_kv(
    q_ptr, k_ptr, v_ptr, cos_ptr, sin_ptr, valid_ptr, lg_ptr, wq_ptr, wk_ptr, alpha_ptr,
    do_ptr, m_ptr, den_ptr, delta_ptr, dlq_ptr, rinv_ptr, dden_ptr, h_ptr, z_ptr, dh_ptr, dz_ptr,
    dk_ptr, dv_ptr, dlg_ptr, dwk_ptr,
    stride_dkb, stride_dkh, stride_dkt,
    stride_dvb, stride_dvh, stride_dvt,
    stride_qb, stride_qh, stride_qt,
    stride_kb, stride_kh, stride_kt,
    stride_vb, stride_vh, stride_vt,
    stride_ob, stride_oh, stride_ot,
    stride_cb, stride_ct,
    T, HKV, NT, scale, gate_scale, mix_lin, mix_win, eps,
    G: tl.constexpr, D: tl.constexpr, F: tl.constexpr, DV: tl.constexpr, BT: tl.constexpr, BC: tl.constexpr,
    SUB: tl.constexpr, W: tl.constexpr, HAS_LIN: tl.constexpr, HAS_WIN: tl.constexpr, GATE: tl.constexpr,
    FMAP: tl.constexpr, NORM: tl.constexpr, MIXP: tl.constexpr, HAS_VALID: tl.constexpr,
):
    """dk, dv (and the log-gate gradient) of one (chunk, batch, kv head), tiles of BC rows walked backwards.

    Starts from dh[n] (gradient w.r.t. the state at the chunk's end, from ``_chunk_scan``), stepped back
    through the tiles in registers. The gate gradient is a reverse cumulative sum of
    ``phi(q) dphi(q) - phi(k) dphi(k)`` within the chunk; everything after the chunk sums to
    ``sum_v S_{n+1} * dS_{n+1}`` (scaling the state at the boundary), so no cross-chunk pass is needed.
    dk / dv through their own strides."""
    DT: tl.constexpr = q_ptr.dtype.element_ty
    n = tl.program_id(0)
    pid = tl.program_id(1)
    b = (pid // HKV).to(tl.int64)
    hk = (pid % HKV).to(tl.int64)
    rows = tl.arange(0, BC)
    cols = tl.arange(0, D)
    fcols = tl.arange(0, F)
    vcols = tl.arange(0, DV)
    kbase = b * stride_kb + hk * stride_kh
    vbase = b * stride_vb + hk * stride_vh
    cbase = b * stride_cb
    lgbase = (b * HKV + hk) * T
    causal = rows[:, None] >= rows[None, :]
    strict = rows[:, None] > rows[None, :]
    NBC = tl.cdiv(T, BC)
    if HAS_LIN:
        cidx = (b * HKV + hk) * NT + n
        hidx = cidx * F * DV + fcols[:, None] * DV + vcols[None, :]
        dS = tl.load(dh_ptr + hidx).to(tl.float32)
        if NORM:
            dZ = tl.load(dz_ptr + cidx * F + fcols)
        if GATE != 0:
            if n + 1 < NT:  # all pairs across the chunk's end: sum S_end * dS_end (per key dim for the key gate)
                carry = tl.sum(tl.load(h_ptr + hidx + F * DV).to(tl.float32) * dS, 1)
                if NORM:
                    carry += tl.load(z_ptr + (cidx + 1) * F + fcols) * dZ
            else:
                carry = tl.zeros((F,), dtype=tl.float32)
            if GATE == 2:
                boundary = tl.sum(carry, 0)
    for ii in range(0, BT // BC):
        i = BT // BC - 1 - ii
        t0 = n * BT + i * BC
        t = t0 + rows
        tin = t < T
        valid_t = _valid_rows(valid_ptr, b, t, T, HAS_VALID)
        valf = valid_t.to(tl.float32)
        vv = _load_rows(v_ptr, vbase, t, T, stride_vt, vcols, 0.0).to(DT)  # exact in DT
        kraw = _load_rows(k_ptr, kbase, t, T, stride_kt, cols, 0.0)
        dv = tl.zeros((BC, DV), dtype=tl.float32)
        dk = tl.zeros((BC, D), dtype=tl.float32)
        if HAS_LIN:
            kf = _fmap(kraw, wk_ptr, hk, cols, BC, D, FMAP, DT) * valf[:, None]
            cum, total = _gate_cum(kraw, lg_ptr, lgbase, t, T, valf, gate_scale, GATE)
            e_end = tl.exp(total[None, :] - cum)
            if GATE == 2:
                dsv = _mm_split(vv, tl.trans(dS), DT, NORM)
            else:
                dsv = _mm_wide(vv, tl.trans(dS), DT, NORM)
            if NORM:
                dsv += dZ[None, :]
            dkf = e_end * dsv
            if GATE == 2:
                krow = tl.sum(kf * dkf, 1)
            dv += _mm_wide(kf * e_end, dS, DT, NORM)
            if BT // BC > 1:  # gradient w.r.t. the state at the end of the previous tile
                dS_prev = dS * tl.exp(total)[:, None]
                if NORM:
                    dZ_prev = dZ * tl.exp(total)
        if HAS_WIN:
            kr = _rope_rows(k_ptr, kbase, t, T, stride_kt, cols, cos_ptr, sin_ptr, cbase, stride_ct, D).to(DT)
            dkr = tl.zeros((BC, D), dtype=tl.float32)
            q_hi = tl.minimum(NBC, t0 // BC + (W + BC - 2) // BC + 1)
        for j in range(0, G):
            h = hk * G + j
            qbase = b * stride_qb + h * stride_qh
            obase = b * stride_ob + h * stride_oh
            rbase = (b * HKV * G + h) * T
            if HAS_LIN:
                qf = _fmap(_load_rows(q_ptr, qbase, t, T, stride_qt, cols, 0.0), wq_ptr, h, cols, BC, D, FMAP, DT)
                dnum = _load_rows(do_ptr, obase, t, T, stride_ot, vcols, 0.0) * (valf * mix_lin)[:, None]
                a = _intra(qf, kf, cum, causal, BC, SUB, GATE, DT)
                da = _mm(dnum, tl.trans(vv), DT)
                diag = tl.sum(dnum * vv.to(tl.float32), 1)
                if NORM:
                    rinv = tl.load(rinv_ptr + rbase + t, mask=tin, other=0.0)
                    dden = tl.load(dden_ptr + rbase + t, mask=tin, other=0.0)
                    dnum = dnum * rinv[:, None]
                    da = da * rinv[:, None] + dden[:, None]
                    diag = diag * rinv + dden
                dv += _mm_wide(tl.trans(a), dnum, DT, NORM)
                da = tl.where(strict, da, 0.0)
                dkf += _intra_right(da, qf, cum, strict, BC, SUB, GATE, DT, NORM) + qf * diag[:, None]
                if GATE == 2:
                    krow += tl.sum(da * a, 0)
                if BT // BC > 1:
                    qt = qf * tl.exp(cum)
                    dS_prev += _mm_wide(tl.trans(qt), dnum, DT, NORM)
                    if NORM:
                        dZ_prev += tl.sum(qt * dden[:, None], 0)
            if HAS_WIN:
                mw = _window_mix(h, alpha_ptr, mix_win, MIXP)
                for qb in range(t0 // BC, q_hi):
                    tq = qb * BC + rows
                    tqin = tq < T
                    valq = _valid_rows(valid_ptr, b, tq, T, HAS_VALID).to(tl.float32)
                    qr = _rope_rows(q_ptr, qbase, tq, T, stride_qt, cols, cos_ptr, sin_ptr, cbase, stride_ct, D)
                    do_w = _load_rows(do_ptr, obase, tq, T, stride_ot, vcols, 0.0) * (valq * mw)[:, None]
                    rq = rbase + tq
                    m = tl.load(m_ptr + rq, mask=tqin, other=0.0)
                    den = tl.load(den_ptr + rq, mask=tqin, other=0.0)
                    delta = tl.load(delta_ptr + rq, mask=tqin, other=0.0) * mw
                    inv_den = tl.where(den == 0.0, 0.0, 1.0 / tl.where(den == 0.0, 1.0, den))
                    p = _window_block_probs(qr, kr, tq, t, valid_t, m, inv_den, scale, W, DT)
                    dv += _mm(tl.trans(p), do_w, DT)
                    dp = _mm(do_w, tl.trans(vv), DT)
                    dkr += _mm(tl.trans(p * (dp - delta[:, None])), qr, DT)
        if HAS_LIN:
            if GATE == 1:
                dlam = tl.load(dlq_ptr + lgbase * F + t[:, None] * F + fcols[None, :], mask=tin[:, None],
                               other=0.0) - kf * dkf
            dk += _fmap_bwd(kraw, dkf * valf[:, None], wk_ptr, dwk_ptr, hk, cols, BC, D, FMAP, DT)
            if GATE == 1:
                dg = tl.cumsum(dlam, 0, reverse=True) + carry[None, :]
                sig_neg = 1.0 / (1.0 + tl.exp(kraw))
                dk += dg * sig_neg * (valf / gate_scale)[:, None]
                carry += tl.sum(dlam, 0)
            if GATE == 2:
                # Per-head gate: per-token terms, plus at the chunk's last token the pairs across its end;
                # the caller's reverse cumulative sum runs within each chunk. (A sequence-long cumulative
                # sum of the per-token terms instead cancels their state parts over the whole sequence:
                # bf16 rounding then grows with T, to a 0.7 relative error at T = 2k on an H100.)
                dlam = (tl.load(dlq_ptr + lgbase + t, mask=tin, other=0.0) - krow) * valf
                dlam += tl.where(t == n * BT + BT - 1, boundary, 0.0)
                tl.store(dlg_ptr + lgbase + t, dlam, mask=tin)
            if BT // BC > 1:
                dS = dS_prev
                if NORM:
                    dZ = dZ_prev
        if HAS_WIN:
            dk += _rope_grad(dkr * scale, cos_ptr, sin_ptr, cbase, t, T, stride_ct, cols, BC, D)
        tl.store(dk_ptr + b * stride_dkb + hk * stride_dkh + t[:, None] * stride_dkt + cols[None, :],
                 dk.to(dk_ptr.dtype.element_ty), mask=tin[:, None])
        tl.store(dv_ptr + b * stride_dvb + hk * stride_dvh + t[:, None] * stride_dvt + vcols[None, :],
                 dv.to(dv_ptr.dtype.element_ty), mask=tin[:, None])
