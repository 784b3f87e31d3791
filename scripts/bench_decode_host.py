"""Host-side cost of one kernel decode step: Python, allocations, the torch ops around the launch, and Triton's
launch path.

    python scripts/bench_decode_host.py [--batch 16] [--context 4096] [--calls 2000]

A decode step's device work is small (Liger-GLA at B 16: ~12 MB of state and window), so what the host does
per layer and step can decide its time (0.124 ms per layer measured on an H200, flat in context; fla's
recurrent kernel 0.18 ms). This runs ``hybrid_attention_kernel`` for a single token on CPU tensors of the GPU
benchmark's shapes (H 32/8, D 128, bf16, a full window) with the GPU's launch configuration, and prints per
variant, with and without a (batch, context) padding mask: microseconds per call with the kernel launch
stubbed out, the torch ops it dispatches (on a GPU each one other than an allocation or a view is a kernel
launch of its own), and microseconds per call through Triton's Python launch path (the kernel compiled for
sm_90 with a stub driver, only the binary launch a no-op: the C launcher and the CUDA driver come on top).
Needs no GPU; the kernels' own time is not included.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from collections import Counter
from datetime import date

os.environ.pop("TRITON_INTERPRET", None)  # compilable kernels: Triton's launch path is timed too
os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402
from torch.utils._python_dispatch import TorchDispatchMode  # noqa: E402

import linearize.kernels as kernels  # noqa: E402
from linearize.attention_variants import AttentionSpec, HybridAttentionCore  # noqa: E402
from linearize.kernels.offline_compile import gpu_paths_on_cpu, stub_binary_launch, use_target  # noqa: E402

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


def _us_per_call(step, calls: int) -> float:
    for _ in range(50):
        step()
    t0 = time.perf_counter()
    for _ in range(calls):
        step()
    return (time.perf_counter() - t0) / calls * 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--context", type=int, default=4096, help="columns of the padding mask")
    ap.add_argument("--calls", type=int, default=2000)
    args = ap.parse_args()
    use_target(90)
    real = kernels._hybrid_decode, kernels._lolcats_decode
    torch.manual_seed(0)
    B, bf16 = args.batch, torch.bfloat16
    q = torch.randn(B, H, 1, D, dtype=bf16)
    k, v = torch.randn(B, HKV, 1, D, dtype=bf16), torch.randn(B, HKV, 1, D, dtype=bf16)
    cos, sin = torch.ones(1, 1, D, dtype=bf16), torch.zeros(1, 1, D, dtype=bf16)
    hidden = torch.randn(B, 1, HIDDEN, dtype=bf16)
    cpu = platform.processor() or platform.machine()
    print(f"decode step on the host: B {B}, H {H}/{HKV}, D {D}, bf16; {cpu}, {os.cpu_count()} cores, "
          f"torch {torch.__version__}, {date.today()}\n")
    print("| variant | padding mask | us per call, launch stubbed | torch ops per call | of which launches on a GPU | "
          "us per call through Triton's launch path |")
    print("|---|---|---|---|---|---|")
    with gpu_paths_on_cpu(), stub_binary_launch(), torch.no_grad():
        for name, spec in VARIANTS.items():
            core = HybridAttentionCore(spec, HIDDEN, H, HKV, D).to(bf16)
            state = core.empty_state(B, "cpu", bf16)
            for mask in (None, torch.ones(B, args.context, dtype=torch.bool)):
                assert kernels.kernel_fallback_reason(core, q, k, v, None, state) is None

                def step():
                    kernels.hybrid_attention_kernel(core, q, k, v, cos, sin, hidden, D**-0.5, mask, None, state)  # noqa: B023

                kernels._hybrid_decode = kernels._lolcats_decode = _NoLaunch()
                with _Ops() as counted:
                    step()
                stubbed = _us_per_call(step, args.calls)
                kernels._hybrid_decode, kernels._lolcats_decode = real
                through_triton = _us_per_call(step, args.calls)  # the first call compiles
                launches = {op: n for op, n in counted.ops.items() if op not in NOT_LAUNCHES}
                print(f"| {name} | {'yes' if mask is not None else 'no'} | {stubbed:.1f} | {sum(counted.ops.values())} | "
                      f"{sum(launches.values())} {dict(sorted(launches.items())) or ''} | {through_triton:.1f} |")


if __name__ == "__main__":
    main()
