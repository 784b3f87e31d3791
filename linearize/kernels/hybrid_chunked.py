"""Fused chunked Triton kernels for the hybrid attention (training / prefill).

Reference these kernels are tested against: ``HybridAttentionCore._chunked``
(``linearize/attention_variants.py``), i.e. ``gla_chunked`` + ``window_attention_chunked``
(``linearize/attention_reference.py``), on the covered subset of ``AttentionSpec``:
softmax feature maps, key gate ``logsigmoid(k)/gate_scale`` or no gate, unnormalised GLA,
sliding window without sinks or softcap, mix ``average`` (or one branch alone).

Everything is computed from the raw (pre-RoPE) q/k and v inside the kernels: feature maps,
gate, cumulative gates, RoPE, both branches and the mix are never written to memory. One
program owns one (batch, kv head) and walks the sequence chunk by chunk, carrying the linear
state (fp32, in registers); the G query heads of the kv head are handled inside the program,
so the GQA repeat never exists. Layout (strides are passed, nothing is made contiguous):
q (B, H, T, D), k/v (B, Hkv, T, D), cos/sin (B or 1, T, D), key_valid (B, T).

Three kernels:
* ``_hybrid_fwd``: output, and per query row the window softmax max and denominator (fp32).
* ``_hybrid_bwd_q`` (chunks forward): dq (both branches, through softmax map and RoPE),
  per row ``delta = do_win . o_win`` and per token ``sum_heads qf * dqf`` (for the gate grad).
* ``_hybrid_bwd_kv`` (chunks backward): dk, dv (both branches, feature map, gate via a reverse
  cumulative sum carried across chunks, RoPE).

Numerics: intra-chunk decays use the factorisation ``exp(B_t) * exp(-B_s)`` relative to the
chunk start, so the largest exponent is ``BT * max|g|``; BT = 16 for the key gate keeps it far
from fp32 overflow (``|k_raw|`` would have to average > 80 over 16 tokens).
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def _softmax_rows(x):
    m = tl.max(x, 1)
    e = tl.exp(x - m[:, None])
    return e / tl.sum(e, 1)[:, None]


@triton.jit
def _logsigmoid(x):
    return tl.minimum(x, 0.0) - tl.log(1.0 + tl.exp(-tl.abs(x)))


@triton.jit
def _rot_half(x, BT: tl.constexpr, D: tl.constexpr):
    """rotate_half on the last dim of a (BT, D) register tensor: [-x2, x1]."""
    x3 = tl.permute(tl.reshape(x, (BT, 2, D // 2)), (0, 2, 1))
    a, b = tl.split(x3)
    return tl.reshape(tl.permute(tl.join(-b, a), (0, 2, 1)), (BT, D))


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
def _rope(x, cos_ptr, sin_ptr, cbase, t, T, stride_ct, cols, BT: tl.constexpr, D: tl.constexpr):
    c = _load_rows(cos_ptr, cbase, t, T, stride_ct, cols, 0.0)
    s = _load_rows(sin_ptr, cbase, t, T, stride_ct, cols, 0.0)
    return x * c + _rot_half(x, BT, D) * s


@triton.jit
def _rope_grad(dx, cos_ptr, sin_ptr, cbase, t, T, stride_ct, cols, BT: tl.constexpr, D: tl.constexpr):
    c = _load_rows(cos_ptr, cbase, t, T, stride_ct, cols, 0.0)
    s = _load_rows(sin_ptr, cbase, t, T, stride_ct, cols, 0.0)
    return dx * c + _rot_half_t(dx * s, BT, D)


@triton.jit
def _key_chunk(k_ptr, kbase, t, T, stride_kt, cols, valf, gate_scale, GATE: tl.constexpr):
    """Raw key chunk -> (raw, masked feature map, cumulative log-gate, chunk total log-gate)."""
    kraw = _load_rows(k_ptr, kbase, t, T, stride_kt, cols, 0.0)
    kf = _softmax_rows(kraw) * valf[:, None]
    if GATE == 1:
        g = _logsigmoid(kraw) / gate_scale * valf[:, None]
    else:
        g = tl.zeros_like(kraw)
    cum = tl.cumsum(g, 0)
    total = tl.sum(g, 0)
    return kraw, kf, cum, total


@triton.jit
def _hybrid_fwd(
    q_ptr, k_ptr, v_ptr, cos_ptr, sin_ptr, valid_ptr, o_ptr, m_ptr, den_ptr, s0_ptr, st_ptr,
    stride_qb, stride_qh, stride_qt,
    stride_kb, stride_kh, stride_kt,
    stride_vb, stride_vh, stride_vt,
    stride_ob, stride_oh, stride_ot,
    stride_cb, stride_ct,
    T, HKV, scale, gate_scale, mix_lin, mix_win,
    G: tl.constexpr, D: tl.constexpr, DV: tl.constexpr, BV: tl.constexpr, BT: tl.constexpr, W: tl.constexpr,
    HAS_LIN: tl.constexpr, HAS_WIN: tl.constexpr, GATE: tl.constexpr, HAS_VALID: tl.constexpr,
    HAS_S0: tl.constexpr, STORE_ST: tl.constexpr,
):
    pid = tl.program_id(0)
    pid_v = tl.program_id(1)
    b = (pid // HKV).to(tl.int64)
    hk = (pid % HKV).to(tl.int64)
    rows = tl.arange(0, BT)
    cols = tl.arange(0, D)
    vcols = pid_v * BV + tl.arange(0, BV)
    kbase = b * stride_kb + hk * stride_kh
    vbase = b * stride_vb + hk * stride_vh
    cbase = b * stride_cb
    causal = rows[:, None] >= rows[None, :]
    sidx = hk * D * DV + cols[:, None] * DV + vcols[None, :]
    S = tl.zeros((D, BV), dtype=tl.float32)
    if HAS_S0:
        S += tl.load(s0_ptr + b * HKV * D * DV + sidx)
    NT = tl.cdiv(T, BT)
    for n in range(0, NT):
        t = n * BT + rows
        tin = t < T
        valid_t = _valid_rows(valid_ptr, b, t, T, HAS_VALID)
        valf = valid_t.to(tl.float32)
        vv = _load_rows(v_ptr, vbase, t, T, stride_vt, vcols, 0.0)
        if HAS_LIN:
            kraw, kf, cum, total = _key_chunk(k_ptr, kbase, t, T, stride_kt, cols, valf, gate_scale, GATE)
            khat = kf * tl.exp(-cum)
            kend = kf * tl.exp(total[None, :] - cum)
        for j in range(0, G):
            h = hk * G + j
            qbase = b * stride_qb + h * stride_qh
            qraw = _load_rows(q_ptr, qbase, t, T, stride_qt, cols, 0.0)
            acc = tl.zeros((BT, BV), dtype=tl.float32)
            if HAS_LIN:
                qt = _softmax_rows(qraw) * tl.exp(cum)
                a = tl.where(causal, tl.dot(qt, tl.trans(khat)), 0.0)
                acc += mix_lin * (tl.dot(a, vv) + tl.dot(qt, S))
            if HAS_WIN:
                qr = _rope(qraw, cos_ptr, sin_ptr, cbase, t, T, stride_ct, cols, BT, D)
                m_i = tl.full((BT,), float("-inf"), tl.float32)
                l_i = tl.zeros((BT,), dtype=tl.float32)
                accw = tl.zeros((BT, BV), dtype=tl.float32)
                lo = tl.maximum(n * BT - W + 1, 0) // BT
                for kb in range(lo, n + 1):
                    s = kb * BT + rows
                    valid_s = _valid_rows(valid_ptr, b, s, T, HAS_VALID)
                    kr = _rope(_load_rows(k_ptr, kbase, s, T, stride_kt, cols, 0.0), cos_ptr, sin_ptr, cbase, s, T,
                               stride_ct, cols, BT, D)
                    vs = _load_rows(v_ptr, vbase, s, T, stride_vt, vcols, 0.0)
                    sc = tl.dot(qr, tl.trans(kr)) * scale
                    ok = (s[None, :] <= t[:, None]) & (s[None, :] > t[:, None] - W) & valid_s[None, :]
                    sc = tl.where(ok, sc, float("-inf"))
                    m_new = tl.maximum(m_i, tl.max(sc, 1))
                    m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
                    alpha = tl.exp(m_i - m_safe)
                    p = tl.exp(sc - m_safe[:, None])
                    l_i = l_i * alpha + tl.sum(p, 1)
                    accw = accw * alpha[:, None] + tl.dot(p, vs)
                    m_i = m_new
                m_fin = tl.where(m_i == float("-inf"), 0.0, m_i)
                acc += mix_win * (accw / tl.where(l_i == 0.0, 1.0, l_i)[:, None])
                if pid_v == 0:
                    rbase = (b * HKV * G + h) * T
                    tl.store(m_ptr + rbase + t, m_fin, mask=tin)
                    tl.store(den_ptr + rbase + t, l_i, mask=tin)
            acc = acc * valf[:, None]
            obase = b * stride_ob + h * stride_oh
            tl.store(o_ptr + obase + t[:, None] * stride_ot + vcols[None, :], acc.to(o_ptr.dtype.element_ty),
                     mask=tin[:, None])
        if HAS_LIN:
            S = S * tl.exp(total)[:, None] + tl.dot(tl.trans(kend), vv)
    if STORE_ST:
        tl.store(st_ptr + b * HKV * D * DV + sidx, S)


@triton.jit
def _window_block_probs(qr, kr, t, s, valid_s, m, inv_den, scale, W: tl.constexpr):
    sc = tl.dot(qr, tl.trans(kr)) * scale
    ok = (s[None, :] <= t[:, None]) & (s[None, :] > t[:, None] - W) & valid_s[None, :]
    return tl.where(ok, tl.exp(tl.where(ok, sc, 0.0) - m[:, None]) * inv_den[:, None], 0.0)


@triton.jit
def _hybrid_bwd_q(
    q_ptr, k_ptr, v_ptr, cos_ptr, sin_ptr, valid_ptr, do_ptr, m_ptr, den_ptr,
    dq_ptr, delta_ptr, dlq_ptr,
    stride_qb, stride_qh, stride_qt,
    stride_kb, stride_kh, stride_kt,
    stride_vb, stride_vh, stride_vt,
    stride_ob, stride_oh, stride_ot,
    stride_cb, stride_ct,
    T, HKV, scale, gate_scale, mix_lin, mix_win,
    G: tl.constexpr, D: tl.constexpr, DV: tl.constexpr, BT: tl.constexpr, W: tl.constexpr,
    HAS_LIN: tl.constexpr, HAS_WIN: tl.constexpr, GATE: tl.constexpr, HAS_VALID: tl.constexpr,
):
    """dq for all G heads of one (batch, kv head); dq is laid out like q (contiguous)."""
    pid = tl.program_id(0)
    b = (pid // HKV).to(tl.int64)
    hk = (pid % HKV).to(tl.int64)
    rows = tl.arange(0, BT)
    cols = tl.arange(0, D)
    vcols = tl.arange(0, DV)
    kbase = b * stride_kb + hk * stride_kh
    vbase = b * stride_vb + hk * stride_vh
    cbase = b * stride_cb
    strict = rows[:, None] > rows[None, :]
    S = tl.zeros((D, DV), dtype=tl.float32)
    NT = tl.cdiv(T, BT)
    for n in range(0, NT):
        t = n * BT + rows
        tin = t < T
        valid_t = _valid_rows(valid_ptr, b, t, T, HAS_VALID)
        valf = valid_t.to(tl.float32)
        vv = _load_rows(v_ptr, vbase, t, T, stride_vt, vcols, 0.0)
        if HAS_LIN:
            kraw, kf, cum, total = _key_chunk(k_ptr, kbase, t, T, stride_kt, cols, valf, gate_scale, GATE)
            khat = kf * tl.exp(-cum)
            kend = kf * tl.exp(total[None, :] - cum)
            dlq = tl.zeros((BT, D), dtype=tl.float32)
        for j in range(0, G):
            h = hk * G + j
            qbase = b * stride_qb + h * stride_qh
            qraw = _load_rows(q_ptr, qbase, t, T, stride_qt, cols, 0.0)
            do = _load_rows(do_ptr, b * stride_ob + h * stride_oh, t, T, stride_ot, vcols, 0.0) * valf[:, None]
            dq = tl.zeros((BT, D), dtype=tl.float32)
            if HAS_LIN:
                qf = _softmax_rows(qraw)
                e_cum = tl.exp(cum)
                do_l = do * mix_lin
                # Strictly causal part and diagonal apart: the diagonal cancels exactly in the gate
                # gradient, so it is left out of ``dlq`` instead of being cancelled numerically.
                da = tl.where(strict, tl.dot(do_l, tl.trans(vv)), 0.0)
                dqf = (tl.dot(da, khat) + tl.dot(do_l, tl.trans(S))) * e_cum
                dlq += qf * dqf
                dqf += kf * tl.sum(do_l * vv, 1)[:, None]
                qdq = qf * dqf
                dq += qdq - qf * tl.sum(qdq, 1)[:, None]
            if HAS_WIN:
                rbase = (b * HKV * G + h) * T
                qr = _rope(qraw, cos_ptr, sin_ptr, cbase, t, T, stride_ct, cols, BT, D)
                m = tl.load(m_ptr + rbase + t, mask=tin, other=0.0)
                den = tl.load(den_ptr + rbase + t, mask=tin, other=0.0)
                inv_den = tl.where(den == 0.0, 0.0, 1.0 / tl.where(den == 0.0, 1.0, den))
                do_w = do * mix_win
                lo = tl.maximum(n * BT - W + 1, 0) // BT
                # delta = do_win . o_win, taken as sum_s P_ts dP_ts: the same dP values as below, so
                # dP - delta vanishes exactly where it should (e.g. a row that sees one key).
                delta = tl.zeros((BT,), dtype=tl.float32)
                for kb in range(lo, n + 1):
                    s = kb * BT + rows
                    valid_s = _valid_rows(valid_ptr, b, s, T, HAS_VALID)
                    kr = _rope(_load_rows(k_ptr, kbase, s, T, stride_kt, cols, 0.0), cos_ptr, sin_ptr, cbase, s, T,
                               stride_ct, cols, BT, D)
                    p = _window_block_probs(qr, kr, t, s, valid_s, m, inv_den, scale, W)
                    dp = tl.dot(do_w, tl.trans(_load_rows(v_ptr, vbase, s, T, stride_vt, vcols, 0.0)))
                    delta += tl.sum(p * dp, 1)
                tl.store(delta_ptr + rbase + t, delta, mask=tin)
                dqr = tl.zeros((BT, D), dtype=tl.float32)
                for kb in range(lo, n + 1):
                    s = kb * BT + rows
                    valid_s = _valid_rows(valid_ptr, b, s, T, HAS_VALID)
                    kr = _rope(_load_rows(k_ptr, kbase, s, T, stride_kt, cols, 0.0), cos_ptr, sin_ptr, cbase, s, T,
                               stride_ct, cols, BT, D)
                    p = _window_block_probs(qr, kr, t, s, valid_s, m, inv_den, scale, W)
                    dp = tl.dot(do_w, tl.trans(_load_rows(v_ptr, vbase, s, T, stride_vt, vcols, 0.0)))
                    dqr += tl.dot(p * (dp - delta[:, None]), kr)
                dq += _rope_grad(dqr * scale, cos_ptr, sin_ptr, cbase, t, T, stride_ct, cols, BT, D)
            dqbase = (b * HKV * G + h) * T * D
            tl.store(dq_ptr + dqbase + t[:, None] * D + cols[None, :], dq.to(dq_ptr.dtype.element_ty),
                     mask=tin[:, None])
        if HAS_LIN:
            tl.store(dlq_ptr + (b * HKV + hk) * T * D + t[:, None] * D + cols[None, :], dlq, mask=tin[:, None])
            S = S * tl.exp(total)[:, None] + tl.dot(tl.trans(kend), vv)


@triton.jit
def _hybrid_bwd_kv(
    q_ptr, k_ptr, v_ptr, cos_ptr, sin_ptr, valid_ptr, do_ptr, m_ptr, den_ptr, delta_ptr, dlq_ptr,
    dk_ptr, dv_ptr,
    stride_qb, stride_qh, stride_qt,
    stride_kb, stride_kh, stride_kt,
    stride_vb, stride_vh, stride_vt,
    stride_ob, stride_oh, stride_ot,
    stride_cb, stride_ct,
    T, HKV, scale, gate_scale, mix_lin, mix_win,
    G: tl.constexpr, D: tl.constexpr, DV: tl.constexpr, BT: tl.constexpr, W: tl.constexpr,
    HAS_LIN: tl.constexpr, HAS_WIN: tl.constexpr, GATE: tl.constexpr, HAS_VALID: tl.constexpr,
):
    """dk, dv of one (batch, kv head), walking the chunks backwards; dk/dv contiguous (B, Hkv, T, D)."""
    pid = tl.program_id(0)
    b = (pid // HKV).to(tl.int64)
    hk = (pid % HKV).to(tl.int64)
    rows = tl.arange(0, BT)
    cols = tl.arange(0, D)
    vcols = tl.arange(0, DV)
    kbase = b * stride_kb + hk * stride_kh
    vbase = b * stride_vb + hk * stride_vh
    cbase = b * stride_cb
    causal = rows[:, None] >= rows[None, :]
    strict = rows[:, None] > rows[None, :]
    dS = tl.zeros((D, DV), dtype=tl.float32)
    carry = tl.zeros((D,), dtype=tl.float32)
    NT = tl.cdiv(T, BT)
    for i in range(0, NT):
        n = NT - 1 - i
        t = n * BT + rows
        tin = t < T
        valid_t = _valid_rows(valid_ptr, b, t, T, HAS_VALID)
        valf = valid_t.to(tl.float32)
        vv = _load_rows(v_ptr, vbase, t, T, stride_vt, vcols, 0.0)
        kraw = _load_rows(k_ptr, kbase, t, T, stride_kt, cols, 0.0)
        dv = tl.zeros((BT, DV), dtype=tl.float32)
        dk = tl.zeros((BT, D), dtype=tl.float32)
        if HAS_LIN:
            kraw, kf, cum, total = _key_chunk(k_ptr, kbase, t, T, stride_kt, cols, valf, gate_scale, GATE)
            khat = kf * tl.exp(-cum)
            e_end = tl.exp(total[None, :] - cum)
            kend = kf * e_end
            dkf = e_end * tl.dot(vv, tl.trans(dS))
            dkf_diag = tl.zeros((BT, D), dtype=tl.float32)
            dv += tl.dot(kend, dS)
            dS_prev = dS * tl.exp(total)[:, None]
        if HAS_WIN:
            kr = _rope(kraw, cos_ptr, sin_ptr, cbase, t, T, stride_ct, cols, BT, D)
            dkr = tl.zeros((BT, D), dtype=tl.float32)
            q_hi = tl.minimum(NT, n + (W + BT - 2) // BT + 1)
        for j in range(0, G):
            h = hk * G + j
            qbase = b * stride_qb + h * stride_qh
            obase = b * stride_ob + h * stride_oh
            if HAS_LIN:
                qraw = _load_rows(q_ptr, qbase, t, T, stride_qt, cols, 0.0)
                do_l = _load_rows(do_ptr, obase, t, T, stride_ot, vcols, 0.0) * (valf * mix_lin)[:, None]
                qt = _softmax_rows(qraw) * tl.exp(cum)
                a = tl.where(causal, tl.dot(qt, tl.trans(khat)), 0.0)
                dv += tl.dot(tl.trans(a), do_l)
                da = tl.where(strict, tl.dot(do_l, tl.trans(vv)), 0.0)
                dkf += tl.dot(tl.trans(da), qt) * tl.exp(-cum)
                dkf_diag += (qt * tl.exp(-cum)) * tl.sum(do_l * vv, 1)[:, None]
                dS_prev += tl.dot(tl.trans(qt), do_l)
            if HAS_WIN:
                rbase = (b * HKV * G + h) * T
                valid_s = valid_t
                for qb in range(n, q_hi):
                    tq = qb * BT + rows
                    tqin = tq < T
                    valq = _valid_rows(valid_ptr, b, tq, T, HAS_VALID).to(tl.float32)
                    qr = _rope(_load_rows(q_ptr, qbase, tq, T, stride_qt, cols, 0.0), cos_ptr, sin_ptr, cbase, tq, T,
                               stride_ct, cols, BT, D)
                    do_w = _load_rows(do_ptr, obase, tq, T, stride_ot, vcols, 0.0) * (valq * mix_win)[:, None]
                    m = tl.load(m_ptr + rbase + tq, mask=tqin, other=0.0)
                    den = tl.load(den_ptr + rbase + tq, mask=tqin, other=0.0)
                    delta = tl.load(delta_ptr + rbase + tq, mask=tqin, other=0.0)
                    inv_den = tl.where(den == 0.0, 0.0, 1.0 / tl.where(den == 0.0, 1.0, den))
                    p = _window_block_probs(qr, kr, tq, t, valid_s, m, inv_den, scale, W)
                    dv += tl.dot(tl.trans(p), do_w)
                    dp = tl.dot(do_w, tl.trans(vv))
                    dkr += tl.dot(tl.trans(p * (dp - delta[:, None])), qr)
        if HAS_LIN:
            dlam = tl.load(dlq_ptr + (b * HKV + hk) * T * D + t[:, None] * D + cols[None, :], mask=tin[:, None],
                           other=0.0) - kf * dkf
            sm = _softmax_rows(kraw)
            dsm = (dkf + dkf_diag) * valf[:, None]
            dk += sm * (dsm - tl.sum(sm * dsm, 1)[:, None])
            if GATE == 1:
                dg = tl.cumsum(dlam, 0, reverse=True) + carry[None, :]
                sig_neg = 1.0 / (1.0 + tl.exp(kraw))
                dk += dg * sig_neg * (valf / gate_scale)[:, None]
            carry += tl.sum(dlam, 0)
            dS = dS_prev
        if HAS_WIN:
            dk += _rope_grad(dkr * scale, cos_ptr, sin_ptr, cbase, t, T, stride_ct, cols, BT, D)
        dkv_base = (b * HKV + hk) * T
        tl.store(dk_ptr + (dkv_base + t[:, None]) * D + cols[None, :], dk.to(dk_ptr.dtype.element_ty),
                 mask=tin[:, None])
        tl.store(dv_ptr + (dkv_base + t[:, None]) * DV + vcols[None, :], dv.to(dv_ptr.dtype.element_ty),
                 mask=tin[:, None])
