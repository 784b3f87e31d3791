"""Decode-step Triton kernels: one launch per layer for a batch of single tokens.

Reference they are tested against: ``HybridAttentionCore._recurrent`` for T = 1
(``gla_recurrent`` + ``window_attention_step`` + ``add_sinks``), covered subset as in ``hybrid_chunked``.

One program per (batch, kv head, block of value columns): updates the fp32 linear state
``S <- exp(g) S + phi(k)^T v`` (g the key gate per key dim or the learned per-head log-gate
``logsigmoid(gate_proj(hidden))``, its dot taken in the kernel, phi
softmax or hedgehog from the raw key, both masked when the token is padding) and, normalised, its
``z`` column (the state is F x (Dv + 1) then, as ``HybridAttentionCore.empty_state`` lays it out);
shifts the rotated window buffer by one (oldest first, as the reference lays it out), attends over it
with the rotated queries (sink logits in the denominator), and writes the mixed output of the G query
heads. Hedgehog features are kept as two D-vectors (softmax(xW), softmax(-xW)) and the state as the
matching two halves of its F = 2D rows.

The G query heads of the kv head are one tile of GP rows (G padded to a power of two >= 16, ``tl.dot``'s
smallest M), so their state read-out ``phi(q) S``, window scores and ``p V`` are fp32 dots (``_dot32``)
and their softmaxes row reductions, instead of a loop of G dependent passes of vector reductions: a program
moves a few tens of kilobytes, so its chain of dependent steps, not memory, most likely sets the step's
time (the looped kernel took 0.124 ms on an H200 for ~6 us worth of data). The window is padded the same way to
WP >= 16 slots (the padding invalid).
"""

from __future__ import annotations

import triton
import triton.language as tl

from .hybrid_chunked import _logsigmoid


@triton.jit
def _softmax_vec(x):
    e = tl.exp(x - tl.max(x, 0))
    return e / tl.sum(e, 0)


@triton.jit
def _softmax_rows(x):
    e = tl.exp(x - tl.max(x, 1)[:, None])
    return e / tl.sum(e, 1)[:, None]


@triton.jit
def _dot32(a, b):
    """a @ b on fp32 tiles at Triton's default precision: tf32 tensor cores on the GPU (as the training kernels'
    fp32 dots; ~5e-4 relative per operand, and only the read-out rounds: the state update is elementwise fp32),
    exact in the interpreter. Full fp32 ("ieee") takes the FMA path, which holds whole K rows per thread and
    spills at D = 128; "tf32x3" doubles the registers (Liger-GLA: 208 against 96)."""
    return tl.dot(a, b)


@triton.jit
def _rope_vec(ptr, cos_ptr, sin_ptr, cols, D: tl.constexpr):
    x = tl.load(ptr + cols).to(tl.float32)
    x_perm = tl.load(ptr + (cols + D // 2) % D).to(tl.float32)
    rot = tl.where(cols < D // 2, -x_perm, x_perm)
    return x * tl.load(cos_ptr + cols).to(tl.float32) + rot * tl.load(sin_ptr + cols).to(tl.float32)


@triton.jit
def _rope_rows(rows_ptr, row_ok, cos_ptr, sin_ptr, cols, D: tl.constexpr):
    """The rotated query heads: ``rows_ptr`` (GP, 1) row starts, ``row_ok`` (GP, 1) the real heads."""
    x = tl.load(rows_ptr + cols[None, :], mask=row_ok, other=0.0).to(tl.float32)
    x_perm = tl.load(rows_ptr + ((cols + D // 2) % D)[None, :], mask=row_ok, other=0.0).to(tl.float32)
    rot = tl.where((cols < D // 2)[None, :], -x_perm, x_perm)
    c = tl.load(cos_ptr + cols).to(tl.float32)[None, :]
    s = tl.load(sin_ptr + cols).to(tl.float32)[None, :]
    return x * c + rot * s


_HIDDEN_BLOCK = tl.constexpr(256)  # hidden-state columns per step of the learned gate's dot


@triton.jit
def _learned_log_gate(h_ptr, w_ptr, b_ptr, HS):
    """``logsigmoid(hidden . w + b)``: the learned log-gate of one kv head (a row of ``gate_proj``) for the
    step's hidden state, in fp32."""
    acc = tl.zeros((_HIDDEN_BLOCK,), dtype=tl.float32)
    for c0 in range(0, HS, _HIDDEN_BLOCK):
        c = c0 + tl.arange(0, _HIDDEN_BLOCK)
        acc += (tl.load(h_ptr + c, mask=c < HS, other=0.0).to(tl.float32)
                * tl.load(w_ptr + c, mask=c < HS, other=0.0).to(tl.float32))
    return _logsigmoid(tl.sum(acc, 0) + tl.load(b_ptr).to(tl.float32))


@triton.jit
def _hedgehog_proj(x_ptr, w_ptr, head, cols, D: tl.constexpr, BD: tl.constexpr):
    """x W for one raw row and its head's D x D weight, walking W in blocks of BD rows (at most a BD x D tile
    of W is live)."""
    p = tl.zeros((D,), dtype=tl.float32)
    for d0 in range(0, D, BD):
        r = d0 + tl.arange(0, BD)
        xb = tl.load(x_ptr + r).to(tl.float32)
        wb = tl.load(w_ptr + head * D * D + r[:, None] * D + cols[None, :]).to(tl.float32)
        p += tl.sum(xb[:, None] * wb, 0)
    return p


@triton.jit
def _key_features(x_ptr, w_ptr, head, cols, D: tl.constexpr, BD: tl.constexpr, FMAP: tl.constexpr):
    """phi of the raw key as two D-vectors: hedgehog (softmax(xW), softmax(-xW)), or (softmax(x), 0)."""
    if FMAP == 1:
        p = _hedgehog_proj(x_ptr, w_ptr, head, cols, D, BD)
        return _softmax_vec(p), _softmax_vec(-p)
    else:
        x = tl.load(x_ptr + cols).to(tl.float32)
        return _softmax_vec(x), tl.zeros_like(x)


@triton.jit
def _query_features(q_base, stride_qh, w_ptr, h0, grow, row_ok, cols, G: tl.constexpr, GP: tl.constexpr,
                    D: tl.constexpr, BD: tl.constexpr, FMAP: tl.constexpr):
    """phi of the G query heads (rows of ``q_base``, ``stride_qh`` apart) as two (GP, D) tiles; padding rows
    hold harmless features and are never stored. Hedgehog: every head has its own W, so the projections are
    G matrix-vector products, placed row by row."""
    if FMAP == 1:
        p = tl.zeros((GP, D), dtype=tl.float32)
        for j in range(0, G):
            pj = _hedgehog_proj(q_base + j * stride_qh, w_ptr, h0 + j, cols, D, BD)
            p = tl.where(grow[:, None] == j, pj[None, :], p)
        return _softmax_rows(p), _softmax_rows(-p)
    else:
        x = tl.load(q_base + grow[:, None] * stride_qh + cols[None, :], mask=row_ok, other=0.0).to(tl.float32)
        return _softmax_rows(x), tl.zeros_like(x)


@triton.jit
def _shift_window(kbuf_ptr, vbuf_ptr, kbuf_new_ptr, vbuf_new_ptr, buf, kr, vnew, pid_v, cols, vcols,
                  W: tl.constexpr, WP: tl.constexpr, D: tl.constexpr):
    """The window buffers one step on (oldest slot out, the rotated key ``kr`` and value ``vnew`` in as the
    last slot), written to the new buffers (keys by the first value block only) and returned fp32 as
    (WP, D) / (WP, BV) tiles, zero past slot W."""
    wrows = tl.arange(0, WP)
    last = (wrows == W - 1)[:, None]
    older = (wrows < W - 1)[:, None]
    inside = (wrows < W)[:, None]
    shifted = buf + (wrows[:, None] + 1) * D
    kwin = tl.load(kbuf_ptr + shifted + cols[None, :], mask=older, other=0.0).to(tl.float32)
    kwin = tl.where(last, kr[None, :], kwin)
    vwin = tl.load(vbuf_ptr + shifted + vcols[None, :], mask=older, other=0.0).to(tl.float32)
    vwin = tl.where(last, vnew[None, :], vwin)
    if pid_v == 0:
        tl.store(kbuf_new_ptr + buf + wrows[:, None] * D + cols[None, :], kwin.to(kbuf_new_ptr.dtype.element_ty),
                 mask=inside)
    tl.store(vbuf_new_ptr + buf + wrows[:, None] * D + vcols[None, :], vwin.to(vbuf_new_ptr.dtype.element_ty),
             mask=inside)
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
def _shift_valid(old_ptr, new_ptr, b, valf, W: tl.constexpr, WP: tl.constexpr, WRITE):
    """The window's validity one step on (oldest slot out, this step's in as the last; padding slots past W
    invalid), from the old (B, W) bool buffer; ``WRITE``: this program writes the new buffer (one per batch
    row)."""
    wrows = tl.arange(0, WP)
    last = wrows == W - 1
    ok = tl.where(last, valf != 0.0, tl.load(old_ptr + b * W + wrows + 1, mask=wrows < W - 1, other=0) != 0)
    if WRITE:
        tl.store(new_ptr + b * W + wrows, ok, mask=wrows < W)
    return ok


@triton.jit
def _window_scores(q_base, stride_qh, row_ok, cp, sp, kwin, wvalid, grow, cols, scale, D: tl.constexpr):
    """Masked scores (GP, WP) of the rotated query heads over the window, their row maxima (0 where no slot is
    valid) and ``p = exp(scores - max)``."""
    qr = _rope_rows(q_base + grow[:, None] * stride_qh, row_ok, cp, sp, cols, D)
    sc = tl.where(wvalid[None, :], _dot32(qr, tl.trans(kwin)) * scale, float("-inf"))
    m = tl.max(sc, 1)
    m = tl.where(m == float("-inf"), 0.0, m)
    return m, tl.exp(sc - m[:, None])


@triton.jit
def _hybrid_decode(
    q_ptr, k_ptr, v_ptr, cos_ptr, sin_ptr, kv_ptr, hid_ptr, gw_ptr, gb_ptr, wq_ptr, wk_ptr, alpha_ptr, sinks_ptr,
    s_ptr, s_new_ptr, kbuf_ptr, vbuf_ptr, kbuf_new_ptr, vbuf_new_ptr, wvalid_old_ptr, wvalid_new_ptr, o_ptr,
    stride_qb, stride_qh, stride_kb, stride_kh, stride_vb, stride_vh, stride_cb, stride_ob, stride_oh,
    stride_kvb, kv_last, stride_hidb, stride_gw, HS, HKV, scale, gate_scale, mix_lin, mix_win, eps,
    G: tl.constexpr, GP: tl.constexpr, D: tl.constexpr, DV: tl.constexpr, BV: tl.constexpr, BD: tl.constexpr,
    W: tl.constexpr, WP: tl.constexpr, HAS_LIN: tl.constexpr, HAS_WIN: tl.constexpr, GATE: tl.constexpr,
    FMAP: tl.constexpr, NORM: tl.constexpr, NS: tl.constexpr, MIXP: tl.constexpr, HAS_KV: tl.constexpr,
):
    pid = tl.program_id(0)
    pid_v = tl.program_id(1)
    b = (pid // HKV).to(tl.int64)
    hk = (pid % HKV).to(tl.int64)
    cols = tl.arange(0, D)
    vcols = pid_v * BV + tl.arange(0, BV)
    grow = tl.arange(0, GP)
    row_ok = (grow < G)[:, None]
    h0 = hk * G
    q_base = q_ptr + b * stride_qb + h0 * stride_qh
    valf = _step_valid(kv_ptr, b, stride_kvb, kv_last, HAS_KV)
    kp = k_ptr + b * stride_kb + hk * stride_kh
    vnew = tl.load(v_ptr + b * stride_vb + hk * stride_vh + vcols).to(tl.float32)
    cp = cos_ptr + b * stride_cb
    sp = sin_ptr + b * stride_cb
    acc = tl.zeros((GP, BV), dtype=tl.float32)
    if HAS_LIN:
        SW: tl.constexpr = DV + NORM  # state row length: the z column follows the values
        F: tl.constexpr = 2 * D if FMAP == 1 else D
        kfa, kfb = _key_features(kp, wk_ptr, hk, cols, D, BD, FMAP)
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
            ea = tl.exp(_logsigmoid(kraw) / gate_scale * valf)
            Sa = Sa * ea[:, None]
            if NORM:
                za = za * ea
        if GATE == 2:
            lg = _learned_log_gate(hid_ptr + b * stride_hidb, gw_ptr + hk * stride_gw, gb_ptr + hk, HS)
            e1 = tl.exp(lg * valf)
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
        qfa, qfb = _query_features(q_base, stride_qh, wq_ptr, h0, grow, row_ok, cols, G, GP, D, BD, FMAP)
        num = _dot32(qfa, Sa)
        if FMAP == 1:
            num += _dot32(qfb, Sb)
        if NORM:
            dn = tl.sum(qfa * za[None, :], 1) + eps
            if FMAP == 1:
                dn += tl.sum(qfb * zb[None, :], 1)
            dn = dn[:, None]
            num = tl.where(dn == 0.0, 0.0, num / tl.where(dn == 0.0, 1.0, dn))
        acc += mix_lin * num
    if HAS_WIN:
        kwin, vwin = _shift_window(kbuf_ptr, vbuf_ptr, kbuf_new_ptr, vbuf_new_ptr, (b * HKV + hk) * W * D,
                                   _rope_vec(kp, cp, sp, cols, D), vnew, pid_v, cols, vcols, W, WP, D)
        wvalid = _shift_valid(wvalid_old_ptr, wvalid_new_ptr, b, valf, W, WP, (hk == 0) & (pid_v == 0))
        m, p = _window_scores(q_base, stride_qh, row_ok, cp, sp, kwin, wvalid, grow, cols, scale, D)
        den = tl.sum(p, 1)
        accw = _dot32(p, vwin)
        if NS > 0:
            # Sink logits join the denominator only (rescaled to the common maximum).
            sk = tl.load(sinks_ptr + (h0 + grow)[:, None] * NS + tl.arange(0, NS)[None, :], mask=row_ok,
                         other=0.0).to(tl.float32)
            m_all = tl.maximum(m, tl.max(sk, 1))
            r = tl.exp(m - m_all)
            den = den * r + tl.sum(tl.exp(sk - m_all[:, None]), 1)
            accw = accw * r[:, None]
        if MIXP:
            mw = tl.load(alpha_ptr + h0 + grow, mask=grow < G, other=0.0).to(tl.float32)[:, None]
        else:
            mw = mix_win
        acc += mw * accw / tl.where(den == 0.0, 1.0, den)[:, None]
    tl.store(o_ptr + b * stride_ob + (h0 + grow)[:, None] * stride_oh + vcols[None, :],
             (acc * valf).to(o_ptr.dtype.element_ty), mask=row_ok)


@triton.jit
def _lolcats_decode(
    q_ptr, k_ptr, v_ptr, cos_ptr, sin_ptr, kv_ptr, wq_ptr, wk_ptr, wf_ptr,
    s_ptr, s_new_ptr, kbuf_ptr, vbuf_ptr, fbuf_ptr, kbuf_new_ptr, vbuf_new_ptr, fbuf_new_ptr,
    wvalid_old_ptr, wvalid_new_ptr, o_ptr,
    stride_qb, stride_qh, stride_kb, stride_kh, stride_vb, stride_vh, stride_cb, stride_ob, stride_oh,
    stride_kvb, kv_last, HKV, scale,
    G: tl.constexpr, GP: tl.constexpr, D: tl.constexpr, DV: tl.constexpr, BV: tl.constexpr, BD: tl.constexpr,
    W: tl.constexpr, WP: tl.constexpr, HAS_KV: tl.constexpr,
):
    """LoLCATs step (``mix: shared``): the key leaving the window (its hedgehog features kept in the
    feature buffer, its value in the window buffer) joins the linear state S (F x (Dv + 1), the last
    column the normaliser), the new key's features join the feature buffer and its rotated key / value
    the window; each query head then takes
    ``(gamma * sum_w p_w v_w + phi(q) S_num) / (gamma * sum_w p_w + phi(q) S_den)`` with
    ``p_w = exp(q.k_w * scale - max)`` over the valid window and ``gamma = sigmoid(window_factor)``.
    Same program grid and head tile as ``_hybrid_decode``."""
    pid = tl.program_id(0)
    pid_v = tl.program_id(1)
    b = (pid // HKV).to(tl.int64)
    hk = (pid % HKV).to(tl.int64)
    cols = tl.arange(0, D)
    vcols = pid_v * BV + tl.arange(0, BV)
    grow = tl.arange(0, GP)
    row_ok = (grow < G)[:, None]
    h0 = hk * G
    q_base = q_ptr + b * stride_qb + h0 * stride_qh
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
                               vnew, pid_v, cols, vcols, W, WP, D)
    if pid_v == 0:
        tl.store(s_new_ptr + rows_a + DV, za)
        tl.store(s_new_ptr + rows_b + DV, zb)
        kfa, kfb = _key_features(kp, wk_ptr, hk, cols, D, BD, 1)
        wrows = tl.arange(0, WP)
        last = (wrows == W - 1)[:, None]
        fshift = fbuf + (wrows[:, None] + 1) * F + cols[None, :]
        older = (wrows < W - 1)[:, None]
        fa = tl.where(last, (kfa * valf)[None, :], tl.load(fbuf_ptr + fshift, mask=older, other=0.0))
        fb = tl.where(last, (kfb * valf)[None, :], tl.load(fbuf_ptr + fshift + D, mask=older, other=0.0))
        fnew = fbuf + wrows[:, None] * F + cols[None, :]
        inside = (wrows < W)[:, None]
        tl.store(fbuf_new_ptr + fnew, fa, mask=inside)
        tl.store(fbuf_new_ptr + fnew + D, fb, mask=inside)
    wvalid = _shift_valid(wvalid_old_ptr, wvalid_new_ptr, b, valf, W, WP, (hk == 0) & (pid_v == 0))
    qfa, qfb = _query_features(q_base, stride_qh, wq_ptr, h0, grow, row_ok, cols, G, GP, D, BD, 1)
    num = _dot32(qfa, Sa) + _dot32(qfb, Sb)
    den = tl.sum(qfa * za[None, :], 1) + tl.sum(qfb * zb[None, :], 1)
    m, p = _window_scores(q_base, stride_qh, row_ok, cp, sp, kwin, wvalid, grow, cols, scale, D)
    gamma = 1.0 / (1.0 + tl.exp(-tl.load(wf_ptr + h0 + grow, mask=grow < G, other=0.0).to(tl.float32)))
    num += gamma[:, None] * _dot32(p, vwin)
    den = (den + gamma * tl.sum(p, 1))[:, None]
    out = tl.where(den == 0.0, 0.0, num / tl.where(den == 0.0, 1.0, den))
    tl.store(o_ptr + b * stride_ob + (h0 + grow)[:, None] * stride_oh + vcols[None, :],
             (out * valf).to(o_ptr.dtype.element_ty), mask=row_ok)
