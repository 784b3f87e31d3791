"""Compile for sm_90, without a GPU, every kernel launch the kernel paths make (run by test_kernels_compile.py
in a subprocess, as TRITON_INTERPRET must be unset before triton is imported).

Each variant (the shipped recipes' attention: GLA, Liger-GLA, Lizard, LoLCATs, SWA; and hedgehog GLA with a
learned gate) is driven through training (forward + backward, padding mask), a prefill into a fresh state and
a decode step, on CPU tensors at head dim 128 in each activation dtype; the launches are recorded with the
GPU's launch configuration and real argument dtypes (``linearize.kernels.offline_compile``), and each distinct
one is compiled and must fit sm_90's shared memory per block. Prints one JSON line per compiled launch, then a
summary line; exits 1 if any failed.

    python tests/compile_launches.py [--dtypes bf16,fp16,fp32] [--D 128] [--jobs N]

The distinct launches compile in ``--jobs`` forked processes (default: one per core).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import multiprocessing
import os
import sys
import time

os.environ.pop("TRITON_INTERPRET", None)
os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")  # as on the GPU (fusion on), without the 3.9 warning
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

from linearize.attention_variants import AttentionSpec, HybridAttentionCore  # noqa: E402
from linearize.kernels import hybrid_attention_kernel, kernel_fallback_reason  # noqa: E402
from linearize.kernels.offline_compile import compile_launch, record_launches, use_target  # noqa: E402
from linearize.recipes import load_recipe, shipped_recipes  # noqa: E402

HIDDEN = 32
# The shipped recipes' attention (as scripts/kernel_registers.py compiles them), and the one kernel-covered block
# no recipe ships: hedgehog GLA under a learned gate with a normaliser (Lizard's linear branch alone).
VARIANTS = {name: load_recipe(name).attention.to_spec() for name in sorted(shipped_recipes())}
VARIANTS["gla-hedgehog"] = AttentionSpec(branches="linear", feature_map="hedgehog", gate="learned", normalize=True)
SM90_SHARED_BYTES = 232448  # the most shared memory one block may opt into on sm_90
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def drive(spec: AttentionSpec, dtype: torch.dtype, D: int) -> list[str]:
    """Training, prefill and one decode step of ``spec``; returns the paths that fell back to the reference."""
    B, H, HKV, T = 2, 4, 2, 80
    core = HybridAttentionCore(spec, HIDDEN, H, HKV, D).to(dtype)
    q = torch.randn(B, H, T, D, dtype=dtype, requires_grad=True)
    k = torch.randn(B, HKV, T, D, dtype=dtype, requires_grad=True)
    v = torch.randn(B, HKV, T, D, dtype=dtype, requires_grad=True)
    hidden = torch.randn(B, T, HIDDEN, dtype=dtype)
    cos, sin = torch.ones(1, T, D, dtype=dtype), torch.zeros(1, T, D, dtype=dtype)
    key_valid = torch.ones(B, T, dtype=torch.bool)
    key_valid[1, :7] = False
    fallbacks = []
    if (why := kernel_fallback_reason(core, q, k, v)) is None:
        out, _ = hybrid_attention_kernel(core, q, k, v, cos, sin, hidden, D**-0.5, key_valid, None, None)
        out.backward(torch.randn_like(out))
    else:
        fallbacks.append(f"training: {why}")
    P = T - 1
    with torch.no_grad():
        state = core.empty_state(B, q.device, dtype)
        sl, step = slice(0, P), slice(P, T)
        args = (q[:, :, sl], k[:, :, sl], v[:, :, sl])
        if (why := kernel_fallback_reason(core, *args, None, state)) is None:
            _, state = hybrid_attention_kernel(core, *args, cos[:, sl], sin[:, sl], hidden[:, sl], D**-0.5,
                                               key_valid[:, sl], None, state)
        else:
            fallbacks.append(f"prefill: {why}")
        args = (q[:, :, step], k[:, :, step], v[:, :, step])
        if (why := kernel_fallback_reason(core, *args, None, state)) is None:
            hybrid_attention_kernel(core, *args, cos[:, step], sin[:, step], hidden[:, step], D**-0.5, key_valid,
                                    None, state)
        else:
            fallbacks.append(f"decode: {why}")
    return fallbacks


JOBS: list = []  # (variant, dtype, launch) to compile; forked workers read it by index


def compile_row(i: int) -> dict:
    """Compile ``JOBS[i]``; its report row (ok: fits sm_90's shared memory per block)."""
    vname, dname, launch = JOBS[i]
    t0 = time.time()
    row = {"kernel": launch.name, "variant": vname, "dtype": dname}
    try:
        shared = compile_launch(launch).metadata.shared
        row.update(ok=shared <= SM90_SHARED_BYTES, shared_bytes=shared)
    except Exception as e:  # noqa: BLE001
        row.update(ok=False, error=f"{type(e).__name__}: {str(e).strip()[-400:]}")
    row["s"] = round(time.time() - t0, 1)
    return row


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dtypes", default="bf16,fp16,fp32")
    ap.add_argument("--D", type=int, default=128)
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    args = ap.parse_args()
    use_target(90)
    distinct, failed = {}, 0
    for dname in args.dtypes.split(","):
        for vname, spec in VARIANTS.items():
            with record_launches() as launches:
                fallbacks = drive(spec, DTYPES[dname], args.D)
            for why in fallbacks:
                print(json.dumps({"variant": vname, "dtype": dname, "reference": why}), flush=True)
            for launch in launches:
                distinct.setdefault(launch.key(), (vname, dname, launch))
    JOBS[:] = distinct.values()
    with concurrent.futures.ProcessPoolExecutor(args.jobs, mp_context=multiprocessing.get_context("fork")) as pool:
        for row in pool.map(compile_row, range(len(JOBS))):
            failed += not row["ok"]
            print(json.dumps(row), flush=True)
    print(json.dumps({"compiled": len(distinct) - failed, "failed": failed,
                      "kernels": sorted({launch.name for _, _, launch in distinct.values()})}), flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
