"""Fused chunk-parallel Triton kernels for LoLCATs (``mix: shared``), training / prefill without a state.

Reference: ``HybridAttentionCore._chunked`` with ``spec.shared`` (``linearize/attention_variants.py``).
Hedgehog maps phi (per-head W_q, W_k), no gate, window W, gamma = sigmoid(window_factor) per head.
For query t, with s_tj = RoPE(q_t).RoPE(k_j) * scale over the valid keys t - W < j <= t and
c_t = max_j s_tj (0 when there is none):

    o_t = (gamma sum_j e^(s_tj - c_t) v_j + sum_{i <= t-W} phi(q_t).phi(k_i) v_i)
          / (gamma sum_j e^(s_tj - c_t) + sum_{i <= t-W} phi(q_t).phi(k_i))      (0 where the sum is 0)

Without a gate the linear part is plain causal linear attention over the keys shifted by W: with W a
multiple of the chunk length BT, query chunk n reads the state at the start of key chunk n - W/BT
(``_chunk_state`` / ``_chunk_scan`` of ``hybrid_chunked``, normalised: ``z = sum phi(k)``) plus the
keys of that chunk under the in-chunk causal mask (i <= t - W).

Backward: with r_t = 1 / den_t and delta_t = dO_t . o_t (recomputed in fp32), every weight w_ti
(window: gamma e^(s - c), linear: phi.phi) gets dw = r_t (dO_t . v_i - delta_t). The reference
differentiates through c_t = amax(s_t), so the arg-max key (stored by the forward) also gets
dc_t = delta_t sum_j P_tj - sum_j P_tj dO_t.v_j (P the normalised window weights), and
d window_factor = -(1 - gamma) sum_t dc_t. The state gradient reuses ``_chunk_state`` (pulls
phi(q)^T r dO and phi(q) (-r delta)) and ``_chunk_scan``: key chunk c gets the end-state gradient of
chunk c + W/BT.

Launches: forward ``_chunk_state`` + ``_chunk_scan`` + ``_lolcats_fwd``; backward the states again,
``_lolcats_bwd_q`` (dq, dW_q, per row r, delta, dc), the state gradients, ``_lolcats_bwd_kv`` (dk, dv,
dW_k). One program owns a (chunk, batch, kv head) and loops over its G query heads (no GQA repeat).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .hybrid_chunked import (
    _chunk_scan,
    _chunk_state,
    _fmap,
    _fmap_bwd,
    _load_rows,
    _mm,
    _rope_rows,
    _rope_grad,
    _valid_rows,
    _window_block_probs,
    chunk_state_dtype,
)


@triton.jit
def _shifted_keys(k_ptr, v_ptr, valid_ptr, wk_ptr, b, hk, n, kbase, vbase, T, stride_kt, stride_vt, cols, vcols,
                  BT: tl.constexpr, D: tl.constexpr, W: tl.constexpr, HAS_VALID: tl.constexpr, DT: tl.constexpr):
    """Chunk index of the keys exactly W behind query chunk n (clamped at 0), their masked phi(k) and v.

    phi(k) is zero when that chunk does not exist (n < W / BT) or at padding."""
    c = n - W // BT
    c0 = tl.maximum(c, 0)
    s = c0 * BT + tl.arange(0, BT)
    keep = _valid_rows(valid_ptr, b, s, T, HAS_VALID) & (c >= 0)
    kf = _fmap(_load_rows(k_ptr, kbase, s, T, stride_kt, cols, 0.0), wk_ptr, hk, cols, BT, D, 1, DT)
    return c0, kf * keep.to(tl.float32)[:, None], _load_rows(v_ptr, vbase, s, T, stride_vt, vcols, 0.0)


@triton.jit
def _lolcats_fwd(
    q_ptr, k_ptr, v_ptr, cos_ptr, sin_ptr, valid_ptr, wq_ptr, wk_ptr, wf_ptr, h_ptr, z_ptr,
    o_ptr, m_ptr, arg_ptr, den_ptr,
    stride_qb, stride_qh, stride_qt,
    stride_kb, stride_kh, stride_kt,
    stride_vb, stride_vh, stride_vt,
    stride_ob, stride_oh, stride_ot,
    stride_cb, stride_ct,
    T, HKV, NT, scale,
    G: tl.constexpr, D: tl.constexpr, F: tl.constexpr, DV: tl.constexpr, BV: tl.constexpr, BT: tl.constexpr,
    W: tl.constexpr, HAS_VALID: tl.constexpr,
):
    """Output of one chunk of BT queries for the G heads of a kv head; per row (first value block
    only) the window max c_t, its arg-max key and the shared denominator (fp32)."""
    DT: tl.constexpr = q_ptr.dtype.element_ty
    n = tl.program_id(0)
    pid = tl.program_id(1)
    pid_v = tl.program_id(2)
    b = (pid // HKV).to(tl.int64)
    hk = (pid % HKV).to(tl.int64)
    rows = tl.arange(0, BT)
    cols = tl.arange(0, D)
    fcols = tl.arange(0, F)
    vcols = pid_v * BV + tl.arange(0, BV)
    kbase = b * stride_kb + hk * stride_kh
    vbase = b * stride_vb + hk * stride_vh
    cbase = b * stride_cb
    t = n * BT + rows
    tin = t < T
    valf = _valid_rows(valid_ptr, b, t, T, HAS_VALID).to(tl.float32)
    causal = rows[:, None] >= rows[None, :]
    c0, kl, vl = _shifted_keys(k_ptr, v_ptr, valid_ptr, wk_ptr, b, hk, n, kbase, vbase, T, stride_kt, stride_vt,
                               cols, vcols, BT, D, W, HAS_VALID, DT)
    cidx = (b * HKV + hk) * NT + c0
    S = tl.load(h_ptr + cidx * F * DV + fcols[:, None] * DV + vcols[None, :])
    Z = tl.load(z_ptr + cidx * F + fcols)
    lo = tl.maximum(n * BT - W + 1, 0) // BT
    for j in range(0, G):
        h = hk * G + j
        qbase = b * stride_qb + h * stride_qh
        qraw = _load_rows(q_ptr, qbase, t, T, stride_qt, cols, 0.0)
        qf = _fmap(qraw, wq_ptr, h, cols, BT, D, 1, DT)
        a = tl.where(causal, _mm(qf, tl.trans(kl), DT), 0.0)
        num = _mm(a, vl, DT) + _mm(qf, S, DT)
        den = tl.sum(a, 1) + tl.sum(qf * Z[None, :], 1)
        qr = _rope_rows(q_ptr, qbase, t, T, stride_qt, cols, cos_ptr, sin_ptr, cbase, stride_ct, D)
        m_i = tl.full((BT,), float("-inf"), tl.float32)
        arg = tl.full((BT,), -1, tl.int32)
        l_i = tl.zeros((BT,), dtype=tl.float32)
        acc = tl.zeros((BT, BV), dtype=tl.float32)
        for kb in range(lo, n + 1):
            s = kb * BT + rows
            valid_s = _valid_rows(valid_ptr, b, s, T, HAS_VALID)
            kr = _rope_rows(k_ptr, kbase, s, T, stride_kt, cols, cos_ptr, sin_ptr, cbase, stride_ct, D)
            sc = _mm(qr, tl.trans(kr), DT) * scale
            ok = (s[None, :] <= t[:, None]) & (s[None, :] > t[:, None] - W) & valid_s[None, :]
            sc = tl.where(ok, sc, float("-inf"))
            bm = tl.max(sc, 1)
            arg = tl.where(bm > m_i, tl.min(tl.where(sc == bm[:, None], s[None, :], T), 1), arg)
            m_new = tl.maximum(m_i, bm)
            m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
            alpha = tl.exp(m_i - m_safe)
            p = tl.exp(sc - m_safe[:, None])
            l_i = l_i * alpha + tl.sum(p, 1)
            acc = acc * alpha[:, None] + _mm(p, _load_rows(v_ptr, vbase, s, T, stride_vt, vcols, 0.0), DT)
            m_i = m_new
        gam = tl.sigmoid(tl.load(wf_ptr + h).to(tl.float32))
        den = gam * l_i + den
        nz = den != 0.0
        out = tl.where(nz[:, None], (gam * acc + num) / tl.where(nz, den, 1.0)[:, None], 0.0) * valf[:, None]
        tl.store(o_ptr + b * stride_ob + h * stride_oh + t[:, None] * stride_ot + vcols[None, :],
                 out.to(o_ptr.dtype.element_ty), mask=tin[:, None])
        if pid_v == 0:
            rbase = (b * HKV * G + h) * T
            tl.store(m_ptr + rbase + t, tl.where(m_i == float("-inf"), 0.0, m_i), mask=tin)
            tl.store(arg_ptr + rbase + t, arg, mask=tin)
            tl.store(den_ptr + rbase + t, den, mask=tin)


@triton.jit
def _window_ds(qr, kr, do, vv, t, s, valid_s, m, pw, delta, arg, dm, scale, W: tl.constexpr,
               DT: tl.constexpr):
    """Window weights P = pw e^(s - c) of a (query block, key block) and the score gradient
    P (dO.v - delta), plus dc at the arg-max key."""
    p = _window_block_probs(qr, kr, t, s, valid_s, m, pw, scale, W, DT)
    ds = p * (_mm(do, tl.trans(vv), DT) - delta[:, None]) + tl.where(s[None, :] == arg[:, None], dm[:, None], 0.0)
    return p, ds


@triton.jit
def _lolcats_bwd_q(
    q_ptr, k_ptr, v_ptr, cos_ptr, sin_ptr, valid_ptr, wq_ptr, wk_ptr, wf_ptr, h_ptr, z_ptr,
    do_ptr, m_ptr, arg_ptr, den_ptr,
    dq_ptr, rinv_ptr, delta_ptr, dden_ptr, dm_ptr, dwq_ptr,
    stride_dqb, stride_dqh, stride_dqt,
    stride_qb, stride_qh, stride_qt,
    stride_kb, stride_kh, stride_kt,
    stride_vb, stride_vh, stride_vt,
    stride_ob, stride_oh, stride_ot,
    stride_cb, stride_ct,
    T, HKV, NT, scale,
    G: tl.constexpr, D: tl.constexpr, F: tl.constexpr, DV: tl.constexpr, BT: tl.constexpr,
    W: tl.constexpr, HAS_VALID: tl.constexpr,
):
    """dq (through its own strides) and dW_q for the G heads of one (chunk, batch, kv head); per row
    r = 1/den, delta = dO.o, dden = -r delta (the linear pull on the denominator) and dc."""
    DT: tl.constexpr = q_ptr.dtype.element_ty
    n = tl.program_id(0)
    pid = tl.program_id(1)
    b = (pid // HKV).to(tl.int64)
    hk = (pid % HKV).to(tl.int64)
    rows = tl.arange(0, BT)
    cols = tl.arange(0, D)
    fcols = tl.arange(0, F)
    vcols = tl.arange(0, DV)
    kbase = b * stride_kb + hk * stride_kh
    vbase = b * stride_vb + hk * stride_vh
    cbase = b * stride_cb
    t = n * BT + rows
    tin = t < T
    valf = _valid_rows(valid_ptr, b, t, T, HAS_VALID).to(tl.float32)
    causal = rows[:, None] >= rows[None, :]
    c0, kl, vl = _shifted_keys(k_ptr, v_ptr, valid_ptr, wk_ptr, b, hk, n, kbase, vbase, T, stride_kt, stride_vt,
                               cols, vcols, BT, D, W, HAS_VALID, DT)
    cidx = (b * HKV + hk) * NT + c0
    S = tl.load(h_ptr + cidx * F * DV + fcols[:, None] * DV + vcols[None, :])
    Z = tl.load(z_ptr + cidx * F + fcols)
    lo = tl.maximum(n * BT - W + 1, 0) // BT
    for j in range(0, G):
        h = hk * G + j
        rbase = (b * HKV * G + h) * T
        qbase = b * stride_qb + h * stride_qh
        qraw = _load_rows(q_ptr, qbase, t, T, stride_qt, cols, 0.0)
        do = _load_rows(do_ptr, b * stride_ob + h * stride_oh, t, T, stride_ot, vcols, 0.0) * valf[:, None]
        den = tl.load(den_ptr + rbase + t, mask=tin, other=0.0)
        rinv = tl.where(den == 0.0, 0.0, 1.0 / tl.where(den == 0.0, 1.0, den))
        m = tl.load(m_ptr + rbase + t, mask=tin, other=0.0)
        arg = tl.load(arg_ptr + rbase + t, mask=tin, other=-1)
        pw = tl.sigmoid(tl.load(wf_ptr + h).to(tl.float32)) * rinv
        qf = _fmap(qraw, wq_ptr, h, cols, BT, D, 1, DT)
        a = tl.where(causal, _mm(qf, tl.trans(kl), DT), 0.0)
        dav = _mm(do, tl.trans(vl), DT)
        dsv = _mm(do, tl.trans(S), DT)
        lin_dov = tl.sum(a * dav, 1) + tl.sum(qf * dsv, 1)
        qr = _rope_rows(q_ptr, qbase, t, T, stride_qt, cols, cos_ptr, sin_ptr, cbase, stride_ct, D)
        wdov = tl.zeros((BT,), dtype=tl.float32)
        wsum = tl.zeros((BT,), dtype=tl.float32)
        for kb in range(lo, n + 1):
            s = kb * BT + rows
            valid_s = _valid_rows(valid_ptr, b, s, T, HAS_VALID)
            kr = _rope_rows(k_ptr, kbase, s, T, stride_kt, cols, cos_ptr, sin_ptr, cbase, stride_ct, D)
            p = _window_block_probs(qr, kr, t, s, valid_s, m, pw, scale, W, DT)
            wdov += tl.sum(p * _mm(do, tl.trans(_load_rows(v_ptr, vbase, s, T, stride_vt, vcols, 0.0)), DT), 1)
            wsum += tl.sum(p, 1)
        delta = wdov + rinv * lin_dov
        dm = delta * wsum - wdov
        tl.store(rinv_ptr + rbase + t, rinv, mask=tin)
        tl.store(delta_ptr + rbase + t, delta, mask=tin)
        tl.store(dden_ptr + rbase + t, -rinv * delta, mask=tin)
        tl.store(dm_ptr + rbase + t, dm, mask=tin)
        da = tl.where(causal, (dav - delta[:, None]) * rinv[:, None], 0.0)
        dqf = _mm(da, kl, DT) + (dsv - delta[:, None] * Z[None, :]) * rinv[:, None]
        dq = _fmap_bwd(qraw, dqf, wq_ptr, dwq_ptr, h, cols, BT, D, 1, DT)
        dqr = tl.zeros((BT, D), dtype=tl.float32)
        for kb in range(lo, n + 1):
            s = kb * BT + rows
            valid_s = _valid_rows(valid_ptr, b, s, T, HAS_VALID)
            kr = _rope_rows(k_ptr, kbase, s, T, stride_kt, cols, cos_ptr, sin_ptr, cbase, stride_ct, D)
            vs = _load_rows(v_ptr, vbase, s, T, stride_vt, vcols, 0.0)
            _, ds = _window_ds(qr, kr, do, vs, t, s, valid_s, m, pw, delta, arg, dm, scale, W, DT)
            dqr += _mm(ds, kr, DT)
        dq += _rope_grad(dqr * scale, cos_ptr, sin_ptr, cbase, t, T, stride_ct, cols, BT, D)
        tl.store(dq_ptr + b * stride_dqb + h * stride_dqh + t[:, None] * stride_dqt + cols[None, :],
                 dq.to(dq_ptr.dtype.element_ty), mask=tin[:, None])


@triton.jit
def _lolcats_bwd_kv(
    q_ptr, k_ptr, v_ptr, cos_ptr, sin_ptr, valid_ptr, wq_ptr, wk_ptr, wf_ptr, dh_ptr, dz_ptr,
    do_ptr, m_ptr, arg_ptr, rinv_ptr, delta_ptr, dden_ptr, dm_ptr,
    dk_ptr, dv_ptr, dwk_ptr,
    stride_dkb, stride_dkh, stride_dkt,
    stride_dvb, stride_dvh, stride_dvt,
    stride_qb, stride_qh, stride_qt,
    stride_kb, stride_kh, stride_kt,
    stride_vb, stride_vh, stride_vt,
    stride_ob, stride_oh, stride_ot,
    stride_cb, stride_ct,
    T, HKV, NT, scale,
    G: tl.constexpr, D: tl.constexpr, F: tl.constexpr, DV: tl.constexpr, BT: tl.constexpr,
    W: tl.constexpr, HAS_VALID: tl.constexpr,
):
    """dk, dv (through their own strides) and dW_k of one key chunk n: linear part through the end-state
    gradient of query chunk n + W/BT (all later queries) plus that chunk's causal intra term; window
    part over the query blocks that see these keys."""
    DT: tl.constexpr = q_ptr.dtype.element_ty
    n = tl.program_id(0)
    pid = tl.program_id(1)
    b = (pid // HKV).to(tl.int64)
    hk = (pid % HKV).to(tl.int64)
    rows = tl.arange(0, BT)
    cols = tl.arange(0, D)
    fcols = tl.arange(0, F)
    vcols = tl.arange(0, DV)
    kbase = b * stride_kb + hk * stride_kh
    vbase = b * stride_vb + hk * stride_vh
    cbase = b * stride_cb
    causal = rows[:, None] >= rows[None, :]
    t = n * BT + rows
    tin = t < T
    valid_t = _valid_rows(valid_ptr, b, t, T, HAS_VALID)
    valf = valid_t.to(tl.float32)
    kraw = _load_rows(k_ptr, kbase, t, T, stride_kt, cols, 0.0)
    vv = _load_rows(v_ptr, vbase, t, T, stride_vt, vcols, 0.0)
    kf = _fmap(kraw, wk_ptr, hk, cols, BT, D, 1, DT) * valf[:, None]
    kr = _rope_rows(k_ptr, kbase, t, T, stride_kt, cols, cos_ptr, sin_ptr, cbase, stride_ct, D)
    nq = n + W // BT
    cidx = (b * HKV + hk) * NT + tl.minimum(nq, NT - 1)
    dS = tl.load(dh_ptr + cidx * F * DV + fcols[:, None] * DV + vcols[None, :])
    dZ = tl.load(dz_ptr + cidx * F + fcols)
    dkf = _mm(vv, tl.trans(dS), DT) + dZ[None, :]
    dv = _mm(kf, dS, DT)
    dkr = tl.zeros((BT, D), dtype=tl.float32)
    tq = nq * BT + rows
    tqin = tq < T
    valq = _valid_rows(valid_ptr, b, tq, T, HAS_VALID).to(tl.float32)
    q_hi = tl.minimum(NT, n + (W + BT - 2) // BT + 1)
    for j in range(0, G):
        h = hk * G + j
        qbase = b * stride_qb + h * stride_qh
        obase = b * stride_ob + h * stride_oh
        rbase = (b * HKV * G + h) * T
        qf = _fmap(_load_rows(q_ptr, qbase, tq, T, stride_qt, cols, 0.0), wq_ptr, h, cols, BT, D, 1, DT)
        rinv_q = tl.load(rinv_ptr + rbase + tq, mask=tqin, other=0.0)
        dnum = _load_rows(do_ptr, obase, tq, T, stride_ot, vcols, 0.0) * (valq * rinv_q)[:, None]
        dden = tl.load(dden_ptr + rbase + tq, mask=tqin, other=0.0)
        a = tl.where(causal, _mm(qf, tl.trans(kf), DT), 0.0)
        dv += _mm(tl.trans(a), dnum, DT)
        da = tl.where(causal, _mm(dnum, tl.trans(vv), DT) + dden[:, None], 0.0)
        dkf += _mm(tl.trans(da), qf, DT)
        gam = tl.sigmoid(tl.load(wf_ptr + h).to(tl.float32))
        for qb in range(n, q_hi):
            tw = qb * BT + rows
            twin = tw < T
            rw = rbase + tw
            qr = _rope_rows(q_ptr, qbase, tw, T, stride_qt, cols, cos_ptr, sin_ptr, cbase, stride_ct, D)
            do_w = (_load_rows(do_ptr, obase, tw, T, stride_ot, vcols, 0.0)
                    * _valid_rows(valid_ptr, b, tw, T, HAS_VALID).to(tl.float32)[:, None])
            m = tl.load(m_ptr + rw, mask=twin, other=0.0)
            arg = tl.load(arg_ptr + rw, mask=twin, other=-1)
            pw = gam * tl.load(rinv_ptr + rw, mask=twin, other=0.0)
            delta = tl.load(delta_ptr + rw, mask=twin, other=0.0)
            dm = tl.load(dm_ptr + rw, mask=twin, other=0.0)
            p, ds = _window_ds(qr, kr, do_w, vv, tw, t, valid_t, m, pw, delta, arg, dm, scale, W, DT)
            dv += _mm(tl.trans(p), do_w, DT)
            dkr += _mm(tl.trans(ds), qr, DT)
    dk = _fmap_bwd(kraw, dkf * valf[:, None], wk_ptr, dwk_ptr, hk, cols, BT, D, 1, DT)
    dk += _rope_grad(dkr * scale, cos_ptr, sin_ptr, cbase, t, T, stride_ct, cols, BT, D)
    tl.store(dk_ptr + b * stride_dkb + hk * stride_dkh + t[:, None] * stride_dkt + cols[None, :],
             dk.to(dk_ptr.dtype.element_ty), mask=tin[:, None])
    tl.store(dv_ptr + b * stride_dvb + hk * stride_dvh + t[:, None] * stride_dvt + vcols[None, :],
             dv.to(dv_ptr.dtype.element_ty), mask=tin[:, None])


def _strides(*tensors):
    return [s for x in tensors for s in (x.stride(0), x.stride(1), x.stride(2))]


def lolcats_config(D: int, device_is_cuda: bool) -> dict:
    """Chunk length BT and launch options per kernel at head dim D (= Dv), shared with
    scripts/kernel_registers.py (which compiles exactly these).

    BT = 32 (the window must be a multiple of it): the BT x F feature tiles (F = 2D), their gradients and
    the F x Dv state operand fit one program's registers and shared memory on sm_90 (BT = 64 does not fit
    at D = 128 and spills heavily at D = 64); 8 warps; no software pipelining (its multi-buffered loads do
    not fit beside the F-wide tiles). The interpreter takes whole value blocks."""
    F = 2 * D
    if not device_is_cuda:
        return dict(BT=32, state=dict(BV=D, num_warps=4), scan=dict(BK=F, num_warps=4), fwd=dict(BV=D, num_warps=4),
                    bwd=dict(num_warps=8))
    return dict(BT=32, state=dict(BV=min(D, 32), num_warps=8, num_stages=1), scan=dict(BK=min(F, 32), num_warps=4),
                fwd=dict(BV=min(D, 64), num_warps=8, num_stages=1), bwd=dict(num_warps=8, num_stages=1))


def _linear_states(q, k, v, valid, wq, wk, cfg, do=None, rinv=None, dden=None):
    """Chunk start states (h (B, Hkv, NT, F, Dv) in ``chunk_state_dtype``, z (B, Hkv, NT, F) fp32) of the
    masked phi(k) and v;
    with ``do``, instead the gradient w.r.t. each chunk's end state from the pulls phi(q)^T r dO and
    phi(q) dden."""
    B, H, T, D = q.shape
    HKV, DV, F = k.shape[1], v.shape[-1], 2 * q.shape[-1]
    BT = cfg["BT"]
    NT = triton.cdiv(T, BT)
    dummy = torch.empty(1, device=q.device, dtype=torch.float32)
    x = torch.empty(B, HKV, NT, F, DV, device=q.device, dtype=chunk_state_dtype(q.dtype))
    xz = torch.empty(B, HKV, NT, F, device=q.device, dtype=torch.float32)
    grads = do is not None
    hz = (x, xz, x, xz)  # both modes' pointers: one runs (FIRST), both compile and must agree in type
    do_t = do if grads else v
    _chunk_state[(NT, B * HKV, DV // cfg["state"]["BV"])](
        q, k, v, valid if valid is not None else dummy, do_t, dummy, wq, wk,
        rinv if grads else dummy, dden if grads else dummy, *hz, dummy, *_strides(q, k, v, do_t),
        T, HKV, NT, 1.0, 1.0, G=H // HKV, D=D, F=F, DV=DV, BT=BT, BC=BT, GATE=0, FMAP=1, NORM=True,
        HAS_VALID=valid is not None, STATES=not grads, WITH_DO=grads, **cfg["state"],
    )
    _chunk_scan[(B * HKV, F // cfg["scan"]["BK"], 1)](
        *hz, dummy, dummy, dummy, NT, int(grads), D=D, F=F, DV=DV, GATE=0, NORM=True, HAS_S0=False,
        STORE_ST=False, **cfg["scan"],
    )
    return x, xz


def _cos_strides(cos):
    return (0 if cos.shape[0] == 1 else cos.stride(0)), cos.stride(1)


class LolcatsAttentionFunction(torch.autograd.Function):
    """Fused LoLCATs attention from raw q (B, H, T, D), k, v (B, Hkv, T, D) (last dim contiguous):
    out (B, H, T, D) in v.dtype; grads of q, k, v, the hedgehog weights W_q (H, D, D), W_k (Hkv, D, D)
    and window_factor (H,). cos / sin (B or 1, T, D), last dim contiguous, same strides; valid (B, T)
    int8 or None; ``cfg`` from ``lolcats_config`` (the window must be a multiple of its chunk length BT)."""

    @staticmethod
    def forward(ctx, q, k, v, cos, sin, valid, wq, wk, wf, window, scale, cfg):
        # The kernels feed W to tl.dot in the activation dtype; loading it so halves its shared memory.
        w_dtype = wq.dtype
        wq, wk, wf = wq.to(q.dtype).contiguous(), wk.to(q.dtype).contiguous(), wf.contiguous()
        B, H, T, D = q.shape
        HKV, DV = k.shape[1], v.shape[-1]
        NT = triton.cdiv(T, cfg["BT"])
        h, z = _linear_states(q, k, v, valid, wq, wk, cfg)
        o = torch.empty_like(q, dtype=v.dtype)  # q's layout (DV == D), see hybrid_chunked's docstring
        m = torch.empty(B, H, T, device=q.device, dtype=torch.float32)
        den = torch.empty_like(m)
        arg = torch.empty(B, H, T, device=q.device, dtype=torch.int32)
        _lolcats_fwd[(NT, B * HKV, DV // cfg["fwd"]["BV"])](
            q, k, v, cos, sin, valid if valid is not None else m, wq, wk, wf, h, z, o, m, arg, den,
            *_strides(q, k, v, o), *_cos_strides(cos), T, HKV, NT, float(scale),
            G=H // HKV, D=D, F=2 * D, DV=DV, BT=cfg["BT"], W=int(window), HAS_VALID=valid is not None, **cfg["fwd"],
        )
        ctx.save_for_backward(q, k, v, cos, sin, valid, wq, wk, wf, m, arg, den)
        ctx.window, ctx.scale, ctx.cfg, ctx.w_dtype = int(window), float(scale), cfg, w_dtype
        return o

    @staticmethod
    def backward(ctx, do):
        q, k, v, cos, sin, valid, wq, wk, wf, m, arg, den = ctx.saved_tensors
        cfg = ctx.cfg
        BT = cfg["BT"]
        do = do if do.stride(-1) == 1 else do.contiguous()
        B, H, T, D = q.shape
        HKV, DV = k.shape[1], v.shape[-1]
        NT = triton.cdiv(T, BT)
        h, z = _linear_states(q, k, v, valid, wq, wk, cfg)
        dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)  # the inputs' layouts
        rinv, delta, dden, dm = (torch.empty_like(m) for _ in range(4))
        dwq = torch.zeros(wq.shape, device=q.device, dtype=torch.float32)
        dwk = torch.zeros(wk.shape, device=q.device, dtype=torch.float32)
        valid_t = valid if valid is not None else m
        common = (*_strides(q, k, v, do), *_cos_strides(cos), T, HKV, NT, ctx.scale)
        meta = dict(G=H // HKV, D=D, F=2 * D, DV=DV, BT=BT, W=ctx.window, HAS_VALID=valid is not None, **cfg["bwd"])
        ins = (q, k, v, cos, sin, valid_t, wq, wk, wf)
        _lolcats_bwd_q[(NT, B * HKV)](*ins, h, z, do, m, arg, den, dq, rinv, delta, dden, dm, dwq, *_strides(dq),
                                      *common, **meta)
        del h, z  # the key side needs only the state gradients: the two never share the peak
        dh, dz = _linear_states(q, k, v, valid, wq, wk, cfg, do=do, rinv=rinv, dden=dden)
        _lolcats_bwd_kv[(NT, B * HKV)](*ins, dh, dz, do, m, arg, rinv, delta, dden, dm, dk, dv, dwk, *_strides(dk, dv),
                                      *common, **meta)
        dwf = -(1.0 - torch.sigmoid(wf.float())) * dm.sum(dim=(0, 2))
        return (dq, dk, dv, None, None, None, dwq.to(ctx.w_dtype), dwk.to(ctx.w_dtype), dwf.to(wf.dtype), None,
                None, None)
