"""Registers, spills and shared memory of every Triton kernel in linearize/kernels, compiled without a GPU.

Each kernel is compiled by Triton for a CUDA target (default sm_90: H100 / H200) through a stub driver,
at the launch configs the launchers use: block sizes, num_warps and num_stages come from
``_blocks`` / ``_launch`` / ``_decode_launch`` (``linearize/kernels/__init__.py``) and ``lolcats_config``
(``lolcats_chunked.py``), imported, not copied. Variants:
the attention of the shipped recipes, head dims 64 and 128, G = 4 query heads per kv head, padding mask
on. ptxas (bundled with Triton) reports registers, stack frame and spills; shared memory is Triton's
allocation (the launch fails with OutOfResources above the block limit).
Argument dtypes are what the kernels see in training: activations (q, k, v, cos, sin, outputs, their
gradients) and the hedgehog weights in ``--dtype`` (bf16 by default; the launchers cast the weights to
it), chunk states and their gradients in ``chunk_state_dtype`` (bf16 with bf16 activations; fp32 under the
learned gate and in the prefill scan, the one prefill launch listed apart), log-gates, alpha, sinks,
window factors, decoding states and per-row statistics fp32, masks int8 (training / prefill) or bool
(decode). The dot operand dtype follows the activations, so
``--dtype fp32`` shows what fp32 inputs need.

    .venv/bin/python scripts/kernel_registers.py [--arch 90] [--dims 64 128] [--recipes lizard ...]
        [--dtype bf16|fp16|fp32] [--jobs 1] [--json out.json] [--num-stages N]
        [--kernels _hybrid_decode _lolcats_decode ...]
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

from linearize.kernels import _blocks, _decode_launch, _flags, _launch, _meta  # noqa: E402
from linearize.kernels import decode as _decode_mod  # noqa: E402
from linearize.kernels import hybrid_chunked as _hc  # noqa: E402
from linearize.kernels import lolcats_chunked as _lc  # noqa: E402
from linearize.kernels.hybrid_chunked import chunk_state_dtype  # noqa: E402
from linearize.kernels.offline_compile import SHARED_PER_BLOCK, use_target  # noqa: E402
from linearize.kernels.lolcats_chunked import lolcats_config  # noqa: E402
from linearize.recipes import load_recipe, shipped_recipes  # noqa: E402

KERNELS = {k.__name__: k for k in (_hc._chunk_state, _hc._chunk_scan, _hc._hybrid_fwd, _hc._hybrid_bwd_q,
                                   _hc._hybrid_bwd_kv, _lc._lolcats_fwd, _lc._lolcats_bwd_q, _lc._lolcats_bwd_kv,
                                   _decode_mod._hybrid_decode, _decode_mod._lolcats_decode)}
G, T, HKV = 4, 2048, 8
# In the activation dtype: inputs, outputs, their gradients, and the hedgehog weights (the training / prefill
# launchers cast them, ``_dot_weights``; decode reads a bf16 model's own).
ACT = {"q", "k", "v", "o", "do", "dq", "dk", "dv", "cos", "sin", "kbuf", "vbuf", "kbuf_new", "vbuf_new", "wq", "wk",
       "hid", "gw", "gb"}
STATES = {"h", "dh"}  # chunk states and their gradients: ``chunk_state_dtype``
MASKS = {"valid"}  # int8, as the training / prefill launchers convert key_valid
BOOLS = {"kv", "wvalid_new", "wvalid_old"}  # the decode kernels read the model's bool masks in place
FLOATS = {"scale", "gate_scale", "mix_lin", "mix_win", "eps"}
INTS = {"T": T, "HKV": HKV, "NT": T // 64, "kv_last": T - 1, "HS": 4096}
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def _ptr_dtype(name, act, state):
    stem = name[:-4]
    if stem in ACT:
        return act
    if stem in STATES:
        return state
    if stem in MASKS:
        return torch.int8
    if stem in BOOLS:
        return torch.bool
    if stem == "arg":
        return torch.int32
    return torch.float32


def _args(kernel, ints, act, constexprs):
    """Positional runtime arguments: pointer dtypes by name; strides are multiples of 16 as in the
    real layouts (Triton specialises ints on divisibility by 16)."""
    state = chunk_state_dtype(act, exact=constexprs.get("GATE") == 2 or constexprs.get("STORE_ST", False))
    out = []
    for p in kernel.params:
        if p.is_constexpr:
            continue
        if p.name.endswith("_ptr"):
            out.append(_ptr_dtype(p.name, act, state))
        elif p.name in FLOATS:
            out.append(0.5)
        elif p.name.startswith("stride_"):
            out.append(4096)
        else:
            out.append(ints.get(p.name, INTS.get(p.name)))
    return out


def _opts(o):
    """Split a launcher's option dict into constexprs (block sizes) and compile options (warps, stages)."""
    ce = {k: v for k, v in o.items() if k not in ("num_warps", "num_stages")}
    return ce, {k: v for k, v in o.items() if k in ("num_warps", "num_stages")}


def _decode_job(name, constexprs, W, D, feature_buffer=False):
    """A decode kernel's launch, with the block sizes, tiles and warps of ``_decode_launch``."""
    ce, opts = _opts(_decode_launch(W, D, D, G, True, feature_buffer))
    return (name, "decode", {**constexprs, **ce}, {}, opts)


def launches(spec, D, dtype=torch.bfloat16, arch=90):
    """(kernel, pass, constexprs, ints, options) for every launch of ``spec`` at head dim D on a GPU of compute
    capability ``arch``, with the block sizes, num_warps and num_stages the launchers take from ``_blocks`` /
    ``_launch`` / ``lolcats_config`` (imported, not copied)."""
    out = []
    if spec.shared:
        F = 2 * D
        cfg = lolcats_config(D, True)
        BT = cfg["BT"]
        (st, st_o), (sc, sc_o), (fw, fw_o), (_, bw_o) = (_opts(cfg[k]) for k in ("state", "scan", "fwd", "bwd"))
        cs = dict(G=G, D=D, F=F, DV=D, BT=BT, BC=BT, GATE=0, FMAP=1, NORM=True, HAS_VALID=True, **st)
        scan = dict(D=D, F=F, DV=D, GATE=0, NORM=True, HAS_S0=False, STORE_ST=False, **sc)
        lol = dict(G=G, D=D, F=F, DV=D, BT=BT, W=spec.window, HAS_VALID=True)
        out += [("_chunk_state", "fwd", {**cs, "STATES": True, "WITH_DO": False}, {}, st_o),
                ("_chunk_scan", "fwd", scan, {"FIRST": 0}, sc_o),
                ("_lolcats_fwd", "fwd", {**lol, **fw}, {}, fw_o),
                ("_lolcats_bwd_q", "bwd", lol, {}, bw_o),
                ("_chunk_state", "bwd", {**cs, "STATES": False, "WITH_DO": True}, {}, st_o),
                ("_chunk_scan", "bwd", scan, {"FIRST": 1}, sc_o),
                ("_lolcats_bwd_kv", "bwd", lol, {}, bw_o),
                _decode_job("_lolcats_decode", dict(G=G, D=D, DV=D, W=spec.window, HAS_KV=True), spec.window, D, True)]
        return out
    f = _flags(spec)
    blk = _blocks(f, True)
    cfg = _launch(f, D, True, dtype, SHARED_PER_BLOCK[arch])
    (st, st_o), (sc, sc_o), (fw, fw_o), (_, bw_o) = (_opts(cfg[k]) for k in ("state", "scan", "fwd", "bwd"))
    F = 2 * D if f.fmap else D
    W = int(spec.window) if f.has_win else 1
    meta = _meta(f, G, D, D, blk, W, True)
    if f.has_lin:
        cs = dict(G=G, D=D, F=F, DV=D, BT=blk.BT, BC=blk.BC, GATE=f.gate, FMAP=f.fmap, NORM=f.norm, HAS_VALID=True,
                  **st)
        scan = dict(D=D, F=F, DV=D, GATE=f.gate, NORM=f.norm, **sc)
        out += [("_chunk_state", "fwd", {**cs, "STATES": True, "WITH_DO": False}, {}, st_o),
                ("_chunk_scan", "fwd", {**scan, "HAS_S0": False, "STORE_ST": False}, {"FIRST": 0}, sc_o),
                ("_chunk_scan", "prefill", {**scan, "HAS_S0": True, "STORE_ST": True}, {"FIRST": 0}, sc_o)]
        if f.norm:
            out += [("_chunk_state", "bwd", {**cs, "STATES": False, "WITH_DO": True}, {}, st_o),
                    ("_chunk_scan", "bwd", {**scan, "HAS_S0": False, "STORE_ST": False}, {"FIRST": 1}, sc_o)]
        else:
            out += [("_chunk_state", "bwd", {**cs, "STATES": True, "WITH_DO": True}, {}, st_o)]
    out += [("_hybrid_fwd", "fwd", {**meta, **fw, "NS": f.ns}, {}, fw_o),
            ("_hybrid_bwd_q", "bwd", meta, {}, bw_o),
            ("_hybrid_bwd_kv", "bwd", meta, {}, bw_o)]
    dec = dict(G=G, D=D, DV=D, W=W, HAS_LIN=f.has_lin, HAS_WIN=f.has_win,
               GATE=f.gate, FMAP=f.fmap, NORM=f.norm, NS=f.ns, MIXP=f.mixp, HAS_KV=True)
    out.append(_decode_job("_hybrid_decode", dec, W, D))
    return out


PTXAS_FRAME = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")
PTXAS_REGS = re.compile(r"Used (\d+) registers")
# Static instruction counts in the PTX (each loop body counted once): asynchronous copies show whether Triton
# pipelined a loop's loads (num_stages > 1), MMAs and exponentials the tensor-core and special-function work.
PTX_COUNTS = {"cp_async": re.compile(r"\bcp\.async\.c[ag]\b"),
              "mma": re.compile(r"\bmma\.sync\b|\bwgmma\.mma_async\b"),
              "ex2": re.compile(r"\bex2\.approx\b")}
CPP_ASSERT = re.compile(r"(\w+\.cpp:\d+): .*?(Assertion .*)$", re.M)
CPP_ERROR = re.compile(r"(\w+\.py:\d+):\d+: (error: .*)$", re.M)


def compile_one(job):
    """Compile one launch config; registers, spills, stack and shared memory from ptxas and Triton."""
    arch, name, constexprs, ints, options, act = job
    use_target(arch)
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
            compiled = kernel.warmup(*_args(kernel, ints, DTYPES[act], constexprs), grid=(1,), **options,
                                      **constexprs)
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
    ptx = compiled.asm["ptx"]
    return {"regs": int(regs.group(1)), "stack": int(frame.group(1)), "spill_st": int(frame.group(2)),
            "spill_ld": int(frame.group(3)), "smem": int(compiled.metadata.shared), "compile_s": time.time() - t0,
            **{name: len(pattern.findall(ptx)) for name, pattern in PTX_COUNTS.items()}}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", type=int, default=90, choices=sorted(SHARED_PER_BLOCK),
                    help="CUDA compute capability (90 = sm_90a, H100/H200)")
    ap.add_argument("--dims", type=int, nargs="+", default=[64, 128])
    ap.add_argument("--recipes", nargs="+", default=sorted(shipped_recipes()))
    ap.add_argument("--dtype", choices=sorted(DTYPES), default="bf16",
                    help="activation dtype (q, k, v, cos, sin, outputs and their gradients); bf16 in training")
    ap.add_argument("--jobs", type=int, default=1)
    ap.add_argument("--kernels", nargs="+", default=None, help="only these kernels (e.g. _hybrid_decode)")
    ap.add_argument("--num-stages", type=int, default=None,
                    help="compile every kernel at this num_stages instead of the launchers' (what-if: pipelining)")
    ap.add_argument("--json", default=None, help="also write the rows here")
    args = ap.parse_args()

    jobs = {}
    for D in args.dims:
        for recipe in args.recipes:
            spec = load_recipe(recipe).attention.to_spec()
            for name, pas, constexprs, ints, opts in launches(spec, D, DTYPES[args.dtype], args.arch):
                if args.kernels and name not in args.kernels:
                    continue
                if args.num_stages is not None:
                    opts = {**opts, "num_stages": args.num_stages}
                key = (name, D, tuple(sorted(opts.items())), tuple(sorted(constexprs.items())),
                       tuple(sorted(ints.items())))
                blocks = " ".join(f"{b}{constexprs[b]}" for b in ("BT", "BC", "BV", "BK") if b in constexprs)
                row = jobs.setdefault(key, {"kernel": name, "D": D, "num_warps": opts["num_warps"],
                                            "num_stages": opts.get("num_stages", 3), "blocks": blocks,
                                            "variants": [], "passes": [],
                                            "job": (args.arch, name, constexprs, ints, opts, args.dtype)})
                if recipe not in row["variants"]:
                    row["variants"].append(recipe)
                if pas not in row["passes"]:
                    row["passes"].append(pas)
    rows = list(jobs.values())
    print(f"# {len(rows)} kernel configs, sm_{args.arch}, {args.dtype} activations, triton {triton.__version__}, "
          f"torch {torch.__version__}",
          file=sys.stderr, flush=True)
    with concurrent.futures.ProcessPoolExecutor(max_workers=args.jobs) as pool:
        for row, res in zip(rows, pool.map(compile_one, [r.pop("job") for r in rows]), strict=True):
            row.update(res)
            print(f"  {row['kernel']} D{row['D']} {','.join(row['variants'])}: "
                  f"{res.get('error') or str(res['regs']) + ' regs'}", file=sys.stderr, flush=True)

    limit = SHARED_PER_BLOCK[args.arch]
    print("| kernel | variant (recipes) | pass | D | blocks | warps / stages | registers | spill bytes (st / ld) | "
          "stack B | shared B | PTX cp.async / mma / ex2 |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        head = (f"| {r['kernel']} | {', '.join(r['variants'])} | {'/'.join(r['passes'])} | {r['D']} | "
                f"{r['blocks']} | {r['num_warps']} / {r['num_stages']} |")
        if "error" in r:
            print(f"{head} compile error (below) | | | | |")
            continue
        spill = f"{r['spill_st']} / {r['spill_ld']}" if r["spill_st"] or r["spill_ld"] else "0"
        smem = f"**{r['smem']}** (over)" if r["smem"] > limit else str(r["smem"])
        print(f"{head} {r['regs']} | {spill} | {r['stack']} | {smem} | {r['cp_async']} / {r['mma']} / {r['ex2']} |")
    failed = [r for r in rows if "error" in r]
    if failed:
        print(f"\ncompile failures: {len(failed)} of {len(rows)} configs"
              + "".join(f"\n  {r['kernel']} D{r['D']} {','.join(r['variants'])}: {r['error']}" for r in failed))
    spilling = [r for r in rows if r.get("spill_st") or r.get("spill_ld")]
    print(f"\nspilling: {len(spilling)} of {len(rows)} configs"
          + "".join(f"\n  {r['kernel']} D{r['D']} {','.join(r['variants'])} ({r['num_warps']} warps): "
                    f"{r['spill_st']} B stores / {r['spill_ld']} B loads" for r in spilling))
    over = [r for r in rows if r.get("smem", 0) > limit]
    print(f"\nshared memory over the sm_{args.arch} limit of {limit} B per block (launch fails with "
          f"OutOfResources): {len(over)} of {len(rows)} configs"
          + "".join(f"\n  {r['kernel']} D{r['D']} {','.join(r['variants'])}: {r['smem']} B" for r in over))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"arch": args.arch, "dtype": args.dtype, "triton": triton.__version__, "rows": rows}, fh,
                      indent=1)
    shutil.rmtree(CACHE, ignore_errors=True)
    return 1 if any("error" in r for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
