"""Decode-step Triton kernel: one launch per layer for a batch of single tokens.

Reference it is tested against: ``HybridAttentionCore._recurrent`` for T = 1
(``gla_recurrent`` + ``window_attention_step``), covered subset as in ``hybrid_chunked``.

One program per (batch, kv head, block of value columns): updates the fp32 linear state
``S <- diag(exp(g)) S + phi(k)^T v`` (g, phi from the raw key, masked when the token is padding),
shifts the rotated window buffer by one (oldest first, as the reference lays it out),
attends over it with the rotated query, and writes the mixed output of the G query heads.
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def _softmax_vec(x):
    e = tl.exp(x - tl.max(x, 0))
    return e / tl.sum(e, 0)


@triton.jit
def _rope_vec(ptr, cos_ptr, sin_ptr, cols, D: tl.constexpr):
    x = tl.load(ptr + cols).to(tl.float32)
    x_perm = tl.load(ptr + (cols + D // 2) % D).to(tl.float32)
    rot = tl.where(cols < D // 2, -x_perm, x_perm)
    return x * tl.load(cos_ptr + cols).to(tl.float32) + rot * tl.load(sin_ptr + cols).to(tl.float32)


@triton.jit
def _hybrid_decode(
    q_ptr, k_ptr, v_ptr, cos_ptr, sin_ptr, step_valid_ptr,
    s_ptr, s_new_ptr, kbuf_ptr, vbuf_ptr, kbuf_new_ptr, vbuf_new_ptr, wvalid_new_ptr, o_ptr,
    stride_qb, stride_qh, stride_kb, stride_kh, stride_vb, stride_vh, stride_cb, stride_ob, stride_oh,
    HKV, scale, gate_scale, mix_lin, mix_win,
    G: tl.constexpr, D: tl.constexpr, DV: tl.constexpr, BV: tl.constexpr, W: tl.constexpr,
    HAS_LIN: tl.constexpr, HAS_WIN: tl.constexpr, GATE: tl.constexpr,
):
    pid = tl.program_id(0)
    pid_v = tl.program_id(1)
    b = (pid // HKV).to(tl.int64)
    hk = (pid % HKV).to(tl.int64)
    cols = tl.arange(0, D)
    vcols = pid_v * BV + tl.arange(0, BV)
    valf = (tl.load(step_valid_ptr + b) != 0).to(tl.float32)
    kp = k_ptr + b * stride_kb + hk * stride_kh
    vnew = tl.load(v_ptr + b * stride_vb + hk * stride_vh + vcols).to(tl.float32)
    cp = cos_ptr + b * stride_cb
    sp = sin_ptr + b * stride_cb
    if HAS_LIN:
        kraw = tl.load(kp + cols).to(tl.float32)
        kf = _softmax_vec(kraw) * valf
        sidx = (b * HKV + hk) * D * DV + cols[:, None] * DV + vcols[None, :]
        S = tl.load(s_ptr + sidx)
        if GATE == 1:
            g = (tl.minimum(kraw, 0.0) - tl.log(1.0 + tl.exp(-tl.abs(kraw)))) / gate_scale * valf
            S = S * tl.exp(g)[:, None]
        S = S + kf[:, None] * vnew[None, :]
        tl.store(s_new_ptr + sidx, S)
    if HAS_WIN:
        wrows = tl.arange(0, W)
        last = (wrows == W - 1)[:, None]
        buf = (b * HKV + hk) * W * D
        shifted = buf + (wrows[:, None] + 1) * D
        kr = _rope_vec(kp, cp, sp, cols, D)
        kwin = tl.load(kbuf_ptr + shifted + cols[None, :], mask=~last, other=0.0).to(tl.float32)
        kwin = tl.where(last, kr[None, :], kwin)
        vwin = tl.load(vbuf_ptr + shifted + vcols[None, :], mask=~last, other=0.0).to(tl.float32)
        vwin = tl.where(last, vnew[None, :], vwin)
        if pid_v == 0:
            tl.store(kbuf_new_ptr + buf + wrows[:, None] * D + cols[None, :], kwin.to(kbuf_new_ptr.dtype.element_ty))
        tl.store(vbuf_new_ptr + buf + wrows[:, None] * D + vcols[None, :], vwin.to(vbuf_new_ptr.dtype.element_ty))
        wvalid = tl.load(wvalid_new_ptr + b * W + wrows) != 0
    for j in range(0, G):
        h = hk * G + j
        qp = q_ptr + b * stride_qb + h * stride_qh
        acc = tl.zeros((BV,), dtype=tl.float32)
        if HAS_LIN:
            qf = _softmax_vec(tl.load(qp + cols).to(tl.float32))
            acc += mix_lin * tl.sum(qf[:, None] * S, 0)
        if HAS_WIN:
            qr = _rope_vec(qp, cp, sp, cols, D)
            sc = tl.where(wvalid, tl.sum(kwin * qr[None, :], 1) * scale, float("-inf"))
            m = tl.max(sc, 0)
            m = tl.where(m == float("-inf"), 0.0, m)
            p = tl.exp(sc - m)
            den = tl.sum(p, 0)
            acc += mix_win * tl.sum(p[:, None] * vwin, 0) / tl.where(den == 0.0, 1.0, den)
        tl.store(o_ptr + b * stride_ob + h * stride_oh + vcols, (acc * valf).to(o_ptr.dtype.element_ty))
