"""Triton kernels vs the PyTorch reference (HybridAttentionCore), on CPU under TRITON_INTERPRET=1.

Each case covers several dimensions at once (T in {1, 17, 64, 100, 300}, window 64/128, head dim
64/128, GQA groups 1 and 3, batch 2 with left padding, fp32 and fp16) instead of the full cross
product, so the file stays within its time budget (~2-3 min on 2 cores).
"""

from __future__ import annotations

import math

import pytest
import torch

from linearize.attention_variants import AttentionSpec, HybridAttentionCore
from linearize.kernels import INTERPRET, _apply_rope, hybrid_attention_kernel, kernel_fallback_reason

HIDDEN = 32


def _rope_tables(B, T, D, offset=0):
    pos = torch.arange(offset, offset + T).float()
    inv = 1.0 / (10000 ** (torch.arange(0, D, 2).float() / D))
    ang = torch.outer(pos, inv)
    ang = torch.cat([ang, ang], -1)
    return ang.cos()[None].expand(B, T, D), ang.sin()[None].expand(B, T, D)


def _inputs(B, H, HKV, T, D, pad, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = (torch.randn(B, H, T, D, generator=g) * 2).to(dtype)
    k = (torch.randn(B, HKV, T, D, generator=g) * 2).to(dtype)
    v = torch.randn(B, HKV, T, D, generator=g).to(dtype)
    hidden = torch.randn(B, T, HIDDEN, generator=g).to(dtype)
    cos, sin = _rope_tables(B, T, D)
    key_valid = None
    if pad:
        key_valid = torch.ones(B, T, dtype=torch.bool)
        key_valid[1, : max(1, T // 5)] = False  # left padding on row 1
        if T == 1:
            key_valid[1, 0] = True
    return q, k, v, hidden, cos.to(dtype), sin.to(dtype), key_valid


def _reference(core, q, k, v, cos, sin, hidden, scale, key_valid, state=None, recurrent=False):
    return core(q, k, v, _apply_rope(q, cos, sin), _apply_rope(k, cos, sin), hidden, scale, key_valid, None, state,
                recurrent=recurrent)


def _rel(a, b):
    return ((a.float() - b.float()).norm() / b.float().norm().clamp_min(1e-12)).item()


def test_interpreter_is_on():
    assert INTERPRET, "tests/conftest.py must set TRITON_INTERPRET=1 before triton is imported"


# (branches, gate, T, window, D, H, HKV, pad)
TRAIN_CASES = [
    ("hybrid", "key", 200, 64, 64, 3, 1, True),     # Liger-GLA, long (4 chunks), G=3, padding
    ("hybrid", "key", 100, 128, 128, 2, 2, True),   # window 128, D 128, G=1, padding
    ("hybrid", "key", 17, 64, 128, 6, 2, False),    # short ragged T, D 128, G=3
    ("hybrid", "key", 1, 64, 64, 3, 1, False),      # T = 1 training
    ("linear", "key", 64, 64, 64, 3, 1, True),      # GLA only, key gate
    ("linear", "none", 100, 64, 128, 2, 2, False),  # GLA only, no gate
    ("window", "key", 200, 128, 64, 3, 1, True),    # SWA only, window 128 (keys leave it)
]


@pytest.mark.parametrize("branches,gate,T,window,D,H,HKV,pad", TRAIN_CASES)
def test_forward_backward_fp32(branches, gate, T, window, D, H, HKV, pad):
    spec = AttentionSpec(branches=branches, gate=gate, window=window)
    core = HybridAttentionCore(spec, HIDDEN, H, HKV, D)
    B, scale = 2, 1.0 / math.sqrt(D)
    q, k, v, hidden, cos, sin, key_valid = _inputs(B, H, HKV, T, D, pad)
    assert kernel_fallback_reason(core, q, k, v) is None
    leaves = [x.requires_grad_() for x in (q, k, v)]
    out, st = hybrid_attention_kernel(core, q, k, v, cos, sin, hidden, scale, key_valid, None, None)
    assert st is None and out.shape == (B, H, T, D) and out.dtype == v.dtype
    ref, _ = _reference(core, q, k, v, cos, sin, hidden, scale, key_valid)
    do = torch.randn_like(ref)
    grads = torch.autograd.grad(out, leaves, do)
    ref_grads = torch.autograd.grad(ref, leaves, do)
    assert _rel(out, ref) <= 1e-4
    for name, g, rg in zip("qkv", grads, ref_grads):
        assert _rel(g, rg) <= 1e-4, name
    if key_valid is not None and not key_valid.all():  # padded rows give exactly zero output and no gradient at padding
        assert out[~key_valid[:, None, :].expand(B, H, T)].abs().max() == 0
        assert grads[2].permute(0, 2, 1, 3)[~key_valid].abs().max() == 0


def test_forward_backward_fp16():
    spec = AttentionSpec()  # Liger-GLA
    B, H, HKV, T, D = 2, 3, 1, 64, 64
    core = HybridAttentionCore(spec, HIDDEN, H, HKV, D)
    q, k, v, hidden, cos, sin, key_valid = _inputs(B, H, HKV, T, D, True, dtype=torch.float16)
    leaves = [x.requires_grad_() for x in (q, k, v)]
    out, _ = hybrid_attention_kernel(core, q, k, v, cos, sin, hidden, 0.125, key_valid, None, None)
    assert out.dtype == torch.float16
    do = torch.randn(out.shape, generator=torch.Generator().manual_seed(1)).half()
    grads = torch.autograd.grad(out, leaves, do)
    f32 = [x.detach().float().requires_grad_() for x in (q, k, v)]
    ref, _ = _reference(core, *f32, cos.float(), sin.float(), hidden.float(), 0.125, key_valid)
    ref_grads = torch.autograd.grad(ref, f32, do.float())
    assert _rel(out, ref) <= 5e-3
    for name, g, rg in zip("qkv", grads, ref_grads):
        assert g.dtype == torch.float16 and _rel(g, rg) <= 1e-2, name


def test_output_and_gradients_take_the_projection_layout():
    """A model passes q / k / v as (B, T, heads, D) projections seen as (B, heads, T, D): the output comes back
    in that layout (the model's reshape to (B, T, H * D) is a view) and so do dq / dk / dv (autograd passes
    them to the projections without a copy), with the reference's values."""
    spec = AttentionSpec()
    B, H, HKV, T, D = 2, 3, 1, 64, 64
    core = HybridAttentionCore(spec, HIDDEN, H, HKV, D)
    q, k, v, hidden, cos, sin, key_valid = _inputs(B, H, HKV, T, D, True)
    q, k, v = (x.transpose(1, 2).contiguous().transpose(1, 2).requires_grad_() for x in (q, k, v))
    out, _ = hybrid_attention_kernel(core, q, k, v, cos, sin, hidden, 0.125, key_valid, None, None)
    assert out.transpose(1, 2).is_contiguous()
    ref, _ = _reference(core, q, k, v, cos, sin, hidden, 0.125, key_valid)
    do = torch.randn(ref.shape, generator=torch.Generator().manual_seed(1)).transpose(1, 2).contiguous().transpose(1, 2)
    grads = torch.autograd.grad(out, (q, k, v), do)
    ref_grads = torch.autograd.grad(ref, (q, k, v), do)
    assert _rel(out, ref) <= 1e-4
    for name, x, g, rg in zip("qkv", (q, k, v), grads, ref_grads):
        assert g.stride() == x.stride() and _rel(g, rg) <= 1e-4, name


def test_padding_matches_row_alone():
    """Left padding in a batch gives the same result as the row alone (varying lengths)."""
    spec = AttentionSpec()
    H, HKV, T, D, P = 3, 1, 40, 64, 9
    core = HybridAttentionCore(spec, HIDDEN, H, HKV, D)
    q, k, v, hidden, cos, sin, _ = _inputs(2, H, HKV, T, D, False)
    key_valid = torch.ones(2, T, dtype=torch.bool)
    key_valid[1, :P] = False
    q[1, :, :P] = 100.0  # garbage in the padding must not leak
    k[1, :, :P] = -100.0
    v[1, :, :P] = 1e3
    out, _ = hybrid_attention_kernel(core, q, k, v, cos, sin, hidden, 0.125, key_valid, None, None)
    alone, _ = hybrid_attention_kernel(core, q[1:, :, P:], k[1:, :, P:], v[1:, :, P:], cos[1:, P:], sin[1:, P:],
                                       hidden[1:, P:], 0.125, None, None, None)
    assert _rel(out[1:, :, P:], alone) <= 1e-5
    assert out[1, :, :P].abs().max() == 0


def bf16_prefill_pairs(T=320, H=4, HKV=2, D=64):
    """A Liger-GLA bf16 prefill through the kernels and the fp32 reference on the same values:
    {"out": (kernel, reference), "state": (final linear state, reference's)}. Also used by
    scripts/state_dtype_error.py."""
    B = 2
    core = HybridAttentionCore(AttentionSpec(), HIDDEN, H, HKV, D)
    q, k, v, hidden, cos, sin, _ = _inputs(B, H, HKV, T, D, False, dtype=torch.bfloat16)
    with torch.no_grad():
        out, st = hybrid_attention_kernel(core, q, k, v, cos, sin, hidden, 0.125, None, None,
                                          core.empty_state(B, q.device, q.dtype))
        ref, ref_st = _reference(core, q.float(), k.float(), v.float(), cos.float(), sin.float(), hidden.float(),
                                 0.125, None, core.empty_state(B, q.device, torch.float32))
    return {"out": (out, ref), "state": (st["linear"], ref_st["linear"])}


def test_bf16_prefill_state_not_rounded_through_bf16_chunk_states():
    """Training stores bf16 inputs' chunk states in bf16 (``chunk_state_dtype``), but a prefill's final decoding
    state is summed from them by the scan: it keeps them fp32 (bf16 ones gave 6.1e-3 here; the output is the
    same either way)."""
    pairs = bf16_prefill_pairs()
    assert pairs["state"][0].dtype == torch.float32
    assert _rel(*pairs["out"]) <= 1e-2
    assert _rel(*pairs["state"]) <= 4.5e-3  # 3.4e-3: the dots' bf16 operands


@pytest.mark.parametrize("branches,window,D,H,HKV", [("hybrid", 64, 128, 6, 2), ("linear", 64, 64, 3, 1),
                                                     ("window", 128, 64, 3, 3)])
def test_prefill_then_decode(branches, window, D, H, HKV):
    """Prefill into a fresh state, then single-token decode steps: outputs and every state tensor."""
    spec = AttentionSpec(branches=branches, window=window)
    core = HybridAttentionCore(spec, HIDDEN, H, HKV, D)
    B, T, P, scale = 2, 20, 17, 1.0 / math.sqrt(D)
    q, k, v, hidden, cos, sin, key_valid = _inputs(B, H, HKV, T, D, True)
    with torch.no_grad():
        st = core.empty_state(B, q.device, q.dtype)
        ref_st = core.empty_state(B, q.device, q.dtype)
        sl = slice(0, P)
        out, st = hybrid_attention_kernel(core, q[:, :, sl], k[:, :, sl], v[:, :, sl], cos[:, sl], sin[:, sl],
                                          hidden[:, sl], scale, key_valid[:, sl], None, st)
        ref, ref_st = _reference(core, q[:, :, sl], k[:, :, sl], v[:, :, sl], cos[:, sl], sin[:, sl],
                                 hidden[:, sl], scale, key_valid[:, sl], ref_st)
        assert _rel(out, ref) <= 1e-4
        for t in range(P, T):
            sl = slice(t, t + 1)
            assert kernel_fallback_reason(core, q[:, :, sl], k[:, :, sl], v[:, :, sl], None, st) is None
            out, st = hybrid_attention_kernel(core, q[:, :, sl], k[:, :, sl], v[:, :, sl], cos[:, sl], sin[:, sl],
                                              hidden[:, sl], scale, key_valid[:, sl], None, st)
            ref, ref_st = _reference(core, q[:, :, sl], k[:, :, sl], v[:, :, sl], cos[:, sl], sin[:, sl],
                                     hidden[:, sl], scale, key_valid[:, sl], ref_st, recurrent=True)
            assert _rel(out, ref) <= 1e-4
        assert set(st) == set(ref_st)
        for name in ref_st:
            assert st[name].dtype == ref_st[name].dtype, name
            if name == "valid":
                assert torch.equal(st[name], ref_st[name])
            else:
                assert _rel(st[name], ref_st[name]) <= 1e-5, name


@pytest.mark.parametrize("variant", ["lolcats_state", "lolcats_window48", "softcap", "filled_window",
                                     "linear_weight_near_zero"])
def test_uncovered_variants_fall_back_to_reference(variant):
    """LoLCATs with a window that is no multiple of the chunk length / softcap / prefill on a non-empty cache /
    LoLCATs prefill on a non-empty linear state / a linear weight the kernels would divide by near zero:
    explicit reference, same results."""
    B, H, HKV, T, D = 2, 3, 1, 17, 64
    softcap, state = None, None
    if variant in ("lolcats_window48", "lolcats_state"):
        window = 48 if variant == "lolcats_window48" else 64
        spec = AttentionSpec(feature_map="hedgehog", gate="none", mix="shared", window=window)
    elif variant == "linear_weight_near_zero":
        spec = AttentionSpec(normalize=True, mix="weighted-linear")
    else:
        spec = AttentionSpec()
    core = HybridAttentionCore(spec, HIDDEN, H, HKV, D)
    if variant == "linear_weight_near_zero":
        with torch.no_grad():
            core.linear_weight[1] = 1e-4
    q, k, v, hidden, cos, sin, key_valid = _inputs(B, H, HKV, T, D, True)
    if variant == "softcap":
        softcap = 30.0
    if variant in ("filled_window", "lolcats_state"):
        state = core.empty_state(B, q.device, q.dtype)
    if variant == "filled_window":
        state["valid"][:, -3:] = True
    if variant == "lolcats_state":
        state["linear"] += 0.1
    reason = kernel_fallback_reason(core, q, k, v, softcap, state)
    assert reason is not None
    params = [p for p in core.parameters()]
    with torch.no_grad() if state is not None else torch.enable_grad():
        leaves = [x.requires_grad_(state is None) for x in (q, k, v, hidden)]
        out, _ = hybrid_attention_kernel(core, *leaves[:3], cos, sin, leaves[3], 0.125, key_valid, softcap, state)
        ref, _ = core(*leaves[:3], _apply_rope(leaves[0], cos, sin), _apply_rope(leaves[1], cos, sin), leaves[3], 0.125,
                      key_valid, softcap, state)
    assert torch.equal(out, ref)
    if state is None:
        assert bool(params) == (variant in ("lolcats_window48", "linear_weight_near_zero")), "learned parameters"
        grads = torch.autograd.grad(out.square().sum(), leaves[:3] + params)
        ref_grads = torch.autograd.grad(ref.square().sum(), leaves[:3] + params)
        for g, rg in zip(grads, ref_grads):
            assert torch.allclose(g, rg)


LIZARD = AttentionSpec(feature_map="hedgehog", gate="learned", normalize=True, window=128, num_sinks=4, mix="learned")
# The shipped lizard recipe: o = a * o_lin + o_win (the kernels run a * (o_lin + o_win / a)).
LIZARD_WEIGHTED = AttentionSpec(feature_map="hedgehog", gate="learned", normalize=True, window=128, num_sinks=4,
                                mix="weighted-linear")
# The shipped liger-gla recipe's linear branch: normalised, and a constant factor (folded into the kernels' mix).
LIGER_SCALED = AttentionSpec(normalize=True, linear_scale="rsqrt-head-dim")


def _learned_core(spec, H, HKV, D, seed=0):
    """A core whose learned parameters are away from their initial values (identity maps, zero sinks...)."""
    torch.manual_seed(seed)
    core = HybridAttentionCore(spec, HIDDEN, H, HKV, D)
    with torch.no_grad():
        for p in core.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    return core


# (name, spec, T, D, H, HKV, pad)
LEARNED_CASES = [
    ("lizard", LIZARD, 100, 64, 6, 2, True),            # G = 3, window 128, several chunks, padding
    ("lizard", LIZARD, 300, 32, 2, 1, True),            # long: chunk boundaries of states and gate grads
    ("lizard", LIZARD, 17, 128, 3, 3, False),           # D 128, short ragged T
    ("lizard_weighted_linear", LIZARD_WEIGHTED, 100, 64, 6, 2, True),  # the gradient of a through 1 / a
    ("liger_scaled_normalised", LIGER_SCALED, 64, 32, 3, 1, True),
    ("gla_hedgehog_learned_norm", AttentionSpec(branches="linear", feature_map="hedgehog", gate="learned",
                                                normalize=True), 64, 32, 3, 1, True),
    ("gla_key_norm", AttentionSpec(branches="linear", gate="key", normalize=True), 64, 32, 3, 1, True),
    ("swa_sinks", AttentionSpec(branches="window", window=64, num_sinks=4), 100, 32, 3, 1, True),
]


@pytest.mark.parametrize("name,spec,T,D,H,HKV,pad", LEARNED_CASES,
                         ids=[f"{c[0]}-T{c[2]}-D{c[3]}" for c in LEARNED_CASES])
def test_learned_variants_fp32(name, spec, T, D, H, HKV, pad):
    """Lizard and the blocks it is made of: outputs and grads of q, k, v, hidden and every learned parameter."""
    core = _learned_core(spec, H, HKV, D)
    B, scale = 2, 1.0 / math.sqrt(D)
    q, k, v, hidden, cos, sin, key_valid = _inputs(B, H, HKV, T, D, pad)
    assert kernel_fallback_reason(core, q, k, v) is None
    uses_hidden = spec.has_linear and spec.gate == "learned"
    leaves = [x.requires_grad_() for x in (q, k, v)] + ([hidden.requires_grad_()] if uses_hidden else [])
    named = list(core.named_parameters())
    names, params = [n for n, _ in named], [p for _, p in named]
    out, _ = hybrid_attention_kernel(core, q, k, v, cos, sin, hidden, scale, key_valid, None, None)
    ref, _ = _reference(core, q, k, v, cos, sin, hidden, scale, key_valid)
    assert out.shape == (B, H, T, D) and out.dtype == v.dtype
    do = torch.randn(ref.shape, generator=torch.Generator().manual_seed(1))
    grads = torch.autograd.grad(out, leaves + params, do)
    ref_grads = torch.autograd.grad(ref, leaves + params, do)
    assert _rel(out, ref) <= 1e-4
    for n, g, rg in zip(["q", "k", "v", "hidden"][: len(leaves)] + names, grads, ref_grads):
        assert _rel(g, rg) <= 1e-4, (n, _rel(g, rg))


LOW_PRECISION_SPECS = {"liger": AttentionSpec(), "lizard": LIZARD,
                       "lolcats": AttentionSpec(feature_map="hedgehog", gate="none", mix="shared", window=64)}
# (variant, dtype, H, HKV, T, D, output tolerance, gradient tolerance) against the fp32 reference. With bf16
# inputs Liger-GLA and LoLCATs store their chunk states in bf16 (``chunk_state_dtype``); LoLCATs' window_factor
# gradient, a sum over every row of bf16-rounded terms, is its largest error (4.2e-2 here, as with fp32 states).
LOW_PRECISION_CASES = [
    ("lizard", torch.float16, 3, 1, 64, 64, 5e-3, 1e-2),
    ("liger", torch.bfloat16, 4, 2, 96, 32, 2e-2, 3e-2),
    ("lizard", torch.bfloat16, 4, 2, 96, 32, 2e-2, 3e-2),
    ("lolcats", torch.bfloat16, 4, 2, 96, 32, 2e-2, 5e-2),
]


def low_precision_pairs(name, dtype, H, HKV, T, D):
    """Kernel output and grads of q, k, v and every learned parameter in ``dtype`` beside the fp32 reference's
    on the same values: {"out": (kernel, reference), "q": ..., parameter name: ...}. Also used by
    scripts/state_dtype_error.py."""
    core = _learned_core(LOW_PRECISION_SPECS[name], H, HKV, D)
    q, k, v, hidden, cos, sin, key_valid = _inputs(2, H, HKV, T, D, True, dtype=dtype)
    leaves = [x.requires_grad_() for x in (q, k, v)]
    names, params = zip(*core.named_parameters()) if name != "liger" else ((), ())
    out, _ = hybrid_attention_kernel(core, q, k, v, cos, sin, hidden.float(), 0.125, key_valid, None, None)
    do = torch.randn(out.shape, generator=torch.Generator().manual_seed(1)).to(dtype)
    grads = torch.autograd.grad(out, leaves + list(params), do)
    f32 = [x.detach().float().requires_grad_() for x in (q, k, v)]
    ref, _ = _reference(core, *f32, cos.float(), sin.float(), hidden.float(), 0.125, key_valid)
    ref_grads = torch.autograd.grad(ref, f32 + list(params), do.float())
    return {"out": (out, ref), **dict(zip(["q", "k", "v", *names], zip(grads, ref_grads)))}


@pytest.mark.parametrize("name,dtype,H,HKV,T,D,tol_out,tol_grad", LOW_PRECISION_CASES,
                         ids=[f"{c[0]}-{str(c[1])[6:]}" for c in LOW_PRECISION_CASES])
def test_low_precision_close_to_fp32_reference(name, dtype, H, HKV, T, D, tol_out, tol_grad):
    """fp16 and bf16 (the GPU training dtype) outputs and the grads of q, k, v and every learned parameter
    against the fp32 reference. Under the interpreter bf16 ``tl.dot`` is emulated (operands rounded to bf16,
    fp32 products) and its bf16 elementwise arithmetic is unusable (NaN), so the bf16 cases also pin that every
    tile held in bf16 is upcast before elementwise fp32 math (at this size the reference's own bf16 error is
    1-2e-2: ``gpu_check_kernels.py --smoke``)."""
    pairs = low_precision_pairs(name, dtype, H, HKV, T, D)
    out, ref = pairs.pop("out")
    assert out.dtype == dtype
    assert _rel(out, ref) <= tol_out
    for n, (g, rg) in pairs.items():
        assert torch.isfinite(g).all() and _rel(g, rg) <= tol_grad, (n, _rel(g, rg))


def test_learned_gate_gradient_over_many_chunks_fp16():
    """The learned gate's gradient sums, for each token, every (query, key) pair whose decay spans it. Summing
    per-token terms over the whole sequence cancels large state terms and loses the result to rounding (on an
    H100 in bf16 at T = 2k: 0.7 relative error); summing within chunks plus one boundary term per chunk does not.
    16 chunks in fp16: the gate grads stay within 2x the fp16 reference's own error (the sequence-long sum
    fails this)."""
    D, T = 32, 512
    core = _learned_core(LIZARD, 2, 1, D)
    q, k, v, hidden, cos, sin, _ = _inputs(1, 2, 1, T, D, False, dtype=torch.float16)
    named = [(n, p) for n, p in core.named_parameters() if n.startswith("gate_proj")]
    params = [p for _, p in named]
    out, _ = hybrid_attention_kernel(core, q, k, v, cos, sin, hidden.float(), 1 / math.sqrt(D), None, None, None)
    do = torch.randn(out.shape, generator=torch.Generator().manual_seed(1)).half()
    grads = torch.autograd.grad(out, params, do)
    ref, _ = _reference(core, *(x.float() for x in (q, k, v)), cos.float(), sin.float(), hidden.float(),
                        1 / math.sqrt(D), None)
    ref_grads = torch.autograd.grad(ref, params, do.float())
    with torch.autocast("cpu", dtype=torch.float16):
        low, _ = _reference(core, q, k, v, cos, sin, hidden.float(), 1 / math.sqrt(D), None)
        low_grads = torch.autograd.grad(low, params, do)
    for (n, _), g, rg, lg in zip(named, grads, ref_grads, low_grads):
        assert _rel(g, rg) <= 2 * _rel(lg, rg), (n, _rel(g, rg), _rel(lg, rg))


def test_normalised_fp16_gradients_stay_in_range_when_features_barely_meet():
    """Normalised GLA's gradients carry 1/den, which exceeds fp16's range where a query's features barely
    overlap the keys' (peaky hedgehog maps; on an H100 Lizard's fp16 backward at T = 2k had 2.5M non-finite
    entries). The fp16 dots take such operands scaled by a power of two: finite, and at fp16-level error."""
    D, T = 32, 64
    core = _learned_core(LIZARD, 2, 1, D)
    with torch.no_grad():
        core.feature_map_q.weight.mul_(2)
        core.feature_map_k.weight.mul_(2)
    q, k, v, hidden, cos, sin, key_valid = _inputs(2, 2, 1, T, D, True, dtype=torch.float16)
    leaves = [x.requires_grad_() for x in (q, k, v)]
    names, params = zip(*core.named_parameters())
    out, _ = hybrid_attention_kernel(core, *leaves, cos, sin, hidden.float(), 1 / math.sqrt(D), key_valid, None, None)
    do = torch.randn(out.shape, generator=torch.Generator().manual_seed(1)).half()
    grads = torch.autograd.grad(out, leaves + list(params), do)
    f32 = [x.detach().float().requires_grad_() for x in (q, k, v)]
    ref, _ = _reference(core, *f32, cos.float(), sin.float(), hidden.float(), 1 / math.sqrt(D), key_valid)
    ref_grads = torch.autograd.grad(ref, f32 + list(params), do.float())
    for n, g, rg in zip(["q", "k", "v"] + list(names), grads, ref_grads):
        assert torch.isfinite(g).all() and _rel(g, rg) <= 1e-2, (n, _rel(g, rg))
