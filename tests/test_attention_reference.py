"""The reference attention: chunked == recurrent for every variant, stability, padding, GQA."""

import pytest
import torch

from linearize.attention_reference import gla_chunked, gla_recurrent, window_attention_chunked
from linearize.attention_variants import AttentionSpec, HybridAttentionCore
from linearize.recipes import load_recipe

B, H, HKV, D, HIDDEN = 2, 6, 2, 16, 32

VARIANTS = {
    "liger-gla": AttentionSpec(window=8),
    "lizard": AttentionSpec(
        feature_map="hedgehog", gate="learned", normalize=True, window=8, num_sinks=4, mix="weighted-linear"
    ),

    "lolcats": AttentionSpec(feature_map="hedgehog", gate="none", window=8, mix="shared"),
    "gla": AttentionSpec(branches="linear", window=0),
    "gla-learned-normalized": AttentionSpec(branches="linear", feature_map="hedgehog", gate="learned", normalize=True),
    "swa": AttentionSpec(branches="window", window=8),
    "swa-sinks": AttentionSpec(branches="window", window=8, num_sinks=2),
}


def _core(spec: AttentionSpec, seed: int = 0) -> HybridAttentionCore:
    torch.manual_seed(seed)
    core = HybridAttentionCore(spec, HIDDEN, H, HKV, D).double()
    with torch.no_grad():  # move learned parts away from their (symmetric) initial values
        for p in core.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return core


def _inputs(T: int, seed: int = 1, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g, dtype=dtype)  # noqa: E731
    return dict(
        q_raw=r(B, H, T, D), k_raw=r(B, HKV, T, D), v=r(B, HKV, T, D),
        q_rope=r(B, H, T, D), k_rope=r(B, HKV, T, D), hidden=r(B, T, HIDDEN),
    )


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("T", [1, 5, 37])  # T = 1, T < window (8), T not a multiple of the chunk (32)
def test_chunked_equals_recurrent(variant, T):
    core = _core(VARIANTS[variant])
    x = _inputs(T)
    with torch.no_grad():
        chunked, _ = core(**x, scale=D**-0.5)
        recurrent, _ = core(**x, scale=D**-0.5, recurrent=True)
    assert chunked.shape == (B, H, T, D)
    assert (chunked - recurrent).abs().max().item() <= 1e-5


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_chunked_equals_recurrent_fp32_with_padding_and_state(variant):
    """fp32, left padding in one row, and a prefill continued from a carried state."""
    core = _core(VARIANTS[variant]).float()
    x = {k: v.float() for k, v in _inputs(45).items()}
    valid = torch.ones(B, 45, dtype=torch.bool)
    valid[1, :11] = False
    empty = core.empty_state(B, "cpu", torch.float32)
    with torch.no_grad():
        recurrent, state_r = core(**x, scale=D**-0.5, key_valid=valid, state=empty, recurrent=True)
        first = {k: v[:, :, :20] if v.dim() == 4 else v[:, :20] for k, v in x.items()}
        rest = {k: v[:, :, 20:] if v.dim() == 4 else v[:, 20:] for k, v in x.items()}
        out1, state = core(**first, scale=D**-0.5, key_valid=valid[:, :20], state=empty)
        out2, state_c = core(**rest, scale=D**-0.5, key_valid=valid[:, 20:], state=state)
    chunked = torch.cat([out1, out2], dim=2)
    assert (chunked - recurrent).abs().max().item() <= 1e-5
    assert set(state_c) == set(state_r)
    for name in state_c:
        assert torch.allclose(state_c[name].float(), state_r[name].float(), atol=1e-5), name
    assert chunked[1, :, :11].abs().max() == 0  # padded query positions give nothing


@pytest.mark.parametrize("variant", ["liger-gla", "lizard", "lolcats"])
def test_padding_never_reaches_the_state(variant):
    """A left-padded row gives the same output as the same row without its padding."""
    core = _core(VARIANTS[variant])
    x = _inputs(30)
    valid = torch.ones(B, 30, dtype=torch.bool)
    valid[0, :7] = False
    with torch.no_grad():
        padded, _ = core(**x, scale=D**-0.5, key_valid=valid)
        alone_inputs = {k: v[:1, :, 7:] if v.dim() == 4 else v[:1, 7:] for k, v in x.items()}
        alone, _ = core(**alone_inputs, scale=D**-0.5)
    assert (padded[0, :, 7:] - alone[0]).abs().max().item() <= 1e-10


def test_shipped_recipes_match_the_spec_table():
    """The shipped recipes configure the variants the README's table describes: the papers' formulations
    (the -paper recipes), and liger-gla / lizard with their scaled or re-weighted linear branch."""
    liger, lizard, lolcats, liger_paper, lizard_paper = (
        load_recipe(n).attention.to_spec()
        for n in ("liger-gla", "lizard", "lolcats", "liger-gla-paper", "lizard-paper"))
    assert (liger_paper.feature_map, liger_paper.gate, liger_paper.gate_scale, liger_paper.window, liger_paper.mix,
            liger_paper.linear_scale) == ("softmax", "key", 16, 64, "average", "none")
    assert liger == AttentionSpec(**{**liger_paper.to_dict(), "normalize": True})
    assert (lizard_paper.feature_map, lizard_paper.gate, lizard_paper.normalize, lizard_paper.window,
            lizard_paper.num_sinks, lizard_paper.mix) == ("hedgehog", "learned", True, 128, 4, "learned")
    assert lizard == AttentionSpec(**{**lizard_paper.to_dict(), "mix": "weighted-linear", "linear_weight_init": 0.1})
    assert (lolcats.feature_map, lolcats.gate, lolcats.window, lolcats.mix) == ("hedgehog", "none", 64, "shared")


def test_liger_gla_matches_its_formula_written_out():
    """o = 0.5 * softmax(q) S_t + 0.5 * SWA, S_t = diag(exp(logsigmoid(k)/16)) S_{t-1} + softmax(k)^T v."""
    core = _core(VARIANTS["liger-gla"])
    x = _inputs(12)
    with torch.no_grad():
        out, _ = core(**x, scale=D**-0.5)
    b, h = 1, 4
    kv = h // (H // HKV)
    qf, kf = x["q_raw"][b, h].softmax(-1), x["k_raw"][b, kv].softmax(-1)
    gate = torch.nn.functional.logsigmoid(x["k_raw"][b, kv]) / 16
    S = torch.zeros(D, D, dtype=torch.float64)
    for t in range(12):
        S = torch.exp(gate[t])[:, None] * S + kf[t][:, None] * x["v"][b, kv, t][None]
        o_gla = qf[t] @ S
        lo = max(0, t - 8 + 1)
        scores = x["q_rope"][b, h, t] @ x["k_rope"][b, kv, lo : t + 1].T * D**-0.5
        o_swa = scores.softmax(-1) @ x["v"][b, kv, lo : t + 1]
        assert torch.allclose(out[b, h, t], 0.5 * o_gla + 0.5 * o_swa, atol=1e-10)


def test_scaled_and_weighted_linear_branches_match_their_formulas():
    """linear_scale rsqrt-head-dim: o = 0.5 * o_gla / sqrt(D) + 0.5 * o_swa. Mix weighted-linear:
    o = a_h * o_gla + o_swa (a from linear_weight_init); mix learned (Lizard's paper): o = o_gla + alpha_h * o_swa."""
    x = _inputs(12)
    outs = {}
    for name, spec in {"plain": AttentionSpec(window=8, normalize=True),
                       "scaled": AttentionSpec(window=8, normalize=True, linear_scale="rsqrt-head-dim"),
                       "weighted": AttentionSpec(window=8, normalize=True, mix="weighted-linear",
                                                 linear_weight_init=0.3),
                       "learned": AttentionSpec(window=8, normalize=True, mix="learned"),
                       "linear": AttentionSpec(branches="linear", normalize=True),
                       "window": AttentionSpec(branches="window", window=8)}.items():
        core = HybridAttentionCore(spec, HIDDEN, H, HKV, D).double()
        if name == "learned":
            with torch.no_grad():
                core.mix_alpha.copy_(torch.linspace(0.5, 2.0, H))
        with torch.no_grad():
            outs[name], _ = core(**x, scale=D**-0.5)
    o_gla, o_swa = outs["linear"], outs["window"]
    torch.testing.assert_close(outs["plain"], 0.5 * o_gla + 0.5 * o_swa)
    torch.testing.assert_close(outs["scaled"], 0.5 * o_gla / D**0.5 + 0.5 * o_swa)
    torch.testing.assert_close(outs["weighted"], 0.3 * o_gla + o_swa)
    torch.testing.assert_close(outs["learned"], o_gla + torch.linspace(0.5, 2.0, H).double().view(1, H, 1, 1) * o_swa)


def test_unit_gate_is_ungated_linear_attention():
    """exp(g) = 1 reduces GLA to causal linear attention (q k^T masked) v."""
    torch.manual_seed(0)
    q, k, v = torch.rand(1, 2, 3, 50, 8).double(), torch.rand(1, 2, 50, 8).double(), torch.randn(1, 2, 50, 8).double()
    o, _ = gla_chunked(q, k, v, torch.zeros(1, 2, 50, 8, dtype=torch.float64), chunk_size=16)
    scores = torch.einsum("bhgtf,bhsf->bhgts", q, k).tril()
    expected = torch.einsum("bhgts,bhsd->bhgtd", scores, v)
    assert (o - expected).abs().max().item() <= 1e-5
    o_none, _ = gla_chunked(q, k, v, None, chunk_size=16)
    assert (o_none - expected).abs().max().item() <= 1e-5


@pytest.mark.parametrize("per_dim", [True, False])
def test_gla_chunked_is_stable_under_strong_decay(per_dim):
    """Cumulative gates of -5 per step over 2000 steps: no overflow, same as the recurrence."""
    torch.manual_seed(0)
    T = 2000
    q, k, v = torch.rand(1, 1, 2, T, 8), torch.rand(1, 1, T, 8), torch.randn(1, 1, T, 8)
    gate = -5 * torch.rand(1, 1, T, 8 if per_dim else 1)
    o_c, s_c = gla_chunked(q, k, v, gate, chunk_size=64)
    o_r, s_r = gla_recurrent(q, k, v, gate)
    assert torch.isfinite(o_c).all() and torch.isfinite(s_c).all()
    assert (o_c - o_r).abs().max().item() <= 1e-5 * o_r.abs().max().item()
    assert (s_c - s_r).abs().max().item() <= 1e-5 * s_r.abs().max().item()


def test_half_precision_inputs_accumulate_in_fp32():
    torch.manual_seed(0)
    q, k, v = (torch.rand(1, 1, 1, 300, 16) for _ in range(3))
    k, v = k[:, :, 0], v[:, :, 0]
    ref, _ = gla_chunked(q, k, v, None)
    half, state = gla_chunked(q.half(), k.half(), v.half(), None)
    assert state.dtype == torch.float32
    assert torch.allclose(half.float(), ref, rtol=1e-2, atol=1e-1)


def test_window_attention_sees_exactly_the_last_w_valid_keys():
    torch.manual_seed(0)
    q, k, v = torch.randn(1, 1, 1, 20, 4), torch.randn(1, 1, 20, 4), torch.randn(1, 1, 20, 4)
    valid = torch.ones(1, 20, dtype=torch.bool)
    valid[0, 15] = False
    num, den, _ = window_attention_chunked(q, k, v, window=5, scale=0.5, key_valid=valid, chunk_size=7)
    out = num / den[..., None]
    t = 17
    keys = [j for j in range(t - 4, t + 1) if j != 15]
    expected = (q[0, 0, 0, t] @ k[0, 0, keys].T * 0.5).softmax(-1) @ v[0, 0, keys]
    assert torch.allclose(out[0, 0, 0, t], expected, atol=1e-6)


def test_spec_rejects_impossible_settings():
    with pytest.raises(ValueError, match="window"):
        AttentionSpec(window=0)
    with pytest.raises(ValueError, match="feature_map"):
        AttentionSpec(feature_map="relu")
    with pytest.raises(ValueError, match="shared"):
        AttentionSpec(gate="key", mix="shared")
