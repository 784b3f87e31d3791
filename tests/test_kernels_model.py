"""A converted model on the Triton kernels (CPU, interpreter) against the same model on the reference.

The kernel tests check ``hybrid_attention_kernel`` alone; these check the attention module around it, the
way training and ``generate`` call it: raw q / k rotated inside the kernel, the padding mask, attention
transfer (the teacher's output beside the kernel's), training gradients with ``use_cache=False``, and
greedy decoding through the cache (kernel prefill, then one decode launch per layer and step). The module
picks the kernels for CUDA tensors only (``LinearizedAttention._use_kernel``); here that choice is forced for
CPU tensors, and every call is checked to reach the kernels rather than their reference fallback.
"""

import pytest
import torch

from kernel_routing import route_attention_to_kernels
from linearize import AttentionSpec, linearize_model
from linearize.modeling_linearized import FORCE_REFERENCE_ENV
from linearize.training import linearized_attentions, set_attention_mode
from test_kernels import _rel
from tiny_models import tiny_model

SPECS = {
    "liger-gla": AttentionSpec(window=16),
    "lizard": AttentionSpec(feature_map="hedgehog", gate="learned", normalize=True, window=16, num_sinks=4,
                            mix="learned"),
    "lolcats": AttentionSpec(feature_map="hedgehog", gate="none", window=32, mix="shared"),
}


@pytest.fixture
def on_kernels(monkeypatch):
    """Route the converted model's CPU attention to the kernels unless ``LINEARIZE_FORCE_REFERENCE=1``; yield a
    list that records each kernel call (prefill / training vs decode step)."""
    monkeypatch.setenv(FORCE_REFERENCE_ENV, "0")
    return route_attention_to_kernels(monkeypatch.setattr)


def _reference(monkeypatch, on):
    monkeypatch.setenv(FORCE_REFERENCE_ENV, "1" if on else "0")


def _student(variant):
    model = linearize_model(tiny_model("llama", num_hidden_layers=1), SPECS[variant])
    with torch.no_grad():  # learned parts away from their initial values
        for name, p in model.named_parameters():
            if ".core." in name:
                p.add_(0.2 * torch.randn_like(p))
    return model


def _padded_batch(T=40, pad=11, right_pad=0):
    """Row 1 left-padded (generation, lm-eval's generate_until), row 0 right-padded (lm-eval's loglikelihood)."""
    ids = torch.randint(3, 128, (2, T), generator=torch.Generator().manual_seed(0))
    mask = torch.ones(2, T, dtype=torch.long)
    mask[1, :pad] = 0
    mask[0, T - right_pad:] = 0
    return ids, mask


def _loss_and_grads(model, ids, mask, stage_mode=None):
    model.zero_grad(set_to_none=True)
    if stage_mode == "transfer":
        set_attention_mode(model, "transfer")
        model(ids, attention_mask=mask, use_cache=False)
        losses = torch.stack([m.transfer_loss for m in linearized_attentions(model)])
        losses.sum().backward()
        set_attention_mode(model, "hybrid")
        out = losses
    else:
        labels = ids.masked_fill(mask == 0, -100)
        out = model(ids, attention_mask=mask, labels=labels, use_cache=False)
        out.loss.backward()
        out = out.logits
    return out.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("variant,stage_mode",
                         [("liger-gla", None), ("lizard", None), ("lolcats", None), ("lizard", "transfer")],
                         ids=["liger-gla-recovery", "lizard-recovery", "lolcats-recovery", "lizard-transfer"])
def test_training_step_on_kernels_matches_reference(on_kernels, monkeypatch, variant, stage_mode):
    """A padded training step (``use_cache=False``): logits (or, in attention transfer, each layer's MSE
    to the teacher's output) and the gradient of every parameter that gets one, kernels vs reference, fp32.
    Transfer mode on the kernels crashed until session 8 (the module handed the teacher a tuple for q)."""
    model = _student(variant)
    # most rows see keys past the window (LoLCATs' window_factor only acts there)
    ids, mask = _padded_batch(T=max(40, 2 * SPECS[variant].window + 8), right_pad=7)
    out, grads = _loss_and_grads(model, ids, mask, stage_mode)
    assert on_kernels == ["chunked"]
    _reference(monkeypatch, True)
    ref, ref_grads = _loss_and_grads(model, ids, mask, stage_mode)
    assert on_kernels == ["chunked"]
    assert _rel(out, ref) <= 1e-4
    learned = {n for n, _ in model.named_parameters() if ".core." in n}  # none in Liger-GLA
    assert set(grads) == set(ref_grads) and learned | {"model.layers.0.self_attn.q_proj.weight"} <= set(grads)
    for n, g in ref_grads.items():
        assert _rel(grads[n], g) <= 1e-4, n


@pytest.mark.parametrize("variant", list(SPECS))
def test_generate_on_kernels_matches_reference(on_kernels, monkeypatch, variant):
    """Greedy ``generate`` from a left-padded prompt longer than the window (LoLCATs: keys leave the window
    into the linear state in the prefill and during decoding): kernel prefill, then a decode launch per layer
    and step, gives the reference's tokens and logits."""
    model = _student(variant)
    ids, mask = _padded_batch(T=max(24, SPECS[variant].window + 5), pad=5)
    runs = {}
    for name, reference in (("kernel", False), ("reference", True)):
        _reference(monkeypatch, reference)
        with torch.no_grad():
            g = model.generate(ids, attention_mask=mask, max_new_tokens=6, do_sample=False, output_logits=True,
                               return_dict_in_generate=True, pad_token_id=0)
        runs[name] = (g.sequences, torch.stack(g.logits, 1))
    assert on_kernels == ["chunked"] + ["decode"] * 5
    assert torch.equal(runs["kernel"][0], runs["reference"][0])
    assert _rel(runs["kernel"][1], runs["reference"][1]) <= 1e-4


def test_bf16_autocast_training_step_on_kernels(on_kernels, monkeypatch):
    """Training on a GPU runs under bf16 autocast (``make_accelerator``): fp32 weights, bf16 projections into the
    kernels, and (Lizard) fp32 gate / feature-map weights read beside them. Logits and gradients, kernels and
    the reference each under autocast, against the fp32 reference: the kernels' error stays within
    max(2e-2, 2x the bf16 reference's own), the rule of scripts/gpu_check_model.py."""
    model = _student("lizard")
    ids, mask = _padded_batch()
    runs = {}
    for name, reference, autocast in (("kernel", False, True), ("ref16", True, True), ("ref32", True, False)):
        _reference(monkeypatch, reference)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            runs[name] = _loss_and_grads(model, ids, mask)
    assert on_kernels == ["chunked"]
    (out, grads), (out16, grads16), (ref, ref_grads) = runs["kernel"], runs["ref16"], runs["ref32"]
    assert _rel(out, ref) <= max(2e-2, 2 * _rel(out16, ref))
    worst = max(_rel(grads[n], g) for n, g in ref_grads.items())
    assert worst <= max(2e-2, 2 * max(_rel(grads16[n], g) for n, g in ref_grads.items()))
