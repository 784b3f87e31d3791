"""Registers, spills and shared memory of every Triton kernel in linearize/kernels, compiled without a GPU.

Each kernel is compiled by Triton for a CUDA target (default sm_90: H100 / H200) through a stub driver,
at the launch configs of the launchers in ``linearize/kernels/__init__.py`` and ``lolcats_chunked.py``
(BT = 64, their num_warps and block sizes; keep the two in sync), for the attention variants of the
shipped recipes, head dims 64 and 128, G = 4 query heads per kv head, padding mask on. ptxas (bundled
with Triton) reports registers, stack frame and spills; shared memory is Triton's allocation.
Activations are bf16, learned parameters fp32 (bf16 autocast training), states fp32.

    .venv/bin/python scripts/kernel_registers.py [--arch 90] [--dims 64 128] [--recipes lizard ...]
        [--jobs 1] [--json out.json]
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import io
import json
import os
import re
import shutil
import sys
import tempfile
import time

os.environ.pop("TRITON_INTERPRET", None)
os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
CACHE = tempfile.mkdtemp(prefix="kernel_registers_")
os.environ["TRITON_CACHE_DIR"] = CACHE
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402
import triton  # noqa: E402
from triton import knobs  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.runtime.driver import driver  # noqa: E402

from linearize.kernels import _block_sizes, _flags, _meta  # noqa: E402
from linearize.kernels import decode as _decode_mod  # noqa: E402
from linearize.kernels import hybrid_chunked as _hc  # noqa: E402
from linearize.kernels import lolcats_chunked as _lc  # noqa: E402
from linearize.recipes import load_recipe, shipped_recipes  # noqa: E402

KERNELS = {k.__name__: k for k in (_hc._chunk_state, _hc._chunk_scan, _hc._hybrid_fwd, _hc._hybrid_bwd_q,
                                   _hc._hybrid_bwd_kv, _lc._lolcats_fwd, _lc._lolcats_bwd_q, _lc._lolcats_bwd_kv,
                                   _decode_mod._hybrid_decode)}
G, T, HKV = 4, 2048, 8
ACT = {"q", "k", "v", "o", "do", "dq", "dk", "dv", "cos", "sin", "kbuf", "vbuf", "kbuf_new", "vbuf_new"}
MASKS = {"valid", "step_valid", "wvalid_new"}
FLOATS = {"scale", "gate_scale", "mix_lin", "mix_win", "eps"}
INTS = {"T": T, "HKV": HKV, "NT": T // 64}
SMEM_LIMIT = {80: 166912, 86: 101376, 89: 101376, 90: 232448, 100: 232448, 120: 101376}  # opt-in max per block


class _StubDriver:
    """Just enough of a Triton driver to compile (warmup) for a fixed target without a device."""

    def __init__(self, arch):
        self.target = GPUTarget("cuda", arch, 32)

    def get_current_target(self):
        return self.target

    def get_current_device(self):
        return 0

    def get_current_stream(self, device=None):
        return 0


def _ptr_dtype(name):
    stem = name[:-4]
    if stem in ACT:
        return torch.bfloat16
    if stem in MASKS:
        return torch.int8
    if stem == "arg":
        return torch.int32
    return torch.float32


def _args(kernel, ints):
    """Positional runtime arguments: pointer dtypes by name; strides are multiples of 16 as in the
    real layouts (Triton specialises ints on divisibility by 16)."""
    out = []
    for p in kernel.params:
        if p.is_constexpr:
            continue
        if p.name.endswith("_ptr"):
            out.append(_ptr_dtype(p.name))
        elif p.name in FLOATS:
            out.append(0.5)
        elif p.name.startswith("stride_"):
            out.append(4096)
        else:
            out.append(ints.get(p.name, INTS.get(p.name)))
    return out


def launches(spec, D):
    """(kernel, pass, constexprs, ints, num_warps) for every launch of ``spec`` at head dim D."""
    out = []
    if spec.shared:
        F = 2 * D
        cs = dict(G=G, D=D, F=F, DV=D, BT=64, GATE=0, FMAP=1, NORM=True, HAS_VALID=True)
        scan = dict(D=D, F=F, DV=D, BK=min(F, 32), GATE=0, NORM=True, HAS_S0=False, STORE_ST=False)
        lol = dict(G=G, D=D, F=F, DV=D, BT=64, W=spec.window, HAS_VALID=True)
        out += [("_chunk_state", "fwd", {**cs, "STATES": True, "WITH_DO": False}, {}, 4),
                ("_chunk_scan", "fwd", scan, {"FIRST": 0}, 4),
                ("_lolcats_fwd", "fwd", {**lol, "BV": min(D, 64)}, {}, 4),
                ("_lolcats_bwd_q", "bwd", lol, {}, 8),
                ("_chunk_state", "bwd", {**cs, "STATES": False, "WITH_DO": True}, {}, 4),
                ("_chunk_scan", "bwd", scan, {"FIRST": 1}, 4),
                ("_lolcats_bwd_kv", "bwd", lol, {}, 8)]
        return out
    f = _flags(spec)
    BT, BC = _block_sizes(f.gate, True)
    F = 2 * D if f.fmap else D
    W = int(spec.window) if f.has_win else 1
    meta = _meta(f, G, D, D, BT, BC, W, True)
    if f.has_lin:
        cs = dict(G=G, D=D, F=F, DV=D, BT=BT, GATE=f.gate, FMAP=f.fmap, NORM=f.norm, HAS_VALID=True)
        scan = dict(D=D, F=F, DV=D, BK=min(F, 32), GATE=f.gate, NORM=f.norm)
        out += [("_chunk_state", "fwd", {**cs, "STATES": True, "WITH_DO": False}, {}, 4),
                ("_chunk_scan", "fwd", {**scan, "HAS_S0": False, "STORE_ST": False}, {"FIRST": 0}, 4),
                ("_chunk_scan", "prefill", {**scan, "HAS_S0": True, "STORE_ST": True}, {"FIRST": 0}, 4)]
        if f.norm:
            out += [("_chunk_state", "bwd", {**cs, "STATES": False, "WITH_DO": True}, {}, 4),
                    ("_chunk_scan", "bwd", {**scan, "HAS_S0": False, "STORE_ST": False}, {"FIRST": 1}, 4)]
        else:
            out += [("_chunk_state", "bwd", {**cs, "STATES": True, "WITH_DO": True}, {}, 4)]
    out += [("_hybrid_fwd", "fwd", {**meta, "BV": min(D, 64), "NS": f.ns}, {}, 4),
            ("_hybrid_bwd_q", "bwd", meta, {}, 8),
            ("_hybrid_bwd_kv", "bwd", meta, {}, 8)]
    dec = dict(G=G, D=D, DV=D, BV=min(D, 32), BD=min(D, 32), W=W, HAS_LIN=f.has_lin, HAS_WIN=f.has_win,
               GATE=f.gate, FMAP=f.fmap, NORM=f.norm, NS=f.ns, MIXP=f.mixp)
    out.append(("_hybrid_decode", "decode", dec, {}, 8 if W * D >= 16384 else 4))
    return out


PTXAS_FRAME = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")
PTXAS_REGS = re.compile(r"Used (\d+) registers")
CPP_ASSERT = re.compile(r"(\w+\.cpp:\d+): .*?(Assertion .*)$", re.M)
CPP_ERROR = re.compile(r"(\w+\.py:\d+):\d+: (error: .*)$", re.M)


def compile_one(job):
    """Compile one launch config; registers, spills, stack and shared memory from ptxas and Triton."""
    arch, name, constexprs, ints, num_warps = job
    driver.set_active(_StubDriver(arch))
    knobs.compilation.always_compile = True
    knobs.nvidia.dump_ptxas_log = True
    kernel = KERNELS[name]
    log = io.StringIO()
    t0 = time.time()
    compiled = failure = None
    with tempfile.TemporaryFile(mode="w+") as err, contextlib.redirect_stdout(log):
        saved = os.dup(2)  # the compiler's C++ diagnostics go to fd 2: keep them for the error message
        os.dup2(err.fileno(), 2)
        try:
            compiled = kernel.warmup(*_args(kernel, ints), grid=(1,), num_warps=num_warps, **constexprs)
        except Exception as e:  # noqa: BLE001
            failure = e
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
        err.seek(0)
        diag = err.read()
    if failure is not None:
        cause = CPP_ASSERT.search(diag) or CPP_ERROR.search(diag)
        detail = f" ({cause.group(1)}: {cause.group(2)[:160]})" if cause else ""
        return {"error": f"{type(failure).__name__}: {str(failure).strip().splitlines()[0][:120]}{detail}"}
    text = log.getvalue()
    regs, frame = PTXAS_REGS.search(text), PTXAS_FRAME.search(text)
    if regs is None or frame is None:
        return {"error": "no ptxas report in the compile log"}
    return {"regs": int(regs.group(1)), "stack": int(frame.group(1)), "spill_st": int(frame.group(2)),
            "spill_ld": int(frame.group(3)), "smem": int(compiled.metadata.shared), "compile_s": time.time() - t0}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", type=int, default=90, help="CUDA compute capability (90 = sm_90a, H100/H200)")
    ap.add_argument("--dims", type=int, nargs="+", default=[64, 128])
    ap.add_argument("--recipes", nargs="+", default=sorted(shipped_recipes()))
    ap.add_argument("--jobs", type=int, default=1)
    ap.add_argument("--json", default=None, help="also write the rows here")
    args = ap.parse_args()

    jobs = {}
    for D in args.dims:
        for recipe in args.recipes:
            spec = load_recipe(recipe).attention.to_spec()
            for name, pas, constexprs, ints, nw in launches(spec, D):
                key = (name, D, nw, tuple(sorted(constexprs.items())), tuple(sorted(ints.items())))
                row = jobs.setdefault(key, {"kernel": name, "D": D, "num_warps": nw, "variants": [], "passes": [],
                                            "job": (args.arch, name, constexprs, ints, nw)})
                if recipe not in row["variants"]:
                    row["variants"].append(recipe)
                if pas not in row["passes"]:
                    row["passes"].append(pas)
    rows = list(jobs.values())
    print(f"# {len(rows)} kernel configs, sm_{args.arch}, triton {triton.__version__}, torch {torch.__version__}",
          file=sys.stderr, flush=True)
    with concurrent.futures.ProcessPoolExecutor(max_workers=args.jobs) as pool:
        for row, res in zip(rows, pool.map(compile_one, [r.pop("job") for r in rows]), strict=True):
            row.update(res)
            print(f"  {row['kernel']} D{row['D']} {','.join(row['variants'])}: "
                  f"{res.get('error') or str(res['regs']) + ' regs'}", file=sys.stderr, flush=True)

    limit = SMEM_LIMIT.get(args.arch)
    print("| kernel | variant (recipes) | pass | D | num_warps | registers | spill bytes (st / ld) | "
          "stack B | shared B |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        if "error" in r:
            print(f"| {r['kernel']} | {', '.join(r['variants'])} | {'/'.join(r['passes'])} | {r['D']} | "
                  f"{r['num_warps']} | compile error (below) | | | |")
            continue
        spill = f"{r['spill_st']} / {r['spill_ld']}" if r["spill_st"] or r["spill_ld"] else "0"
        smem = f"**{r['smem']}** (over)" if limit and r["smem"] > limit else str(r["smem"])
        print(f"| {r['kernel']} | {', '.join(r['variants'])} | {'/'.join(r['passes'])} | {r['D']} | "
              f"{r['num_warps']} | {r['regs']} | {spill} | {r['stack']} | {smem} |")
    failed = [r for r in rows if "error" in r]
    if failed:
        print(f"\ncompile failures: {len(failed)} of {len(rows)} configs"
              + "".join(f"\n  {r['kernel']} D{r['D']} {','.join(r['variants'])}: {r['error']}" for r in failed))
    spilling = [r for r in rows if r.get("spill_st") or r.get("spill_ld")]
    print(f"\nspilling: {len(spilling)} of {len(rows)} configs"
          + "".join(f"\n  {r['kernel']} D{r['D']} {','.join(r['variants'])} ({r['num_warps']} warps): "
                    f"{r['spill_st']} B stores / {r['spill_ld']} B loads" for r in spilling))
    if limit:
        over = [r for r in rows if r.get("smem", 0) > limit]
        print(f"\nshared memory over the sm_{args.arch} limit of {limit} B per block (launch fails with "
              f"OutOfResources): {len(over)} of {len(rows)} configs"
              + "".join(f"\n  {r['kernel']} D{r['D']} {','.join(r['variants'])}: {r['smem']} B" for r in over))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"arch": args.arch, "triton": triton.__version__, "rows": rows}, fh, indent=1)
    shutil.rmtree(CACHE, ignore_errors=True)
    return 1 if any("error" in r for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
