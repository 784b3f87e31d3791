"""LoLCATs Triton kernels (``linearize/kernels/lolcats_chunked.py``) vs the PyTorch reference, on CPU
under TRITON_INTERPRET=1 (chunk length 32, so window 64 spans two chunks and 128 four).

Each case covers several dimensions at once (T in {1, 17, 64, 100, 300}, window 64 / 128, head dim
64 / 128, GQA groups 1 and 3, batch 2 with left padding, strided inputs) instead of the full cross
product. Gradients: q, k, v, the hedgehog weights W_q, W_k and window_factor, on parameters moved away
from their initial values.
"""

from __future__ import annotations

import math

import pytest
import torch

from linearize.attention_variants import AttentionSpec
from linearize.kernels import hybrid_attention_kernel, kernel_fallback_reason
from test_kernels import _inputs, _learned_core, _reference, _rel


def _lolcats(window=64):
    return AttentionSpec(feature_map="hedgehog", gate="none", mix="shared", window=window)


def _run(core, q, k, v, cos, sin, hidden, scale, key_valid, do, kernel):
    """Output and grads of (q, k, v, *parameters) through the kernels or the reference."""
    if kernel:
        out, _ = hybrid_attention_kernel(core, q, k, v, cos, sin, hidden, scale, key_valid, None, None)
    else:
        out, _ = _reference(core, q, k, v, cos, sin, hidden, scale, key_valid)
    named = dict(core.named_parameters())
    return out, dict(zip(["q", "k", "v", *named], torch.autograd.grad(out, [q, k, v, *named.values()], do)))


def _strided(x):
    """The same values as a (B, T, heads, D) tensor's transpose(1, 2) view, as the model passes them."""
    return x.transpose(1, 2).contiguous().transpose(1, 2)


# (T, window, D, H, HKV, pad, strided)
CASES = [
    (300, 64, 64, 3, 1, True, False),    # long, G = 3, padding: states over many chunks
    (300, 128, 64, 2, 2, True, True),    # window 128, G = 1, strided q/k/v
    (100, 64, 128, 2, 2, False, False),  # head dim 128
    (64, 64, 64, 3, 1, True, False),     # T = window: no key is older than the window yet
    (17, 64, 64, 3, 3, False, True),     # short ragged T
    (1, 64, 64, 3, 1, False, False),     # single token
]


@pytest.mark.parametrize("T,window,D,H,HKV,pad,strided", CASES, ids=[f"T{c[0]}-W{c[1]}-D{c[2]}-G{c[3] // c[4]}"
                                                                     for c in CASES])
def test_lolcats_fp32(T, window, D, H, HKV, pad, strided):
    core = _learned_core(_lolcats(window), H, HKV, D)
    B, scale = 2, 1.0 / math.sqrt(D)
    q, k, v, hidden, cos, sin, key_valid = _inputs(B, H, HKV, T, D, pad)
    if strided:
        q, k, v = _strided(q), _strided(k), _strided(v)
    assert kernel_fallback_reason(core, q, k, v) is None
    q, k, v = (x.requires_grad_() for x in (q, k, v))
    do = torch.randn(B, H, T, D, generator=torch.Generator().manual_seed(1))
    out, grads = _run(core, q, k, v, cos, sin, hidden, scale, key_valid, do, kernel=True)
    ref, ref_grads = _run(core, q, k, v, cos, sin, hidden, scale, key_valid, do, kernel=False)
    assert out.shape == (B, H, T, D) and out.dtype == v.dtype
    if strided:  # output and gradients in the model's layout (no copy on either side)
        assert out.transpose(1, 2).is_contiguous()
        assert all(grads[n].stride() == x.stride() for n, x in zip("qkv", (q, k, v)))
    assert _rel(out, ref) <= 1e-4
    for name, g in grads.items():
        if name == "window_factor" and T <= window:
            # No linear term: gamma cancels in the shared normaliser, the true gradient is 0 (both give
            # fp32 rounding noise summed over the rows).
            assert g.abs().max() <= 1e-4 and ref_grads[name].abs().max() <= 1e-4
        else:
            assert _rel(g, ref_grads[name]) <= 1e-4, (name, _rel(g, ref_grads[name]))
    if key_valid is not None:  # padded rows: zero output, no gradient into padded keys / values
        assert out[~key_valid[:, None, :].expand(B, H, T)].abs().max() == 0
        assert grads["v"].permute(0, 2, 1, 3)[~key_valid].abs().max() == 0
        assert grads["k"].permute(0, 2, 1, 3)[~key_valid].abs().max() == 0


def test_lolcats_fp16():
    """fp16 inputs against the fp32 reference on the same values."""
    B, H, HKV, T, D = 2, 3, 1, 100, 64
    core = _learned_core(_lolcats(), H, HKV, D)
    q, k, v, hidden, cos, sin, key_valid = _inputs(B, H, HKV, T, D, True, dtype=torch.float16)
    q, k, v = (x.requires_grad_() for x in (q, k, v))
    do = torch.randn(B, H, T, D, generator=torch.Generator().manual_seed(1)).half()
    out, grads = _run(core, q, k, v, cos, sin, hidden, 0.125, key_valid, do, kernel=True)
    assert out.dtype == torch.float16
    f32 = [x.detach().float().requires_grad_() for x in (q, k, v)]
    ref, ref_grads = _run(core, *f32, cos.float(), sin.float(), hidden.float(), 0.125, key_valid, do.float(),
                          kernel=False)
    assert _rel(out, ref) <= 5e-3
    for name, g in grads.items():
        assert torch.isfinite(g).all() and _rel(g, ref_grads[name]) <= 1e-2, (name, _rel(g, ref_grads[name]))


def test_lolcats_padding_matches_row_alone():
    """A left-padded row gives the same output and q/k/v gradients as the row alone (garbage in the padding)."""
    H, HKV, T, D, P = 3, 1, 100, 64, 9
    core = _learned_core(_lolcats(), H, HKV, D)
    q, k, v, hidden, cos, sin, _ = _inputs(2, H, HKV, T, D, False)
    key_valid = torch.ones(2, T, dtype=torch.bool)
    key_valid[1, :P] = False
    q[1, :, :P] = 100.0
    k[1, :, :P] = -100.0
    v[1, :, :P] = 1e3
    do = torch.randn(2, H, T, D, generator=torch.Generator().manual_seed(1))
    leaves = [x.requires_grad_() for x in (q, k, v)]
    out, grads = _run(core, *leaves, cos, sin, hidden, 0.125, key_valid, do, kernel=True)
    alone_leaves = [x.detach()[1:, :, P:].clone().requires_grad_() for x in (q, k, v)]
    alone, alone_grads = _run(core, *alone_leaves, cos[1:, P:], sin[1:, P:], hidden[1:, P:], 0.125, None,
                              do[1:, :, P:], kernel=True)
    assert _rel(out[1:, :, P:], alone) <= 1e-5
    assert out[1, :, :P].abs().max() == 0
    for name in "qkv":
        assert _rel(grads[name][1:, :, P:], alone_grads[name]) <= 1e-5, name
        assert grads[name][1, :, :P].abs().max() == 0, name


def test_lolcats_fallbacks():
    """A window that is not a multiple of the chunk length, and a prefill on top of a non-empty decoding state,
    use the reference."""
    core = _learned_core(_lolcats(48), 3, 1, 64)
    q, k, v, hidden, cos, sin, key_valid = _inputs(2, 3, 1, 17, 64, True)
    assert "multiple" in kernel_fallback_reason(core, q, k, v)
    core = _learned_core(_lolcats(), 3, 1, 64)
    with torch.no_grad():
        state = core.empty_state(2, q.device, q.dtype)
        assert kernel_fallback_reason(core, q, k, v, None, state) is None  # a fresh state: kernels
        state["valid"][:, -2:] = True
        assert "window buffer" in kernel_fallback_reason(core, q, k, v, None, state)
        out, new_state = hybrid_attention_kernel(core, q, k, v, cos, sin, hidden, 0.125, key_valid, None, state)
        ref, ref_state = _reference(core, q, k, v, cos, sin, hidden, 0.125, key_valid, state)
    assert torch.equal(out, ref) and set(new_state) == set(ref_state)
