"""Compile for a GPU (sm_90 unless ``--arch``), without one, every kernel launch the kernel paths make (run by
test_kernels_compile.py in a subprocess, as TRITON_INTERPRET must be unset before triton is imported).

Each variant (the shipped recipes' attention: GLA, Liger-GLA, Lizard, LoLCATs, SWA; and hedgehog GLA with a
learned gate) is driven through training (forward + backward, padding mask), a forward, a prefill into a fresh
state and a decode step, on CPU tensors at head dim 128 in each activation dtype; the launches are recorded with
the GPU's launch configuration and real argument dtypes (``linearize.kernels.offline_compile``), and each
distinct one is compiled and must fit the GPU's shared memory per block. Calls ``kernel_fallback_reason`` sends
to the reference are listed instead (on other GPUs than sm_90 that includes the kinds of call whose launches do
not fit, ``linearize/kernels/shared_memory.py``). Prints one JSON line per compiled launch or fallback, then a
summary line; exits 1 if any failed.

    python tests/compile_launches.py [--arch 90|80|89|...] [--variants lizard,...] [--dtypes bf16,fp16,fp32]
        [--D 128] [--jobs N]

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
import linearize.kernels as kernels  # noqa: E402
from linearize.kernels import hybrid_attention_kernel, kernel_fallback_reason  # noqa: E402
from linearize.kernels.offline_compile import (  # noqa: E402
    SHARED_PER_BLOCK, compile_launch, record_launches, use_target
)
from linearize.kernels.shared_memory import MODES, drive  # noqa: E402
from linearize.recipes import load_recipe, shipped_recipes  # noqa: E402

HIDDEN = 32
# The shipped recipes' attention (as scripts/kernel_registers.py compiles them), and the one kernel-covered block
# no recipe ships: hedgehog GLA under a learned gate with a normaliser (Lizard's linear branch alone).
VARIANTS = {name: load_recipe(name).attention.to_spec() for name in sorted(shipped_recipes())}
VARIANTS["gla-hedgehog"] = AttentionSpec(branches="linear", feature_map="hedgehog", gate="learned", normalize=True)
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def drive_all(spec: AttentionSpec, dtype: torch.dtype, D: int) -> list[str]:
    """Training, forward, prefill and one decode step of ``spec`` (``shared_memory.drive``); returns the calls
    that fell back to the reference, with why."""
    core = HybridAttentionCore(spec, HIDDEN, 4, 2, D).to(dtype)
    fallbacks = []
    for mode in MODES:
        def checked(core, q, k, v, cos, sin, hidden, scale, key_valid=None, state=None, mode=mode):
            if (why := kernel_fallback_reason(core, q, k, v, None, state)) is not None:
                fallbacks.append(f"{mode}: {why}")
            return hybrid_attention_kernel(core, q, k, v, cos, sin, hidden, scale, key_valid, None, state)

        drive(core, mode, dtype, "cpu", checked)
    return fallbacks


JOBS: list = []  # (variant, dtype, launch) to compile; forked workers read it by index


def compile_row(i: int) -> dict:
    """Compile ``JOBS[i]``; its report row (ok: fits the target's shared memory per block)."""
    vname, dname, launch = JOBS[i]
    t0 = time.time()
    row = {"kernel": launch.name, "variant": vname, "dtype": dname}
    try:
        shared = compile_launch(launch).metadata.shared
        row.update(ok=shared <= kernels.OFFLINE_TARGET[1], shared_bytes=shared)
    except Exception as e:  # noqa: BLE001
        row.update(ok=False, error=f"{type(e).__name__}: {str(e).strip()[-400:]}")
    row["s"] = round(time.time() - t0, 1)
    return row


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dtypes", default="bf16,fp16,fp32")
    ap.add_argument("--D", type=int, default=128)
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--arch", type=int, default=90, choices=sorted(SHARED_PER_BLOCK))
    ap.add_argument("--variants", default=",".join(VARIANTS))
    args = ap.parse_args()
    use_target(args.arch)
    distinct, failed = {}, 0
    for dname in args.dtypes.split(","):
        for vname in args.variants.split(","):
            with record_launches() as launches:
                fallbacks = drive_all(VARIANTS[vname], DTYPES[dname], args.D)
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
