"""Decode-step Triton kernel: one launch per layer for a batch of single tokens.

Reference it is tested against: ``HybridAttentionCore._recurrent`` for T = 1
(``gla_recurrent`` + ``window_attention_step`` + ``add_sinks``), covered subset as in ``hybrid_chunked``.

One program per (batch, kv head, block of value columns): updates the fp32 linear state
``S <- exp(g) S + phi(k)^T v`` (g the key gate per key dim or the learned per-head log-gate, phi
softmax or hedgehog from the raw key, both masked when the token is padding) and, normalised, its
``z`` column (the state is F x (Dv + 1) then, as ``HybridAttentionCore.empty_state`` lays it out);
shifts the rotated window buffer by one (oldest first, as the reference lays it out), attends over it
with the rotated query (sink logits in the denominator), and writes the mixed output of the G query
heads. Hedgehog features are kept as two D-vectors (softmax(xW), softmax(-xW)) and the state as the
matching two halves of its F = 2D rows.
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
def _features(x_ptr, w_ptr, head, cols, D: tl.constexpr, BD: tl.constexpr, FMAP: tl.constexpr):
    """phi of one raw row as two D-vectors: hedgehog (softmax(xW), softmax(-xW)), or (softmax(x), 0).

    The projection walks W in blocks of BD rows, so at most a BD x D tile of W is live."""
    if FMAP == 1:
        p = tl.zeros((D,), dtype=tl.float32)
        for d0 in range(0, D, BD):
            r = d0 + tl.arange(0, BD)
            xb = tl.load(x_ptr + r).to(tl.float32)
            wb = tl.load(w_ptr + head * D * D + r[:, None] * D + cols[None, :]).to(tl.float32)
            p += tl.sum(xb[:, None] * wb, 0)
        return _softmax_vec(p), _softmax_vec(-p)
    else:
        x = tl.load(x_ptr + cols).to(tl.float32)
        return _softmax_vec(x), tl.zeros_like(x)


@triton.jit
def _shift_window(kbuf_ptr, vbuf_ptr, kbuf_new_ptr, vbuf_new_ptr, buf, kr, vnew, pid_v, cols, vcols,
                  W: tl.constexpr, D: tl.constexpr):
    """The window buffers one step on (oldest slot out, the rotated key ``kr`` and value ``vnew`` in as the
    last slot), written to the new buffers (keys by the first value block only) and returned fp32."""
    wrows = tl.arange(0, W)
    last = (wrows == W - 1)[:, None]
    shifted = buf + (wrows[:, None] + 1) * D
    kwin = tl.load(kbuf_ptr + shifted + cols[None, :], mask=~last, other=0.0).to(tl.float32)
    kwin = tl.where(last, kr[None, :], kwin)
    vwin = tl.load(vbuf_ptr + shifted + vcols[None, :], mask=~last, other=0.0).to(tl.float32)
    vwin = tl.where(last, vnew[None, :], vwin)
    if pid_v == 0:
        tl.store(kbuf_new_ptr + buf + wrows[:, None] * D + cols[None, :], kwin.to(kbuf_new_ptr.dtype.element_ty))
    tl.store(vbuf_new_ptr + buf + wrows[:, None] * D + vcols[None, :], vwin.to(vbuf_new_ptr.dtype.element_ty))
    return kwin, vwin


@triton.jit
def _step_valid(kv_ptr, b, stride_kvb, kv_last, HAS_KV: tl.constexpr):
    """1.0 when this step's token is real: the key-validity mask's last column, read in place (1.0 without a
    mask), so that no per-step torch op converts or slices the mask."""
    if HAS_KV:
        return (tl.load(kv_ptr + b * stride_kvb + kv_last) != 0).to(tl.float32)
    else:
        return 1.0


@triton.jit
def _shift_valid(old_ptr, new_ptr, b, valf, W: tl.constexpr, WRITE):
    """The window's validity one step on (oldest slot out, this step's in as the last), from the old (B, W)
    bool buffer; ``WRITE``: this program writes the new buffer (one per batch row)."""
    wrows = tl.arange(0, W)
    last = wrows == W - 1
    ok = tl.where(last, valf != 0.0, tl.load(old_ptr + b * W + wrows + 1, mask=~last, other=0) != 0)
    if WRITE:
        tl.store(new_ptr + b * W + wrows, ok)
    return ok


@triton.jit
def _hybrid_decode(
    q_ptr, k_ptr, v_ptr, cos_ptr, sin_ptr, kv_ptr, lg_ptr, wq_ptr, wk_ptr, alpha_ptr, sinks_ptr,
    s_ptr, s_new_ptr, kbuf_ptr, vbuf_ptr, kbuf_new_ptr, vbuf_new_ptr, wvalid_old_ptr, wvalid_new_ptr, o_ptr,
    stride_qb, stride_qh, stride_kb, stride_kh, stride_vb, stride_vh, stride_cb, stride_ob, stride_oh,
    stride_kvb, kv_last, HKV, scale, gate_scale, mix_lin, mix_win, eps,
    G: tl.constexpr, D: tl.constexpr, DV: tl.constexpr, BV: tl.constexpr, BD: tl.constexpr, W: tl.constexpr,
    HAS_LIN: tl.constexpr, HAS_WIN: tl.constexpr, GATE: tl.constexpr, FMAP: tl.constexpr, NORM: tl.constexpr,
    NS: tl.constexpr, MIXP: tl.constexpr, HAS_KV: tl.constexpr,
):
    pid = tl.program_id(0)
    pid_v = tl.program_id(1)
    b = (pid // HKV).to(tl.int64)
    hk = (pid % HKV).to(tl.int64)
    cols = tl.arange(0, D)
    vcols = pid_v * BV + tl.arange(0, BV)
    valf = _step_valid(kv_ptr, b, stride_kvb, kv_last, HAS_KV)
    kp = k_ptr + b * stride_kb + hk * stride_kh
    vnew = tl.load(v_ptr + b * stride_vb + hk * stride_vh + vcols).to(tl.float32)
    cp = cos_ptr + b * stride_cb
    sp = sin_ptr + b * stride_cb
    if HAS_LIN:
        SW: tl.constexpr = DV + NORM  # state row length: the z column follows the values
        F: tl.constexpr = 2 * D if FMAP == 1 else D
        kfa, kfb = _features(kp, wk_ptr, hk, cols, D, BD, FMAP)
        kfa = kfa * valf
        kfb = kfb * valf
        rows_a = (b * HKV + hk) * F * SW + cols * SW
        rows_b = rows_a + D * SW
        Sa = tl.load(s_ptr + rows_a[:, None] + vcols[None, :])
        if FMAP == 1:
            Sb = tl.load(s_ptr + rows_b[:, None] + vcols[None, :])
        if NORM:
            za = tl.load(s_ptr + rows_a + DV)
            if FMAP == 1:
                zb = tl.load(s_ptr + rows_b + DV)
        if GATE == 1:
            kraw = tl.load(kp + cols).to(tl.float32)
            ea = tl.exp((tl.minimum(kraw, 0.0) - tl.log(1.0 + tl.exp(-tl.abs(kraw)))) / gate_scale * valf)
            Sa = Sa * ea[:, None]
            if NORM:
                za = za * ea
        if GATE == 2:
            e1 = tl.exp(tl.load(lg_ptr + b * HKV + hk).to(tl.float32) * valf)
            Sa = Sa * e1
            if FMAP == 1:
                Sb = Sb * e1
            if NORM:
                za = za * e1
                if FMAP == 1:
                    zb = zb * e1
        Sa = Sa + kfa[:, None] * vnew[None, :]
        tl.store(s_new_ptr + rows_a[:, None] + vcols[None, :], Sa)
        if FMAP == 1:
            Sb = Sb + kfb[:, None] * vnew[None, :]
            tl.store(s_new_ptr + rows_b[:, None] + vcols[None, :], Sb)
        if NORM:
            za = za + kfa
            if FMAP == 1:
                zb = zb + kfb
            if pid_v == 0:
                tl.store(s_new_ptr + rows_a + DV, za)
                if FMAP == 1:
                    tl.store(s_new_ptr + rows_b + DV, zb)
    if HAS_WIN:
        kwin, vwin = _shift_window(kbuf_ptr, vbuf_ptr, kbuf_new_ptr, vbuf_new_ptr, (b * HKV + hk) * W * D,
                                   _rope_vec(kp, cp, sp, cols, D), vnew, pid_v, cols, vcols, W, D)
        wvalid = _shift_valid(wvalid_old_ptr, wvalid_new_ptr, b, valf, W, (hk == 0) & (pid_v == 0))
    for j in range(0, G):
        h = hk * G + j
        qp = q_ptr + b * stride_qb + h * stride_qh
        acc = tl.zeros((BV,), dtype=tl.float32)
        if HAS_LIN:
            qfa, qfb = _features(qp, wq_ptr, h, cols, D, BD, FMAP)
            num = tl.sum(qfa[:, None] * Sa, 0)
            if FMAP == 1:
                num += tl.sum(qfb[:, None] * Sb, 0)
            if NORM:
                dn = tl.sum(qfa * za, 0) + eps
                if FMAP == 1:
                    dn += tl.sum(qfb * zb, 0)
                num = tl.where(dn == 0.0, 0.0, num / tl.where(dn == 0.0, 1.0, dn))
            acc += mix_lin * num
        if HAS_WIN:
            qr = _rope_vec(qp, cp, sp, cols, D)
            sc = tl.where(wvalid, tl.sum(kwin * qr[None, :], 1) * scale, float("-inf"))
            m = tl.max(sc, 0)
            m = tl.where(m == float("-inf"), 0.0, m)
            p = tl.exp(sc - m)
            den = tl.sum(p, 0)
            accw = tl.sum(p[:, None] * vwin, 0)
            if NS > 0:
                # Sink logits join the denominator only (rescaled to the common maximum).
                sk = tl.load(sinks_ptr + h * NS + tl.arange(0, NS)).to(tl.float32)
                m_all = tl.maximum(m, tl.max(sk, 0))
                r = tl.exp(m - m_all)
                den = den * r + tl.sum(tl.exp(sk - m_all), 0)
                accw = accw * r
            if MIXP:
                mw = tl.load(alpha_ptr + h).to(tl.float32)
            else:
                mw = mix_win
            acc += mw * accw / tl.where(den == 0.0, 1.0, den)
        tl.store(o_ptr + b * stride_ob + h * stride_oh + vcols, (acc * valf).to(o_ptr.dtype.element_ty))


@triton.jit
def _lolcats_decode(
    q_ptr, k_ptr, v_ptr, cos_ptr, sin_ptr, kv_ptr, wq_ptr, wk_ptr, wf_ptr,
    s_ptr, s_new_ptr, kbuf_ptr, vbuf_ptr, fbuf_ptr, kbuf_new_ptr, vbuf_new_ptr, fbuf_new_ptr,
    wvalid_old_ptr, wvalid_new_ptr, o_ptr,
    stride_qb, stride_qh, stride_kb, stride_kh, stride_vb, stride_vh, stride_cb, stride_ob, stride_oh,
    stride_kvb, kv_last, HKV, scale,
    G: tl.constexpr, D: tl.constexpr, DV: tl.constexpr, BV: tl.constexpr, BD: tl.constexpr, W: tl.constexpr,
    HAS_KV: tl.constexpr,
):
    """LoLCATs step (``mix: shared``): the key leaving the window (its hedgehog features kept in the
    feature buffer, its value in the window buffer) joins the linear state S (F x (Dv + 1), the last
    column the normaliser), the new key's features join the feature buffer and its rotated key / value
    the window; each query head then takes
    ``(gamma * sum_w p_w v_w + phi(q) S_num) / (gamma * sum_w p_w + phi(q) S_den)`` with
    ``p_w = exp(q.k_w * scale - max)`` over the valid window and ``gamma = sigmoid(window_factor)``.
    Same program grid as ``_hybrid_decode``."""
    pid = tl.program_id(0)
    pid_v = tl.program_id(1)
    b = (pid // HKV).to(tl.int64)
    hk = (pid % HKV).to(tl.int64)
    cols = tl.arange(0, D)
    vcols = pid_v * BV + tl.arange(0, BV)
    wrows = tl.arange(0, W)
    last = (wrows == W - 1)[:, None]
    F: tl.constexpr = 2 * D
    SW: tl.constexpr = DV + 1
    valf = _step_valid(kv_ptr, b, stride_kvb, kv_last, HAS_KV)
    kp = k_ptr + b * stride_kb + hk * stride_kh
    vnew = tl.load(v_ptr + b * stride_vb + hk * stride_vh + vcols).to(tl.float32)
    cp = cos_ptr + b * stride_cb
    sp = sin_ptr + b * stride_cb
    buf = (b * HKV + hk) * W * D
    fbuf = (b * HKV + hk) * W * F
    # The oldest window slot leaves: its features and value join the linear state.
    ev = (tl.load(wvalid_old_ptr + b * W) != 0).to(tl.float32)
    fa0 = tl.load(fbuf_ptr + fbuf + cols) * ev
    fb0 = tl.load(fbuf_ptr + fbuf + D + cols) * ev
    v0 = tl.load(vbuf_ptr + buf + vcols).to(tl.float32)
    rows_a = (b * HKV + hk) * F * SW + cols * SW
    rows_b = rows_a + D * SW
    Sa = tl.load(s_ptr + rows_a[:, None] + vcols[None, :]) + fa0[:, None] * v0[None, :]
    Sb = tl.load(s_ptr + rows_b[:, None] + vcols[None, :]) + fb0[:, None] * v0[None, :]
    za = tl.load(s_ptr + rows_a + DV) + fa0
    zb = tl.load(s_ptr + rows_b + DV) + fb0
    tl.store(s_new_ptr + rows_a[:, None] + vcols[None, :], Sa)
    tl.store(s_new_ptr + rows_b[:, None] + vcols[None, :], Sb)
    kwin, vwin = _shift_window(kbuf_ptr, vbuf_ptr, kbuf_new_ptr, vbuf_new_ptr, buf, _rope_vec(kp, cp, sp, cols, D),
                               vnew, pid_v, cols, vcols, W, D)
    if pid_v == 0:
        tl.store(s_new_ptr + rows_a + DV, za)
        tl.store(s_new_ptr + rows_b + DV, zb)
        kfa, kfb = _features(kp, wk_ptr, hk, cols, D, BD, 1)
        fshift = fbuf + (wrows[:, None] + 1) * F + cols[None, :]
        fa = tl.where(last, (kfa * valf)[None, :], tl.load(fbuf_ptr + fshift, mask=~last, other=0.0))
        fb = tl.where(last, (kfb * valf)[None, :], tl.load(fbuf_ptr + fshift + D, mask=~last, other=0.0))
        fnew = fbuf + wrows[:, None] * F + cols[None, :]
        tl.store(fbuf_new_ptr + fnew, fa)
        tl.store(fbuf_new_ptr + fnew + D, fb)
    wvalid = _shift_valid(wvalid_old_ptr, wvalid_new_ptr, b, valf, W, (hk == 0) & (pid_v == 0))
    for j in range(0, G):
        h = hk * G + j
        qp = q_ptr + b * stride_qb + h * stride_qh
        qfa, qfb = _features(qp, wq_ptr, h, cols, D, BD, 1)
        num = tl.sum(qfa[:, None] * Sa, 0) + tl.sum(qfb[:, None] * Sb, 0)
        den = tl.sum(qfa * za, 0) + tl.sum(qfb * zb, 0)
        qr = _rope_vec(qp, cp, sp, cols, D)
        sc = tl.where(wvalid, tl.sum(kwin * qr[None, :], 1) * scale, float("-inf"))
        m = tl.max(sc, 0)
        m = tl.where(m == float("-inf"), 0.0, m)
        p = tl.exp(sc - m)
        gamma = 1.0 / (1.0 + tl.exp(-tl.load(wf_ptr + h).to(tl.float32)))
        num += gamma * tl.sum(p[:, None] * vwin, 0)
        den += gamma * tl.sum(p, 0)
        out = tl.where(den == 0.0, 0.0, num / tl.where(den == 0.0, 1.0, den))
        tl.store(o_ptr + b * stride_ob + h * stride_oh + vcols, (out * valf).to(o_ptr.dtype.element_ty))
