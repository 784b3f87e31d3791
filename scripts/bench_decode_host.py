"""Host-side cost of one kernel decode step: Python, allocations and the torch ops around the launch.

    python scripts/bench_decode_host.py [--batch 16] [--context 4096] [--calls 2000]

A decode step on the GPU is launch-bound at small batch (0.08 - 0.17 ms per layer measured on an H100), so
what the launcher does on the host around ``_hybrid_decode`` / ``_lolcats_decode`` matters. This runs
``hybrid_attention_kernel`` for a single token with the Triton launch stubbed out, on CPU tensors of the
GPU benchmark's shapes (H 32/8, D 128, bf16, a full window), and prints per variant, with and without a
(batch, context) padding mask: microseconds per call, and the torch ops it dispatches (on a GPU each one
other than an allocation or a view is a kernel launch of its own). Needs no GPU; the kernels' own time is
not included.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from collections import Counter
from datetime import date

os.environ["TRITON_INTERPRET"] = "1"  # the launcher's CPU path; the launch itself is stubbed below
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402
from torch.utils._python_dispatch import TorchDispatchMode  # noqa: E402

import linearize.kernels as kernels  # noqa: E402
from linearize.attention_variants import AttentionSpec, HybridAttentionCore  # noqa: E402

VARIANTS = {
    "liger-gla": AttentionSpec(),
    "lizard": AttentionSpec(feature_map="hedgehog", gate="learned", normalize=True, window=128, num_sinks=4,
                            mix="learned"),
    "lolcats": AttentionSpec(feature_map="hedgehog", gate="none", window=64, mix="shared"),
}
NOT_LAUNCHES = {"empty", "empty_like", "view", "t", "transpose", "slice", "select", "unsqueeze", "expand", "alias",
                "detach"}
H, HKV, D, HIDDEN = 32, 8, 128, 576


class _NoLaunch:
    def __getitem__(self, grid):
        return lambda *args, **kwargs: None


class _Ops(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.ops = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops[func.overloadpacket.__name__] += 1
        return func(*args, **(kwargs or {}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--context", type=int, default=4096, help="columns of the padding mask")
    ap.add_argument("--calls", type=int, default=2000)
    args = ap.parse_args()
    kernels._hybrid_decode = kernels._lolcats_decode = _NoLaunch()
    torch.manual_seed(0)
    B, bf16 = args.batch, torch.bfloat16
    q = torch.randn(B, H, 1, D, dtype=bf16)
    k, v = torch.randn(B, HKV, 1, D, dtype=bf16), torch.randn(B, HKV, 1, D, dtype=bf16)
    cos, sin = torch.ones(1, 1, D, dtype=bf16), torch.zeros(1, 1, D, dtype=bf16)
    hidden = torch.randn(B, 1, HIDDEN, dtype=bf16)
    cpu = platform.processor() or platform.machine()
    print(f"decode step on the host, launch stubbed: B {B}, H {H}/{HKV}, D {D}, bf16; {cpu}, {os.cpu_count()} cores, "
          f"torch {torch.__version__}, {date.today()}\n")
    print("| variant | padding mask | us per call | torch ops per call | of which launches on a GPU |")
    print("|---|---|---|---|---|")
    for name, spec in VARIANTS.items():
        core = HybridAttentionCore(spec, HIDDEN, H, HKV, D).to(bf16)
        state = core.empty_state(B, "cpu", bf16)
        for mask in (None, torch.ones(B, args.context, dtype=torch.bool)):
            with torch.no_grad():
                assert kernels.kernel_fallback_reason(core, q, k, v, None, state) is None
                with _Ops() as counted:
                    kernels.hybrid_attention_kernel(core, q, k, v, cos, sin, hidden, D**-0.5, mask, None, state)
                for _ in range(50):
                    kernels.hybrid_attention_kernel(core, q, k, v, cos, sin, hidden, D**-0.5, mask, None, state)
                t0 = time.perf_counter()
                for _ in range(args.calls):
                    kernels.hybrid_attention_kernel(core, q, k, v, cos, sin, hidden, D**-0.5, mask, None, state)
                us = (time.perf_counter() - t0) / args.calls * 1e6
            launches = {op: n for op, n in counted.ops.items() if op not in NOT_LAUNCHES}
            print(f"| {name} | {'yes' if mask is not None else 'no'} | {us:.1f} | {sum(counted.ops.values())} | "
                  f"{sum(launches.values())} {dict(sorted(launches.items())) or ''} |")


if __name__ == "__main__":
    main()
