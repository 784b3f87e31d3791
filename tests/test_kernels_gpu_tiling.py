"""The kernels under the GPU's launch configuration, run in the interpreter on CPU tensors.

The launchers pick tiles and program splits per device (``_on_gpu``). On a GPU: one 32-row tile per 32-token
chunk with 16-row key-gate sub-blocks, the chunk-state kernel's value columns split over programs (BV 64, or
32 with hedgehog maps), the scan's F rows in blocks of 32, the fp16 hedgehog forward in 64-column value
blocks, and the decode step in 32-column value blocks (each program shifting the same window buffers). In the
interpreter: whole value blocks and 16-row tiles, so that short test sequences cross several tiles. The other
kernel tests run the interpreter's choice; these run the same checks with the GPU's, so that a wrong offset of
a value block or a clash between the programs of one (batch, kv head) shows on CPU and not only on the device.
Shapes avoid the GPU-only fallbacks (hedgehog maps at head dim 256, fp32 hedgehog training at head dim 128).
"""

from __future__ import annotations

import pytest
import torch

import linearize.kernels as kernels
import test_kernels
import test_kernels_decode
import test_kernels_lolcats
from linearize.attention_variants import AttentionSpec
from test_kernels import LIZARD, _rel


@pytest.fixture(autouse=True)
def gpu_launch_configuration(monkeypatch):
    """Every launcher takes its GPU configuration; the kernels still run in the interpreter."""
    monkeypatch.setattr(kernels, "_on_gpu", lambda x: True)
    f = kernels._flags(AttentionSpec())
    assert kernels._blocks(f, kernels._on_gpu(torch.empty(0))) == (32, 32, 16)


@pytest.mark.parametrize("branches,gate,T,window,D,H,HKV,pad", [
    ("hybrid", "key", 64, 64, 128, 3, 1, True),  # Liger-GLA: chunk states in 2 x 64 value columns, scan 4 x 32
    ("window", "key", 100, 128, 64, 3, 1, True),  # SWA only, 32-row window tiles
])
def test_forward_backward_fp32(branches, gate, T, window, D, H, HKV, pad):
    test_kernels.test_forward_backward_fp32(branches, gate, T, window, D, H, HKV, pad)


def test_lizard_fp32():
    """Hedgehog maps (F = 2D): chunk states in 32-column value blocks, the scan in 4 blocks of F rows."""
    test_kernels.test_learned_variants_fp32("lizard", LIZARD, 64, 64, 3, 1, True)


def test_lizard_fp16_forward_in_value_blocks():
    """fp16 hedgehog maps at head dim 128: the forward in two 64-column value blocks (bf16 takes all 128);
    output and the grads of q, k, v and every learned parameter against the fp32 reference."""
    assert kernels._launch(kernels._flags(LIZARD), 128, True, torch.float16)["fwd"]["BV"] == 64
    pairs = test_kernels.low_precision_pairs("lizard", torch.float16, 2, 1, 40, 128)
    out, ref = pairs.pop("out")
    assert out.dtype == torch.float16 and _rel(out, ref) <= 5e-3
    for n, (g, rg) in pairs.items():
        assert torch.isfinite(g).all() and _rel(g, rg) <= 1e-2, (n, _rel(g, rg))


def test_lolcats_fp32():
    """LoLCATs' own configuration: chunk states in 32-column value blocks, the scan in 4 blocks of F rows."""
    test_kernels_lolcats.test_lolcats_fp32(100, 64, 64, 3, 1, True, False)


@pytest.mark.parametrize("name,spec,D,H,HKV,prefills,steps", [
    ("liger", AttentionSpec(window=16), 64, 6, 2, (37,), 3),
    ("lizard_w16", test_kernels_decode.LIZARD_W16, 64, 3, 1, (37,), 3),
    ("lolcats_w32", test_kernels_decode.LOLCATS_W32, 64, 6, 2, (40,), 3),
], ids=lambda x: x if isinstance(x, str) else None)
def test_prefill_then_decode_fp32(name, spec, D, H, HKV, prefills, steps):
    """Decode steps in two 32-column value blocks per (batch, kv head), each program shifting the window."""
    assert kernels._decode_launch(spec.window, D, D, H // HKV, True)["BV"] == 32 < D
    test_kernels_decode.test_prefill_then_decode_fp32(name, spec, D, H, HKV, prefills, steps)
