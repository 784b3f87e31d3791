"""Kernels with a decoding state for Lizard-style features and LoLCATs, on CPU under TRITON_INTERPRET=1.

Prefill into a fresh state (``_fwd`` with its final state; LoLCATs: its fused kernels, then the state) and
single-token decode steps (``_hybrid_decode``, ``_lolcats_decode``) against the reference
(``HybridAttentionCore``: chunked prefill, then recurrent steps): hedgehog maps, learned gate, normaliser
(the ``z`` column of the linear state), sinks and learned mix; LoLCATs' shared normaliser, keys leaving the
window for the linear state, the feature buffer. Outputs and every state tensor are compared, the normaliser
column on its own.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from linearize.attention_variants import AttentionSpec, HybridAttentionCore
from linearize.kernels import hybrid_attention_kernel, kernel_fallback_reason
from test_kernels import HIDDEN, LIGER_SCALED, LIZARD, LIZARD_WEIGHTED, _inputs, _learned_core, _reference, _rel

GLA_HH = AttentionSpec(branches="linear", feature_map="hedgehog", gate="learned", normalize=True)
LOLCATS_W32 = AttentionSpec(feature_map="hedgehog", gate="none", window=32, mix="shared")
LIZARD_W16 = AttentionSpec(feature_map="hedgehog", gate="learned", normalize=True, window=16, num_sinks=4,
                           mix="learned")


def _args(x, t0, t1):
    """The slice [t0, t1) of the inputs, in ``hybrid_attention_kernel``'s argument order (up to key_valid)."""
    q, k, v, hidden, cos, sin, key_valid, scale = x
    sl = slice(t0, t1)
    return (q[:, :, sl], k[:, :, sl], v[:, :, sl], cos[:, sl], sin[:, sl], hidden[:, sl], scale,
            None if key_valid is None else key_valid[:, sl])


def _kernel_step(core, x, t0, t1, state):
    args = _args(x, t0, t1)
    assert kernel_fallback_reason(core, *args[:3], None, state) is None
    return hybrid_attention_kernel(core, *args, None, state)


def _reference_step(core, x, t0, t1, state):
    return _reference(core, *_args(x, t0, t1), state, recurrent=(t1 - t0 == 1))


def _state_errors(core, st, ref_st):
    """Relative error of every state tensor (the normaliser column of ``linear`` separately)."""
    assert set(st) == set(ref_st)
    errs = {}
    for name in ref_st:
        assert st[name].dtype == ref_st[name].dtype and st[name].shape == ref_st[name].shape, name
        if name == "valid":
            assert torch.equal(st[name], ref_st[name])
        elif name == "linear" and core.spec.normalize:
            errs["S"] = _rel(st[name][..., :-1], ref_st[name][..., :-1])
            errs["z"] = _rel(st[name][..., -1], ref_st[name][..., -1])
        else:
            errs[name] = _rel(st[name], ref_st[name])
    return errs


# (name, spec, D, H, HKV, prefill lengths, decode steps after each prefill)
CASES = [
    ("lizard_w128", LIZARD, 64, 6, 2, (130,), 3),     # G = 3, window 128 full after the prefill
    ("lizard_w16", LIZARD_W16, 64, 3, 1, (37,), 4),   # window smaller than the prefill
    ("lizard_d128", LIZARD_W16, 128, 2, 2, (20,), 2),  # D 128: F = 256 hedgehog state
    ("lizard_weighted_linear", LIZARD_WEIGHTED, 32, 3, 1, (130,), 2),
    ("liger_scaled_normalised", LIGER_SCALED, 32, 3, 1, (70,), 2),
    ("gla_hh_learned_norm", GLA_HH, 64, 6, 2, (40, 21), 3),  # second prefill on a non-empty state (s0, z0)
    ("gla_key_norm", AttentionSpec(branches="linear", gate="key", normalize=True), 64, 3, 1, (40,), 3),
    ("swa_sinks", AttentionSpec(branches="window", window=32, num_sinks=4), 64, 3, 1, (40,), 3),
    ("lolcats_w32", LOLCATS_W32, 64, 6, 2, (70,), 4),  # keys older than the window in the linear state
    ("lolcats_short_d128", LOLCATS_W32, 128, 2, 2, (20,), 14),  # prompt shorter than the window, evictions
]


@pytest.mark.parametrize("name,spec,D,H,HKV,prefills,steps", CASES, ids=[c[0] for c in CASES])
def test_prefill_then_decode_fp32(name, spec, D, H, HKV, prefills, steps):
    """Kernel prefill then kernel decode steps == reference prefill then recurrent steps (outputs, states).

    Row 1 is left-padded; row 0's last decode token is padding (zero output, no state update, as the reference)."""
    core = _learned_core(spec, H, HKV, D)
    B = 2
    T = sum(prefills) + steps * len(prefills)
    q, k, v, hidden, cos, sin, key_valid = _inputs(B, H, HKV, T, D, True)
    key_valid[0, -1] = False
    x = (q, k, v, hidden, cos, sin, key_valid, 1.0 / math.sqrt(D))
    with torch.no_grad():
        st = core.empty_state(B, x[0].device, x[0].dtype)
        ref_st = core.empty_state(B, x[0].device, x[0].dtype)
        t = 0
        for n in prefills:
            spans = [(t, t + n)] + [(t + n + i, t + n + i + 1) for i in range(steps)]
            for t0, t1 in spans:
                out, st = _kernel_step(core, x, t0, t1, st)
                ref, ref_st = _reference_step(core, x, t0, t1, ref_st)
                errs = {"out": _rel(out, ref), **_state_errors(core, st, ref_st)}
                assert all(e <= 1e-4 for e in errs.values()), (t0, t1, errs)
            t = spans[-1][1]
    assert out[0].abs().max() == 0
    if spec.has_linear and spec.normalize:
        assert ref_st["linear"][..., -1].abs().min() > 0  # the normaliser column is exercised


@pytest.mark.parametrize("spec,P", [(LIZARD_W16, 20), (LOLCATS_W32, 40)], ids=["lizard", "lolcats"])
def test_prefill_then_decode_fp16(spec, P):
    """fp16 inputs and window buffers: the kernel stream against the fp32 reference stream."""
    core = _learned_core(spec, 3, 1, 64)
    B, steps = 2, 3
    q, k, v, hidden, cos, sin, key_valid = _inputs(B, 3, 1, P + steps, 64, True, dtype=torch.float16)
    x16 = (q, k, v, hidden.float(), cos, sin, key_valid, 0.125)
    x32 = (q.float(), k.float(), v.float(), hidden.float(), cos.float(), sin.float(), key_valid, 0.125)
    with torch.no_grad():
        st = core.empty_state(B, q.device, torch.float16)
        ref_st = core.empty_state(B, q.device, torch.float32)
        for t0, t1 in [(0, P)] + [(t, t + 1) for t in range(P, P + steps)]:
            out, st = _kernel_step(core, x16, t0, t1, st)
            ref, ref_st = _reference_step(core, x32, t0, t1, ref_st)
            assert out.dtype == torch.float16 and st["k"].dtype == torch.float16
            errs = {"out": _rel(out, ref), "S": _rel(st["linear"][..., :-1], ref_st["linear"][..., :-1]),
                    "z": _rel(st["linear"][..., -1], ref_st["linear"][..., -1]),
                    "k": _rel(st["k"], ref_st["k"]), "v": _rel(st["v"], ref_st["v"])}
            assert all(e <= 5e-3 for e in errs.values()), (t0, t1, errs)


@pytest.mark.parametrize("spec,P", [(LIZARD_W16, 24), (LOLCATS_W32, 40)], ids=["lizard", "lolcats"])
def test_paths_interchangeable_mid_stream(spec, P):
    """Reference prefill then kernel decode (and kernel prefill then alternating steps) == pure reference."""
    core = _learned_core(spec, 6, 2, 64, seed=1)
    B, steps = 2, 3
    x = (*_inputs(B, 6, 2, P + steps, 64, True, seed=1), 0.125)
    spans = [(0, P)] + [(t, t + 1) for t in range(P, P + steps)]
    streams = {
        "reference": [_reference_step] * len(spans),
        "ref_prefill_kernel_decode": [_reference_step] + [_kernel_step] * steps,
        "kernel_prefill_alternating": [_kernel_step, _reference_step, _kernel_step, _reference_step],
    }
    outs = {}
    with torch.no_grad():
        for name, runners in streams.items():
            st = core.empty_state(B, x[0].device, x[0].dtype)
            outs[name] = []
            for run, (t0, t1) in zip(runners, spans):
                out, st = run(core, x, t0, t1, st)
                outs[name].append(out)
            outs[name].append(st)
    ref = outs.pop("reference")
    for name, seq in outs.items():
        for i, (out, r) in enumerate(zip(seq[:-1], ref[:-1])):
            assert _rel(out, r) <= 1e-4, (name, i, _rel(out, r))
        errs = _state_errors(core, seq[-1], ref[-1])
        assert all(e <= 1e-4 for e in errs.values()), (name, errs)


def test_learned_gate_over_several_hidden_blocks():
    """The decode kernel takes Lizard's log-gate ``logsigmoid(gate_proj(hidden))`` itself, walking the hidden
    state in blocks of 256: at hidden size 600 (two whole blocks and a partial one, the logits spread by the
    perturbed weights) a kernel step after a reference prefill gives the reference step's output and state."""
    torch.manual_seed(2)
    core = HybridAttentionCore(LIZARD_W16, 600, 6, 2, 64)
    with torch.no_grad():
        for p in core.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    q, k, v, _, cos, sin, key_valid = _inputs(2, 6, 2, 21, 64, True, seed=2)
    hidden = torch.randn(2, 21, 600)
    x = (q, k, v, hidden, cos, sin, key_valid, 0.125)
    with torch.no_grad():
        _, st = _reference_step(core, x, 0, 20, core.empty_state(2, q.device, q.dtype))
        lg = torch.nn.functional.logsigmoid(core.gate_proj(hidden[:, 20]))
        assert lg.std() > 0.5  # the gate differs across rows and heads: a wrong dot would show
        out, new = _kernel_step(core, x, 20, 21, st)
        ref, ref_new = _reference_step(core, x, 20, 21, st)
    errs = {"out": _rel(out, ref), **_state_errors(core, new, ref_new)}
    assert all(e <= 1e-4 for e in errs.values()), errs


def test_state_with_grad_falls_back():
    """The decode / prefill kernels do not differentiate: with grad enabled on learned parameters or on k
    alone, reference."""
    core = HybridAttentionCore(LIZARD, HIDDEN, 3, 1, 64)
    q, k, v, *_ = _inputs(2, 3, 1, 1, 64, False)
    state = core.empty_state(2, q.device, q.dtype)
    assert kernel_fallback_reason(core, q, k, v, None, state) is not None
    with torch.no_grad():
        assert kernel_fallback_reason(core, q, k, v, None, state) is None
    core.requires_grad_(False)
    assert kernel_fallback_reason(core, q, k, v, None, state) is None
    assert kernel_fallback_reason(core, q, k.detach().requires_grad_(), v, None, state) is not None


class _CountOps(TorchDispatchMode):
    """The aten ops dispatched while active (on a GPU each non-view op is a kernel launch or an allocation)."""

    def __init__(self):
        super().__init__()
        self.ops = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops.append(func.overloadpacket.__name__)
        return func(*args, **(kwargs or {}))


ALLOCATIONS_AND_VIEWS = {"empty", "empty_like", "view", "t", "transpose", "slice", "select", "unsqueeze", "expand",
                         "alias", "detach"}


@pytest.mark.parametrize("name,spec", [("liger", AttentionSpec()), ("lizard", LIZARD), ("lolcats", LOLCATS_W32)],
                         ids=["liger", "lizard", "lolcats"])
@pytest.mark.parametrize("padded", [False, True], ids=["no_mask", "mask"])
def test_decode_step_is_one_launch(monkeypatch, name, spec, padded):
    """A decode step is the kernel launch plus allocations of its output and new state: the step's padding flag,
    the window-validity shift and Lizard's learned gate (``logsigmoid(gate_proj(hidden))``, three ops before
    session 7) are read, computed and written by the kernel, not prepared by torch ops (five of them before
    session 4, each its own GPU launch with its own latency, against a whole step of 0.08 - 0.17 ms measured
    on an H100 at B = 16). The kernel launch is stubbed: only the torch side is counted."""
    import linearize.kernels as kernels

    class _NoLaunch:
        def __getitem__(self, grid):
            return lambda *args, **kwargs: None

    monkeypatch.setattr(kernels, "_hybrid_decode", _NoLaunch())
    monkeypatch.setattr(kernels, "_lolcats_decode", _NoLaunch())
    core = _learned_core(spec, 4, 2, 32)
    q, k, v, hidden, cos, sin, key_valid = _inputs(2, 4, 2, 1, 32, False)
    state = core.empty_state(2, q.device, q.dtype)
    mask = torch.ones(2, 300, dtype=torch.bool) if padded else None  # a whole generation's mask
    with torch.no_grad(), _CountOps() as counted:
        hybrid_attention_kernel(core, q, k, v, cos, sin, hidden, 0.125, mask, None, state)
    assert set(counted.ops) <= ALLOCATIONS_AND_VIEWS, counted.ops
