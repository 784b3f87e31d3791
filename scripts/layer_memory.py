"""Peak training memory of one attention layer (fwd + bwd), counted on CPU: no GPU needed.

What it counts is what ``torch.cuda.max_memory_allocated`` reports on a GPU: the bytes of live tensor
storages (every storage an aten op creates, until it is freed), here through a ``TorchDispatchMode``. The
fused kernels run under ``TRITON_INTERPRET=1`` with the GPU's chunk lengths, so they allocate what they
allocate on a GPU (states, statistics, outputs, gradients); the interpreter keeps kernel arguments alive in
reference cycles, so a garbage collection follows each interpreted launch. Memory of these layers is affine
in the number of tokens, so each layer runs at two small lengths (B = 1) and the peak is extrapolated to
``--tokens``.

The layers are those of ``scripts/gpu_check_kernels.py`` (H 32 / 8, D 128, bf16 inputs from raw q, k, v,
fp32 parameters), timed there with ``do_bench`` and measured with ``max_memory_allocated``. Calibration
against that script's H100 run (session 3, commit 3acdeb2 with its GPU chunk lengths): Liger-GLA 0.95 / GPU 1.02
GiB, Lizard 1.68 / 1.76, LoLCATs 1.66 / 1.73 (``git worktree add /tmp/s3 3acdeb2``, this file copied into
/tmp/s3/scripts, run there), i.e. the GPU adds ~0.07 GiB (the CUDA context's own tensors:
the other layers' parameters, the hidden states of the learned gate, library workspaces). The standard
layer's row is torch's CPU flash kernel: CUDA's flash backward also holds an fp32 dq accumulator and, with
GQA, per-query-head dk / dv (1.35 GiB measured there against 0.95 here), so compare the kernels' rows with
the GPU-measured standard layer (docs/kernels.md).

    .venv/bin/python scripts/layer_memory.py [--layers sdpa,liger,lizard,lolcats] [--tokens 16384]
"""

from __future__ import annotations

import argparse
import gc
import math
import os
import sys
import time
import weakref

os.environ["TRITON_INTERPRET"] = "1"
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
import triton.runtime.interpreter as triton_interpreter  # noqa: E402
from torch.utils._python_dispatch import TorchDispatchMode  # noqa: E402
from torch.utils._pytree import tree_flatten  # noqa: E402

import linearize.kernels as K  # noqa: E402
from linearize.attention_variants import AttentionSpec, HybridAttentionCore  # noqa: E402

H, HKV, D, HIDDEN = 32, 8, 128, 64
SPECS = {
    "liger": AttentionSpec(window=64),
    "lizard": AttentionSpec(window=128, feature_map="hedgehog", gate="learned", normalize=True, num_sinks=4,
                            mix="learned"),
    "lolcats": AttentionSpec(window=64, feature_map="hedgehog", gate="none", mix="shared"),
}
LENGTHS = (64, 128)  # two multiples of every chunk length: the allocations are affine in T between them


class LiveStorages(TorchDispatchMode):
    """Bytes of live tensor storages created under this mode (current and peak)."""

    def __init__(self):
        super().__init__()
        self.live = self.peak = 0
        self.sizes = {}

    def _track(self, t: torch.Tensor):
        storage = t.untyped_storage()
        key = storage._cdata
        if key in self.sizes:
            return
        self.sizes[key] = storage.nbytes()
        self.live += self.sizes[key]
        self.peak = max(self.peak, self.live)
        weakref.finalize(storage, self._freed, key)

    def _freed(self, key):
        self.live -= self.sizes.pop(key)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor):
                self._track(t)
        return out


def _collect_after_launches():
    """The interpreter holds each launch's arguments in reference cycles; a GPU launch holds nothing."""
    launch = triton_interpreter.GridExecutor.__call__

    def call(self, *args, **kwargs):
        out = launch(self, *args, **kwargs)
        gc.collect()
        return out

    triton_interpreter.GridExecutor.__call__ = call


def _gpu_chunking():
    """The GPU's chunk lengths under the interpreter (the state tensors' sizes follow them). Before session 4
    the launchers took them from ``_block_sizes(f, D, device_is_cuda)``: patched too, so that this script, copied
    into a checkout of an older commit, counts that commit (the calibration in the module docstring)."""
    for name in ("_blocks", "_block_sizes"):
        choose = getattr(K, name, None)
        if choose is not None:
            setattr(K, name, lambda *args, choose=choose: choose(*args[:-1], True))


def rope_tables(T):
    pos = torch.arange(T).float()
    inv = 1.0 / (10000 ** (torch.arange(0, D, 2).float() / D))
    ang = torch.outer(pos, inv)
    ang = torch.cat([ang, ang], -1)
    return ang.cos()[None].bfloat16(), ang.sin()[None].bfloat16()


def sdpa_layer(q, k, v, cos, sin):
    def rope(x):
        x1, x2 = x.chunk(2, -1)
        return x * cos[:, :, None] + torch.cat([-x2, x1], -1) * sin[:, :, None]

    out = F.scaled_dot_product_attention(rope(q).transpose(1, 2), rope(k).transpose(1, 2), v.transpose(1, 2),
                                         is_causal=True, enable_gqa=True)
    return out.transpose(1, 2)


def fused_layer(name):
    core = HybridAttentionCore(SPECS[name], HIDDEN, H, HKV, D)

    def layer(q, k, v, cos, sin):
        qh, kh, vh = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        reason = K.kernel_fallback_reason(core, qh, kh, vh)
        if reason is not None:
            raise SystemExit(f"{name}: the kernels do not cover this layer ({reason})")
        hidden = torch.randn(q.shape[0], q.shape[1], HIDDEN)
        out, _ = K.hybrid_attention_kernel(core, qh, kh, vh, cos, sin, hidden, 1 / math.sqrt(D), None, None, None)
        return out.transpose(1, 2)

    return layer


def measure(layer, T):
    """(inputs, peak) bytes of one fwd + bwd at B = 1, T tokens (inputs: q, k, v, the output gradient, RoPE)."""
    mode = LiveStorages()
    with mode:
        q = torch.randn(1, T, H, D, dtype=torch.bfloat16, requires_grad=True)
        k = torch.randn(1, T, HKV, D, dtype=torch.bfloat16, requires_grad=True)
        v = torch.randn(1, T, HKV, D, dtype=torch.bfloat16, requires_grad=True)
        do = torch.randn(1, T, H, D, dtype=torch.bfloat16)
        cos, sin = rope_tables(T)
        inputs = mode.peak = mode.live
        layer(q, k, v, cos, sin).backward(do)
    return inputs, mode.peak


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", default="sdpa,liger,lizard,lolcats",
                    help="comma-separated subset of sdpa, " + ", ".join(SPECS))
    ap.add_argument("--tokens", type=int, default=16384, help="B * T the peak is extrapolated to")
    args = ap.parse_args()
    names = args.layers.split(",")
    unknown = sorted(set(names) - {"sdpa", *SPECS})
    if unknown:
        ap.error(f"--layers: unknown {unknown}; choose from sdpa, {', '.join(SPECS)}")
    _collect_after_launches()
    _gpu_chunking()
    print(f"peak training memory of one layer, H {H}/{HKV}, D {D}, bf16, extrapolated to {args.tokens} tokens "
          f"(counted on CPU, torch {torch.__version__})\n")
    print("| layer | peak GiB | above the inputs GiB | MiB per 1k tokens | counted in s |")
    print("|---|---|---|---|---|")
    for name in names:
        layer = sdpa_layer if name == "sdpa" else fused_layer(name)
        t0 = time.time()
        (i1, p1), (i2, p2) = (measure(layer, T) for T in LENGTHS)
        slope = (p2 - p1) / (LENGTHS[1] - LENGTHS[0])
        peak = p1 + slope * (args.tokens - LENGTHS[0])
        inputs = i1 + (i2 - i1) / (LENGTHS[1] - LENGTHS[0]) * (args.tokens - LENGTHS[0])
        label = "standard RoPE + SDPA (torch's CPU flash kernel)" if name == "sdpa" else f"{name}, ours fused"
        print(f"| {label} | {peak / 2**30:.3f} | {(peak - inputs) / 2**30:.3f} | {slope * 1024 / 2**20:.1f} | "
              f"{time.time() - t0:.0f} |", flush=True)


if __name__ == "__main__":
    main()
