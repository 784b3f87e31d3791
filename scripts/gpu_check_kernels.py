"""One-call GPU check of the fused hybrid-attention kernels (linearize/kernels), H100/H200.

(a) correctness: bf16 / fp16 (and fp32, tf32 dots) outputs and q/k/v grads of the kernels against the
    fp32 PyTorch reference (HybridAttentionCore) at realistic shapes, with padding: Liger-GLA, GLA-only,
    SWA-only, Lizard and LoLCATs (also the grads of their learned parameters); prefill + decode steps
    against the recurrent reference for Liger-GLA and Lizard (outputs and the final linear state).
    Each bf16 / fp16 row also runs the reference itself in that dtype (inputs in it, autocast) and passes when
    every kernel error is <= max(tol, 2 x that reference's own error against fp32): the kernels' dots take
    operands in the input dtype, so their learned-parameter grads are off by about as much as the reference's.
(b) decode: one step (B=16) vs context: SDPA over a KV cache (GQA in the kernel; and as transformers runs it
    when a padding mask is passed: the KV repeated to H heads each step; SPEC 3's 0.25 / 1.90 ms at 4k / 32k
    are about 4x the GQA read's data, so probably this), fla fused_recurrent_gla, our decode kernel for
    Liger-GLA, for Lizard (hedgehog maps, learned gate, normaliser, window 128, sinks) and for LoLCATs
    (hedgehog maps, window 64 under one normaliser); each timed eager, replayed from a CUDA graph (the
    device's time alone) and on the host (Python + launch per call): a step's device work is small, so the
    eager time can be the host's.
(c) timing (triton.testing.do_bench, warm-up then median): the whole layer from raw q/k/v
    (feature maps, gate, RoPE, both branches, mix; projections excluded), fwd, fwd+bwd and peak
    memory, for: a standard RoPE + SDPA (flash, GQA) layer; our fused kernels (Liger-GLA; Lizard:
    window 128, 4 sinks, hedgehog maps, learned gate; LoLCATs: hedgehog maps, window 64 under one
    normaliser); the published Liger pipeline (fla chunk_gla + parallel_attn(window 64) + torch
    elementwise ops, as in /work/shared/anchor_bench/gpu_liger_layer_bench.py), timed last (autotune).
    H=32, H_kv=8, D=128, B*T = 16k tokens, T in {2k, 8k, 32k} (B = 1 at 32k: 32k tokens, as SPEC §3).
(d) profile: device time per kernel of one fwd+bwd (B=2, T=8k). (e) launch sweeps: the layer's kernels
    (warps, stages, blocks) at B=2, T=8k, and the decode kernels (value columns per program, warps; eager /
    CUDA graph / host) at B=16 ("sweep", "decode-sweep").
Every case runs in its own try; a wall-clock budget (--budget-s) skips what is left and still prints
the tables, so the call ends inside the device's limit. A cold run took ~6 min on the H100 for the checks,
decode and one length in one process, likely mostly compiling (not timed separately), so by default 8 worker processes first run the checks
and compile every kernel the timed sections will launch, in parallel; the timed sections then load them
from Triton's on-disk cache (--jobs 1: all in this process).

Run from the repo root:  python3 scripts/gpu_check_kernels.py   (writes $OUT/gpu_check_kernels.json and .md
when $OUT is set)
fla is optional: carried as wheels (fla-core==0.6.0, flash-linear-attention==0.6.0, see
docs/kernels.md); without it the fla rows say so and the rest is timed.
CPU plumbing test:  python scripts/gpu_check_kernels.py --smoke  (every case at tiny shapes under
TRITON_INTERPRET=1; SDPA-flash and fla baselines skipped; times are single interpreted calls).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import math
import os
import sys
import time
import traceback

ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
ap.add_argument("--smoke", action="store_true", help="tiny shapes on CPU under TRITON_INTERPRET=1")
ap.add_argument("--budget-s", type=float, default=420.0, help="skip the remaining cases after this many seconds")
SECTIONS = ("checks", "decode", "layers", "profile", "sweep", "decode-sweep")
ap.add_argument("--sections", default=",".join(SECTIONS),
                help=f"comma-separated subset of {', '.join(SECTIONS)} (default: all, in that order)")
ap.add_argument("--variants", default="hybrid,linear,window,lizard,lolcats",
                help="comma-separated variants for the correctness checks")
ap.add_argument("--lengths", default="2048,8192,32768",
                help="comma-separated T for the layer timing (B = 16k / T, at least 1)")
ap.add_argument("--jobs", type=int, default=None,
                help="processes that run the checks and compile every timed kernel in parallel first (Triton's "
                     "on-disk cache then serves the timed sections); 1: everything in this process "
                     "(default 8 on a GPU, 1 with --smoke)")
ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)  # "i/N:dir", set for the worker processes
ARGS = ap.parse_args()
RUN = set(ARGS.sections.split(","))
if not RUN <= set(SECTIONS):
    ap.error(f"--sections: unknown {sorted(RUN - set(SECTIONS))}; choose from {', '.join(SECTIONS)}")
SMOKE = ARGS.smoke
if ARGS.jobs is None:
    ARGS.jobs = 1 if SMOKE else 8
T_START = float(os.environ.get("GPU_CHECK_T0", time.time()))  # workers share the main process's clock
WORKER = None
if ARGS.worker:
    _slot, WORKER_DIR = ARGS.worker.split(":", 1)
    WORKER = tuple(int(x) for x in _slot.split("/"))  # (index, count)
if SMOKE:
    os.environ["TRITON_INTERPRET"] = "1"
else:
    os.environ.pop("TRITON_INTERPRET", None)
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
import triton  # noqa: E402
from triton.testing import do_bench  # noqa: E402

from linearize.attention_variants import AttentionSpec, HybridAttentionCore  # noqa: E402
from linearize.kernels import _apply_rope, hybrid_attention_kernel, kernel_fallback_reason  # noqa: E402

dev = "cpu" if SMOKE else "cuda"
torch.manual_seed(0)
RES = {"device": "cpu, TRITON_INTERPRET=1 (--smoke)" if SMOKE else torch.cuda.get_device_name(),
       "date": datetime.datetime.now().isoformat(timespec="minutes"), "torch": torch.__version__,
       "triton": triton.__version__, "skipped": []}
HAS_FLA = False
if SMOKE:
    print("smoke: SDPA-flash and fla baselines skipped (no GPU); kernels run in the Triton interpreter", flush=True)
else:
    try:
        from fla.ops.attn import parallel_attn
        from fla.ops.gla import chunk_gla, fused_recurrent_gla

        HAS_FLA = True
    except Exception as e:  # noqa: BLE001
        RES["fla"] = f"not importable: {e!r}"[:200]
        print("fla not importable (carry fla-core==0.6.0 and flash-linear-attention==0.6.0 as wheels):", e, flush=True)


TASKS = []  # work items, in order; worker i of N takes items i, i + N, ...


def mine(task) -> bool:
    """Register a work item; True when this process should do it (the main process with --jobs 1, else
    the worker it falls to)."""
    TASKS.append(task)
    return WORKER is None or (len(TASKS) - 1) % WORKER[1] == WORKER[0]


def over_budget(what):
    """True (and the case is recorded as skipped) once the wall-clock budget is spent."""
    if time.time() - T_START <= ARGS.budget_s:
        return False
    RES["skipped"].append(what)
    print("over budget, skipped:", what, flush=True)
    return True


def sync():
    if not SMOKE:
        torch.cuda.synchronize()


def bench(fn):
    if SMOKE:  # one interpreted call after a warm one: plumbing only
        fn()
        t0 = time.perf_counter()
        fn()
        return (time.perf_counter() - t0) * 1e3
    return do_bench(fn, warmup=25, rep=100, return_mode="median")


def rope_tables(T, D, dtype):
    pos = torch.arange(T, device=dev).float()
    inv = 1.0 / (10000 ** (torch.arange(0, D, 2, device=dev).float() / D))
    ang = torch.outer(pos, inv)
    ang = torch.cat([ang, ang], -1)
    return ang.cos()[None].to(dtype), ang.sin()[None].to(dtype)  # (1, T, D), HF layout


def rel(a, b):
    return ((a.float() - b.float()).norm() / b.float().norm().clamp_min(1e-12)).item()


def low_precision(dtype):
    """The reference's own rounding in ``dtype``: autocast (its matmuls in ``dtype``) on inputs in ``dtype``."""
    return contextlib.nullcontext() if dtype == torch.float32 else torch.autocast(dev, dtype=dtype)


def verdict(errs, ref_errs, tol):
    """Pass when every kernel error is <= max(tol, 2 x the reference's own error in the row's dtype); fp32 rows
    have no own error (empty ``ref_errs``), so tol alone."""
    return all(e <= max(tol, 2 * ref_errs.get(key, 0.0)) for key, e in errs.items())


HIDDEN = 64
LIZARD_SPEC = dict(feature_map="hedgehog", gate="learned", normalize=True, num_sinks=4, mix="learned")
LOLCATS_SPEC = dict(feature_map="hedgehog", gate="none", mix="shared")
SPECS = {"hybrid": {}, "linear": dict(branches="linear"), "window": dict(branches="window"),
         "lizard": LIZARD_SPEC, "lolcats": LOLCATS_SPEC}


def make_core(name, H, HKV, D, W):
    """Core of a variant, learned parameters moved away from their init (identity maps, zero sinks, alpha 1)."""
    core = HybridAttentionCore(AttentionSpec(window=W, **SPECS[name]), HIDDEN, H, HKV, D).to(dev)
    with torch.no_grad():
        for p in core.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    return core


def tiny(B, T, H, HKV, D):
    """Smoke shapes: a few interpreter chunks (32 tokens), G = 2, D = 32."""
    return min(B, 2), (96 if T % 64 == 0 else 100), 4, 2, 32


# ----------------------------------------------------------------------------- (a) correctness
CHECKS = []


def check_train(name, dtype, B, T, H, HKV, D, W, tol):
    if SMOKE:
        B, T, H, HKV, D = tiny(B, T, H, HKV, D)
    core = make_core(name, H, HKV, D, W)
    params = list(core.parameters())
    q = torch.randn(B, T, H, D, device=dev).transpose(1, 2) * 2  # strided like the model's views
    k = torch.randn(B, T, HKV, D, device=dev).transpose(1, 2) * 2
    v = torch.randn(B, T, HKV, D, device=dev).transpose(1, 2)
    cos, sin = rope_tables(T, D, torch.float32)
    key_valid = torch.ones(B, T, dtype=torch.bool, device=dev)
    key_valid[-1, : T // 7] = False
    hidden = torch.randn(B, T, HIDDEN, device=dev)
    scale = 1 / math.sqrt(D)
    lo = [x.to(dtype).detach().requires_grad_() for x in (q, k, v)]
    assert kernel_fallback_reason(core, *lo) is None, kernel_fallback_reason(core, *lo)
    out, _ = hybrid_attention_kernel(core, *lo, cos.to(dtype), sin.to(dtype), hidden, scale, key_valid, None, None)
    do = torch.randn_like(out)
    grads = torch.autograd.grad(out, lo + params, do)
    def reference(xs, c, s, dt):
        with low_precision(dt):
            r, _ = core(*xs, _apply_rope(xs[0], c, s), _apply_rope(xs[1], c, s), hidden, scale, key_valid, None, None)
            return r, torch.autograd.grad(r, xs + params, do.to(r.dtype))

    def errors(o, gs):
        e = {"out": rel(o, ref), **{f"d{n}": rel(g, r) for n, g, r in zip("qkv", gs, rgrads)}}
        if params:  # worst learned parameter (feature maps, gate_proj, sinks, alpha, window_factor)
            e["dparams"] = max(rel(g, r) for g, r in zip(gs[3:], rgrads[3:]))
        return e

    ref, rgrads = reference([x.detach().float().requires_grad_() for x in lo], cos, sin, torch.float32)
    errs = errors(out, grads)
    ref_errs = {}
    if dtype != torch.float32:
        ref_errs = errors(*reference([x.detach().requires_grad_() for x in lo], cos.to(dtype), sin.to(dtype), dtype))
    ok = verdict(errs, ref_errs, tol) and all(torch.isfinite(g).all().item() for g in grads)
    # Non-finite q/k/v grad entries: kernel / fp32 reference (tells a kernel overflow from a reference one).
    nonfinite = [sum(int((~torch.isfinite(g)).sum()) for g in gs[:3]) for gs in (grads, rgrads)]
    return {"shape": f"B{B} T{T} H{H}/{HKV} D{D} W{W}", **errs, "ref": ref_errs, "tol": tol, "ok": ok,
            "nonfinite": nonfinite}


def check_decode(name, dtype, B, P, steps, H, HKV, D, W, tol, kernel_prefill=True):
    """Prefill (kernels, or the reference when ``kernel_prefill`` is False) then decode steps on the kernels,
    against the reference's chunked prefill and recurrent steps."""
    if SMOKE:
        B, P, H, HKV, D = 2, 40, 4, 2, 32
        steps = min(steps, 3)
    core = make_core(name, H, HKV, D, W)
    T = P + steps
    q = (torch.randn(B, H, T, D, device=dev) * 2).to(dtype)
    k = (torch.randn(B, HKV, T, D, device=dev) * 2).to(dtype)
    v = torch.randn(B, HKV, T, D, device=dev).to(dtype)
    cos, sin = rope_tables(T, D, dtype)
    kv = torch.ones(B, T, dtype=torch.bool, device=dev)
    kv[-1, : P // 3] = False
    hid = torch.randn(B, T, HIDDEN, device=dev)
    scale = 1 / math.sqrt(D)
    spans = [(0, P)] + [(t, t + 1) for t in range(P, T)]

    def reference(dt):
        """Outputs of the reference's chunked prefill and recurrent steps in ``dt`` (autocast below fp32), and the
        state after the prefill and the final state."""
        outs, states = [], []
        rs = core.empty_state(B, dev, dt)
        with low_precision(dt):
            for t0, t1 in spans:
                sl = slice(t0, t1)
                f = [x[:, :, sl].to(dt) for x in (q, k, v)]
                c, s = cos[:, sl].to(dt), sin[:, sl].to(dt)
                r, rs = core(*f, _apply_rope(f[0], c, s), _apply_rope(f[1], c, s), hid[:, sl], scale, kv[:, sl],
                             None, rs, recurrent=(t1 - t0 == 1))
                outs.append(r)
                states.append(rs)
        return outs, states[0], states[-1]

    def errors(outs, final):
        first = 0 if kernel_prefill else 1
        e = {"out": max(rel(o, r) for o, r in zip(outs[first:], ref_outs[first:]))}
        if "linear" in final:
            e["state"] = rel(final["linear"], ref_final["linear"])
        return e

    with torch.no_grad():
        ref_outs, ref_prefill, ref_final = reference(torch.float32)
        ref_errs = errors(*reference(dtype)[::2]) if dtype != torch.float32 else {}
        st = core.empty_state(B, dev, dtype)
        outs = []
        for t0, t1 in spans:
            sl = slice(t0, t1)
            if t0 == 0 and not kernel_prefill:
                st = {n: x.to(dtype) if n in ("k", "v") else x.clone() for n, x in ref_prefill.items()}
                outs.append(None)
                continue
            assert kernel_fallback_reason(core, q[:, :, sl], k[:, :, sl], v[:, :, sl], None, st) is None
            o, st = hybrid_attention_kernel(core, q[:, :, sl], k[:, :, sl], v[:, :, sl], cos[:, sl], sin[:, sl],
                                            hid[:, sl], scale, kv[:, sl], None, st)
            outs.append(o)
    errs = errors(outs, st)
    return {"shape": f"B{B} P{P}+{steps} H{H}/{HKV} D{D} W{W}", **errs, "ref": ref_errs, "tol": tol,
            "ok": verdict(errs, ref_errs, tol)}


PLANNED = []


def run_check(kind, fn, args):
    PLANNED.append(args)
    label = f"{args[0]} {kind if len(args) < 11 or args[10] else 'decode'} {str(args[1])[6:]}"
    if over_budget(label):
        return
    try:
        row = {"check": label, **fn(*args)}
    except Exception as e:  # noqa: BLE001
        row = {"check": label, "error": repr(e)[:300], "ok": False}
        traceback.print_exc()
    CHECKS.append(row)
    print(row, flush=True)
    if not SMOKE:
        torch.cuda.empty_cache()


bf16, fp16, fp32 = torch.bfloat16, torch.float16, torch.float32
CHECK_TRAIN = [
    ("hybrid", bf16, 2, 2048, 32, 8, 128, 64, 2e-2),
    ("hybrid", fp16, 2, 2048, 32, 8, 128, 64, 5e-3),
    ("hybrid", fp32, 1, 1000, 12, 4, 64, 128, 5e-3),
    ("linear", bf16, 1, 4096, 32, 8, 128, 64, 2e-2),
    ("window", bf16, 1, 4096, 32, 8, 128, 128, 2e-2),
    ("lizard", bf16, 2, 2048, 32, 8, 128, 128, 2e-2),
    ("lizard", fp16, 1, 2048, 32, 8, 128, 128, 5e-3),
    ("lizard", fp32, 1, 1000, 12, 4, 64, 128, 5e-3),
    ("lolcats", bf16, 2, 2048, 32, 8, 128, 64, 2e-2),
    ("lolcats", fp16, 1, 2048, 32, 8, 128, 64, 5e-3),
    ("lolcats", fp32, 1, 1000, 12, 4, 64, 64, 5e-3),
]
CHECK_DECODE = [("hybrid", bf16, 4, 300, 6, 32, 8, 128, 64, 2e-2),
             ("hybrid", fp16, 4, 300, 6, 32, 8, 128, 64, 5e-3),
             ("lizard", bf16, 4, 300, 6, 32, 8, 128, 128, 2e-2),
             ("lizard", fp16, 4, 300, 6, 32, 8, 128, 128, 5e-3),
             ("lizard", bf16, 4, 300, 6, 32, 8, 128, 128, 2e-2, False),
             ("lolcats", bf16, 4, 300, 6, 32, 8, 128, 64, 2e-2)]
SELECTED = [a for a in CHECK_TRAIN + CHECK_DECODE if "checks" in RUN and a[0] in ARGS.variants.split(",")]


def spawn_workers():
    """Run the checks and compile every timed kernel in ``ARGS.jobs`` processes at once (Triton compiles on the
    CPU, one kernel at a time per process); the check rows come back as JSON files, in order."""
    import subprocess
    import tempfile

    tmp = tempfile.mkdtemp(prefix="gpu_check_")
    env = {**os.environ, "GPU_CHECK_T0": str(T_START), "PYTHONUNBUFFERED": "1"}
    procs = [subprocess.Popen([sys.executable, os.path.abspath(__file__), *sys.argv[1:], "--worker",
                               f"{i}/{ARGS.jobs}:{tmp}"], env=env) for i in range(ARGS.jobs)]
    codes = [p.wait() for p in procs]
    print(f"workers done in {time.time() - T_START:.0f} s (exit codes {codes})", flush=True)
    rows = {}
    for i in range(ARGS.jobs):
        path = os.path.join(tmp, f"checks-{i}.json")
        if os.path.exists(path):
            with open(path) as fh:
                rows.update({int(k): v for k, v in json.load(fh).items()})
    for idx, args in enumerate(SELECTED):
        PLANNED.append(args)
        if idx in rows:
            CHECKS.append(rows[idx])
            print(rows[idx], flush=True)
        else:
            RES["skipped"].append(f"check {args[0]} {str(args[1])[6:]} (no row from its worker)")


def kind_of(args):
    return ("train", check_train) if len(args) == 9 else ("prefill+decode", check_decode)


if WORKER is not None:
    done = {}
    for idx, args in enumerate(SELECTED):
        if mine(("check", idx)):
            before = len(CHECKS)
            run_check(*kind_of(args), args)
            if len(CHECKS) > before:
                done[idx] = CHECKS[-1]
    with open(os.path.join(WORKER_DIR, f"checks-{WORKER[0]}.json"), "w") as fh:
        json.dump(done, fh, default=str)
elif ARGS.jobs > 1:
    spawn_workers()
else:
    for args in SELECTED:
        run_check(*kind_of(args), args)


def check_preflight():
    """The shared-memory preflight of GPUs other than sm_90 (linearize/kernels/shared_memory.py) on this device's
    own driver: told the GPU gives a block an A100's 163 KiB, it records Lizard's training launches on CUDA
    tensors, compiles them here with this GPU's (sm_90) configuration and must name ``_hybrid_bwd_q``, the one
    above that (172032 B compiled for sm_90 on CPU with Triton 3.9, 180224 with 3.6; the others <= 128 KiB)."""
    from linearize.kernels.shared_memory import shared_memory_fallback

    core = make_core("lizard", 32, 8, 128, 128).to(torch.bfloat16)
    q = torch.zeros(1, 32, 1, 128, device=dev, dtype=torch.bfloat16)
    why = shared_memory_fallback(core, q, q[:, :8], None, True, (80, 166912))
    return {"shape": "Lizard train H 32/8 D 128 bf16, told 163 KiB per block", "verdict": why, "ref": {}, "tol": "-",
            "ok": why is not None and why.startswith("_hybrid_bwd_q needs")}


if "checks" in RUN and WORKER is None and not SMOKE:  # needs Triton's compiler (the interpreter runs kernels)
    PLANNED.append(("preflight",))
    try:
        row = {"check": "shared-memory preflight", **check_preflight()}
    except Exception as e:  # noqa: BLE001
        row = {"check": "shared-memory preflight", "error": repr(e)[:300], "ok": False}
        traceback.print_exc()
    CHECKS.append(row)
    print(row, flush=True)

# ----------------------------------------------------------------------------- shapes of (b), (c)
H, HKV, D = (4, 2, 32) if SMOKE else (32, 8, 128)
PROF_B, PROF_T = (1, 128) if SMOKE else (2, 8192)  # the profile's and the sweep's shape
W = 64
LIGER = HybridAttentionCore(AttentionSpec(), HIDDEN, H, HKV, D).to(dev)
LIZARD = make_core("lizard", H, HKV, D, 128)
LOLCATS = make_core("lolcats", H, HKV, D, 64)


def rope_at(pos):
    inv = 1.0 / (10000 ** (torch.arange(0, D, 2, device=dev).float() / D))
    ang = torch.cat([torch.outer(torch.tensor([float(pos)], device=dev), inv)] * 2, -1)
    return ang.cos()[None].bfloat16(), ang.sin()[None].bfloat16()


def filled_state(core, B):
    """A decoding state with random contents (window full; normaliser column positive)."""
    state = core.empty_state(B, dev, torch.bfloat16)
    for name, t in state.items():
        if name == "valid":
            t.fill_(True)
        else:
            t.normal_()
    if core.spec.normalize or core.spec.shared:
        state["linear"][..., -1].abs_().add_(1.0)
    if "kfeat" in state:
        state["kfeat"].abs_()
    return state


# ----------------------------------------------------------------------------- (b) decode
def graph_ms(fn):
    """Median ms of ``fn`` replayed from a CUDA graph: the device's work alone, without the host's Python and
    launch overhead, which the eager time includes wherever the GPU waits for it (None in --smoke)."""
    if SMOKE:
        return None
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        fn()  # compiles / autotunes outside the capture
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    return bench(graph.replay)


def host_ms(fn, n=200):
    """Host time per call (Python and launch): ``n`` calls enqueued back to back, timed before the sync (None in
    --smoke, where the interpreter's time is all host)."""
    if SMOKE:
        return None
    sync()
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    t1 = time.perf_counter()
    sync()
    return (t1 - t0) / n * 1e3


def time_step(r, key, fn):
    """Eager (``key``), CUDA-graph (``key_graph``) and host (``key_host``) ms of one decode step into ``r``."""
    for suffix, timer in (("", bench), ("_graph", graph_ms), ("_host", host_ms)):
        try:
            r[key + suffix] = timer(fn)
        except Exception as e:  # noqa: BLE001
            r[key + suffix] = repr(e)[:100]
            traceback.print_exc()


def decode_row(B, ctx):
    """One decode step at context ``ctx``: SDPA over a KV cache, fla's recurrent GLA, our decode kernel; each
    eager, replayed from a CUDA graph (device time) and the host's share."""
    r = {"B": B, "ctx": ctx}
    q = torch.randn(B, H, 1, D, device=dev, dtype=torch.bfloat16)
    if not SMOKE:
        kc = torch.randn(B, HKV, ctx, D, device=dev, dtype=torch.bfloat16)
        vc = torch.randn(B, HKV, ctx, D, device=dev, dtype=torch.bfloat16)
        time_step(r, "sdpa_kvcache_ms", lambda: F.scaled_dot_product_attention(q, kc, vc, enable_gqa=True))
        keep = torch.ones(B, 1, 1, ctx, device=dev, dtype=torch.bool)

        def repeated():  # transformers' SDPA path when a mask is passed (padded batches): repeat_kv, then SDPA
            kr, vr = (x[:, :, None].expand(B, HKV, H // HKV, ctx, D).reshape(B, H, ctx, D) for x in (kc, vc))
            return F.scaled_dot_product_attention(q, kr, vr, attn_mask=keep)

        time_step(r, "sdpa_repeat_kv_ms", repeated)
        r["kv_cache_MB_per_layer"] = 2 * B * HKV * ctx * D * 2 / 2**20
        del kc, vc
    if HAS_FLA:
        qq, kk, vv = (torch.randn(B, 1, H, D, device=dev, dtype=torch.bfloat16) for _ in range(3))
        gg = F.logsigmoid(torch.randn(B, 1, H, D, device=dev, dtype=torch.bfloat16))
        h0 = torch.randn(B, H, D, D, device=dev, dtype=torch.float32)
        time_step(r, "fla_recurrent_gla_ms", lambda: fused_recurrent_gla(qq, kk, vv, gk=gg, initial_state=h0,
                                                                          output_final_state=True))
    k1 = torch.randn(B, HKV, 1, D, device=dev, dtype=torch.bfloat16)
    v1 = torch.randn(B, HKV, 1, D, device=dev, dtype=torch.bfloat16)
    c1, s1 = rope_at(ctx)
    hid1 = torch.randn(B, 1, HIDDEN, device=dev)
    for name, core in [("liger", LIGER), ("lizard", LIZARD), ("lolcats", LOLCATS)]:
        state = filled_state(core, B)
        r[f"{name}_state_MB_per_layer"] = sum(t.numel() * t.element_size() for t in state.values()) / 2**20
        with torch.no_grad():
            assert kernel_fallback_reason(core, q, k1, v1, None, state) is None
            time_step(r, f"{name}_decode_ms", lambda: hybrid_attention_kernel(
                core, q, k1, v1, c1, s1, hid1, 1 / math.sqrt(D), None, None, state))  # noqa: B023
    return r


def warm_decode():
    """Compile the decode kernels (their work does not depend on the context length)."""
    for core in (LIGER, LIZARD, LOLCATS):
        q = torch.randn(2, H, 1, D, device=dev, dtype=torch.bfloat16)
        k1, v1 = (torch.randn(2, HKV, 1, D, device=dev, dtype=torch.bfloat16) for _ in range(2))
        with torch.no_grad():
            hybrid_attention_kernel(core, q, k1, v1, *rope_at(1), torch.randn(2, 1, HIDDEN, device=dev),
                                    1 / math.sqrt(D), None, None, filled_state(core, 2))


DEC = []
if WORKER is not None and "decode" in RUN and mine(("decode",)):
    warm_decode()
for ctx in ([] if "decode" not in RUN or WORKER else [64, 256] if SMOKE else [1024, 4096, 16384, 32768, 65536]):
    B = 2 if SMOKE else 16
    if over_budget(f"decode ctx {ctx}"):
        continue
    try:
        DEC.append(decode_row(B, ctx))
    except Exception as e:  # noqa: BLE001
        DEC.append({"B": B, "ctx": ctx, "error": repr(e)[:200]})
        traceback.print_exc()
    print(DEC[-1], flush=True)
    if not SMOKE:
        torch.cuda.empty_cache()


# ----------------------------------------------------------------------------- (c) training timing
def rope_bthd(x, cos, sin):  # x (B, T, h, D), cos (1, T, D)
    c, s = cos[:, :, None], sin[:, :, None]
    x1, x2 = x.chunk(2, -1)
    return x * c + torch.cat([-x2, x1], -1) * s


def sdpa_layer(q, k, v, cos, sin):
    qr, kr = rope_bthd(q, cos, sin), rope_bthd(k, cos, sin)
    return F.scaled_dot_product_attention(qr.transpose(1, 2), kr.transpose(1, 2), v.transpose(1, 2),
                                          is_causal=True, enable_gqa=True).transpose(1, 2)


def liger_fla_layer(q, k, v, cos, sin):
    G = q.shape[2] // k.shape[2]
    g = (F.logsigmoid(k.float()) / 16).repeat_interleave(G, 2)
    qf = q.float().softmax(-1)
    kf = k.float().softmax(-1).repeat_interleave(G, 2)
    vf = v.float().repeat_interleave(G, 2)
    o_gla, _ = chunk_gla(qf, kf, vf, g, scale=1.0)
    o_swa = parallel_attn(rope_bthd(q, cos, sin), rope_bthd(k, cos, sin), v, window_size=W)
    return (0.5 * o_gla + 0.5 * o_swa.float()).to(q.dtype)


HID = {}


def fused_layer(core):
    """Our kernels on the same (B, T, h, D) inputs as the others; the kernel reads the (B, h, T, D) views in
    place. Lizard's learned gate reads a 64-wide hidden (gate_proj in torch); gradients also reach the
    learned parameters (feature maps, gate_proj, sinks, alpha, window_factor)."""

    def layer(q, k, v, cos, sin):
        B, T = q.shape[:2]
        if (B, T) not in HID:
            HID.clear()
            HID[(B, T)] = torch.randn(B, T, HIDDEN, device=dev)
        qh, kh, vh = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        assert kernel_fallback_reason(core, qh, kh, vh) is None
        out, _ = hybrid_attention_kernel(core, qh, kh, vh, cos, sin, HID[(B, T)], 1 / math.sqrt(D), None, None, None)
        return out.transpose(1, 2)

    return layer


LAYERS = [("sdpa_layer", None if SMOKE else sdpa_layer), ("liger_fused_ours", fused_layer(LIGER)),
          ("lizard_fused_ours", fused_layer(LIZARD)), ("lolcats_fused_ours", fused_layer(LOLCATS)),
          ("liger_fla_published", liger_fla_layer if HAS_FLA else None)]


def time_layers(B, T):
    """fwd, fwd+bwd (median ms) and peak memory of every layer at (B, T), bf16; rows appended to ROWS."""
    q = torch.randn(B, T, H, D, device=dev, dtype=torch.bfloat16, requires_grad=True)
    k = torch.randn(B, T, HKV, D, device=dev, dtype=torch.bfloat16, requires_grad=True)
    v = torch.randn(B, T, HKV, D, device=dev, dtype=torch.bfloat16, requires_grad=True)
    cos, sin = rope_tables(T, D, torch.bfloat16)
    do = torch.randn(B, T, H, D, device=dev, dtype=torch.bfloat16)
    for name, fn in LAYERS:
        if fn is None:
            why = "no SDPA-flash / fla in --smoke" if SMOKE else "fla not importable"
            ROWS.append({"op": name, "B": B, "T": T, "skipped": why})
            continue
        if over_budget(f"{name} T{T}"):
            ROWS.append({"op": name, "B": B, "T": T, "skipped": "over the time budget"})
            continue

        def fb():
            q.grad = k.grad = v.grad = None
            fn(q, k, v, cos, sin).backward(do)  # noqa: B023

        try:
            fwd = bench(lambda: fn(q, k, v, cos, sin))  # noqa: B023
            fwdbwd = bench(fb)
            q.grad = k.grad = v.grad = None
            row = {"op": name, "B": B, "T": T, "fwd_ms": fwd, "fwdbwd_ms": fwdbwd,
                   "Mtok_s_fwdbwd": B * T / fwdbwd / 1e3}
            if not SMOKE:
                sync()
                torch.cuda.reset_peak_memory_stats()
                base = torch.cuda.memory_allocated()
                fb()
                sync()
                peak = torch.cuda.max_memory_allocated()
                row.update(peak_GiB=peak / 2**30, peak_over_inputs_GiB=(peak - base) / 2**30)
            ROWS.append(row)
        except Exception as e:  # noqa: BLE001
            ROWS.append({"op": name, "B": B, "T": T, "error": repr(e)[:200]})
            traceback.print_exc()
        print(ROWS[-1], flush=True)


ROWS = []
LENGTHS = [int(x) for x in ARGS.lengths.split(",")]
SHAPES = [(2, 64), (1, 128)] if SMOKE else [(max(1, 16384 // T), T) for T in LENGTHS]


def warm_layer(fn, B, T):
    """One fwd+bwd at (B, T): compiles the kernels the timing will run."""
    q = torch.randn(B, T, H, D, device=dev, dtype=torch.bfloat16, requires_grad=True)
    k = torch.randn(B, T, HKV, D, device=dev, dtype=torch.bfloat16, requires_grad=True)
    v = torch.randn(B, T, HKV, D, device=dev, dtype=torch.bfloat16, requires_grad=True)
    out = fn(q, k, v, *rope_tables(T, D, torch.bfloat16))
    out.backward(torch.randn_like(out))  # a dense output gradient, as timed (specialisation follows strides)


if WORKER is not None:
    warm_shapes = (SHAPES if "layers" in RUN else []) + ([(PROF_B, PROF_T)] if {"profile", "sweep"} & RUN else [])
    for B, T in dict.fromkeys(warm_shapes):
        for name, fn in LAYERS:
            if name.endswith("_ours") and mine(("layer", name, T)) and not over_budget(f"warm {name} T{T}"):
                try:
                    warm_layer(fn, B, T)
                except Exception:  # noqa: BLE001
                    traceback.print_exc()
for B, T in ([] if "layers" not in RUN or WORKER else SHAPES):
    time_layers(B, T)
    if not SMOKE:
        torch.cuda.empty_cache()

# ----------------------------------------------------------------------------- (d) where the time goes


def layer_inputs(B, T):
    q = torch.randn(B, T, H, D, device=dev, dtype=torch.bfloat16, requires_grad=True)
    k = torch.randn(B, T, HKV, D, device=dev, dtype=torch.bfloat16, requires_grad=True)
    v = torch.randn(B, T, HKV, D, device=dev, dtype=torch.bfloat16, requires_grad=True)
    do = torch.randn(B, T, H, D, device=dev, dtype=torch.bfloat16)
    return (q, k, v, *rope_tables(T, D, torch.bfloat16)), do


def profile_layer(name, fn, iters=3):
    """Device time per kernel (ms per fwd+bwd, top 12) of one layer, from torch.profiler."""
    args, do = layer_inputs(PROF_B, PROF_T)
    fn(*args).backward(do)
    sync()
    acts = [torch.profiler.ProfilerActivity.CPU] + ([] if SMOKE else [torch.profiler.ProfilerActivity.CUDA])
    with torch.profiler.profile(activities=acts) as prof:
        for _ in range(iters):
            fn(*args).backward(do)
        sync()
    rows = []
    for e in prof.key_averages():
        t = getattr(e, "self_device_time_total", 0) or getattr(e, "self_cuda_time_total", 0)
        if t > 0:
            rows.append((e.key[:70], t / 1e3 / iters, e.count // iters))
    rows.sort(key=lambda r: -r[1])
    return {"op": name, "total_ms": sum(r[1] for r in rows), "kernels": rows[:12]}


PROF = []
for name, fn in LAYERS if "profile" in RUN and not WORKER else []:
    if fn is None or over_budget(f"profile {name}"):
        continue
    try:
        PROF.append(profile_layer(name, fn))
    except Exception as e:  # noqa: BLE001
        PROF.append({"op": name, "error": repr(e)[:200]})
        traceback.print_exc()
    print(PROF[-1], flush=True)


# ----------------------------------------------------------------------------- (e) launch-config sweep
import linearize.kernels as LK  # noqa: E402

BASE_LAUNCH, BASE_BLOCKS = LK._launch, LK._blocks
# Around the defaults (bf16, D = 128): Liger-GLA 4 warps forward and backward, Lizard's forward all 128 value
# columns, both since the 2026-11-26 H200 sweep; its losers are kept as rows for the record ("w8", "BV64").
SWEEP_VARIANTS = {
    "liger": [("fwd w8", {"fwd": dict(num_warps=8)}), ("fwd s1", {"fwd": dict(num_stages=1)}),
              ("fwd s3", {"fwd": dict(num_stages=3)}), ("bwd w8", {"bwd": dict(num_warps=8)}),
              ("bwd s2", {"bwd": dict(num_stages=2)}), ("state BV64 s2", {"state": dict(BV=64, num_stages=2)}),
              ("state BV128 w8 s1", {"state": dict(BV=128, num_warps=8, num_stages=1)}),
              ("scan BK64", {"scan": dict(BK=64)}), ("BT 64", 64)],
    "lizard": [("fwd BV64", {"fwd": dict(BV=64)}), ("fwd w4", {"fwd": dict(num_warps=4)}),
               ("state BV64", {"state": dict(BV=64)})],
}


def with_launch(change):
    """Patch the kernels' launch choice: a dict updates per-kernel options, an int sets the chunk BT (in tiles of
    the default BC; the learned gate keeps one tile per chunk)."""

    def launch(f, D, cuda, dtype=torch.bfloat16):
        cfg = BASE_LAUNCH(f, D, cuda, dtype)
        F = 2 * D if f.fmap else D
        for key, upd in (change if isinstance(change, dict) else {}).items():
            # value / feature blocks at most the head's (the smoke run's D = 32 is below the sweep's 64 / 128)
            upd = {k: min(x, F if k == "BK" else D) if k in ("BV", "BK") else x for k, x in upd.items()}
            cfg[key] = {**cfg[key], **upd}
        return cfg

    def blocks(f, cuda):
        blk = BASE_BLOCKS(f, cuda)
        if not isinstance(change, int):
            return blk
        return blk._replace(BT=change, BC=change if f.gate == 2 else blk.BC)

    LK._launch, LK._blocks = launch, blocks


if WORKER is not None:
    for cname, core in ([("liger", LIGER), ("lizard", LIZARD)] if "sweep" in RUN else []):
        for label, change in SWEEP_VARIANTS[cname]:
            if mine(("sweep", cname, label)) and not over_budget(f"warm sweep {cname} {label}"):
                with_launch(change)
                try:
                    warm_layer(fused_layer(core), PROF_B, PROF_T)
                except Exception:  # noqa: BLE001
                    traceback.print_exc()
                finally:
                    LK._launch, LK._blocks = BASE_LAUNCH, BASE_BLOCKS

SWEEP = []
for cname, core in ([("liger", LIGER), ("lizard", LIZARD)] if "sweep" in RUN and WORKER is None else []):
    args, do = layer_inputs(PROF_B, PROF_T)
    fn = fused_layer(core)
    base_out = base_dq = None
    for label, change in [("baseline", {})] + SWEEP_VARIANTS[cname]:
        if over_budget(f"sweep {cname} {label}"):
            continue
        with_launch(change)
        try:
            args[0].grad = None
            out = fn(*args)
            out.backward(do)
            row = {"core": cname, "variant": label}
            if base_out is None:
                base_out, base_dq = out.detach(), args[0].grad.detach().clone()
            else:
                row.update(err_out=rel(out, base_out), err_dq=rel(args[0].grad, base_dq))

            def fb():
                args[0].grad = args[1].grad = args[2].grad = None  # noqa: B023
                fn(*args).backward(do)  # noqa: B023

            row.update(fwd_ms=bench(lambda: fn(*args)), fwdbwd_ms=bench(fb))  # noqa: B023
        except Exception as e:  # noqa: BLE001
            row = {"core": cname, "variant": label, "error": repr(e)[:160]}
        finally:
            LK._launch, LK._blocks = BASE_LAUNCH, BASE_BLOCKS
        SWEEP.append(row)
        print(row, flush=True)

# Decode launch options around ``_decode_launch``'s (B = 16, bf16): value columns per program (the grid is
# B * Hkv x D / BV) and warps; a variant equal to a core's default times it twice (the rows' noise).
BASE_DECODE_LAUNCH = LK._decode_launch
DECODE_SWEEP_VARIANTS = [("BV16", dict(BV=16)), ("BV64", dict(BV=64)), ("BV128", dict(BV=128)),
                         ("w4", dict(num_warps=4)), ("w8", dict(num_warps=8))]
DECODE_CORES = [("liger", LIGER), ("lizard", LIZARD), ("lolcats", LOLCATS)]


def with_decode_launch(change):
    """Patch the decode launch options (value blocks at most the head's: the smoke run's D = 32)."""
    upd = {k: min(x, D) if k == "BV" else x for k, x in change.items()}
    LK._decode_launch = lambda *a, **kw: {**BASE_DECODE_LAUNCH(*a, **kw), **upd}


def decode_step(core, B):
    """A no-grad decode step of ``core`` on a filled state at context 4k (our steps do not depend on it)."""
    q = torch.randn(B, H, 1, D, device=dev, dtype=torch.bfloat16)
    k1, v1 = (torch.randn(B, HKV, 1, D, device=dev, dtype=torch.bfloat16) for _ in range(2))
    c1, s1 = rope_at(4096)
    hid1, state = torch.randn(B, 1, HIDDEN, device=dev), filled_state(core, B)
    assert kernel_fallback_reason(core, q, k1, v1, None, state) is None
    return lambda: hybrid_attention_kernel(core, q, k1, v1, c1, s1, hid1, 1 / math.sqrt(D), None, None, state)[0]


DEC_B = 2 if SMOKE else 16
if WORKER is not None:
    for cname, core in (DECODE_CORES if "decode-sweep" in RUN else []):
        for label, change in DECODE_SWEEP_VARIANTS:
            if mine(("decode sweep", cname, label)) and not over_budget(f"warm decode sweep {cname} {label}"):
                with_decode_launch(change)
                try:
                    with torch.no_grad():
                        decode_step(core, DEC_B)()
                except Exception:  # noqa: BLE001
                    traceback.print_exc()
                finally:
                    LK._decode_launch = BASE_DECODE_LAUNCH
    sys.exit(0)

DEC_SWEEP = []
for cname, core in (DECODE_CORES if "decode-sweep" in RUN else []):
    with torch.no_grad():
        base, step = None, decode_step(core, DEC_B)
    for label, change in [("baseline", {})] + DECODE_SWEEP_VARIANTS:
        if over_budget(f"decode sweep {cname} {label}"):
            continue
        with_decode_launch(change)
        row = {"core": cname, "variant": label}
        try:
            with torch.no_grad():
                out = step()
                if base is None:
                    base = out
                else:
                    row["err_out"] = rel(out, base)
                time_step(row, "ms", step)
        except Exception as e:  # noqa: BLE001
            row["error"] = repr(e)[:160]
        finally:
            LK._decode_launch = BASE_DECODE_LAUNCH
        DEC_SWEEP.append(row)
        print(row, flush=True)

# ----------------------------------------------------------------------------- report
RES.update(checks=CHECKS, train=ROWS, decode=DEC, profile=PROF, sweep=SWEEP, decode_sweep=DEC_SWEEP, elapsed_s=time.time() - T_START)
out_dir = os.environ.get("OUT")


def fmt(x, spec=".3f"):
    return format(x, spec) if isinstance(x, float) else ("n/a" if x is None else str(x)[:60])


def step_cell(r, key):
    """A decode cell: eager / CUDA-graph / host ms."""
    return " / ".join(fmt(r.get(key + suffix)) for suffix in ("", "_graph", "_host"))


lines = [f"# {RES['device']} — {RES['date']} — torch {RES['torch']}, triton {RES['triton']}, "
         f"{RES['elapsed_s']:.0f} s", "",
         ("errors relative to the fp32 reference, kernel / the reference's own in the row's dtype (autocast); "
          "a row passes when each kernel error is <= max(tol, 2 x the reference's own)"), "",
         "| check | shape | out | dq | dk | dv | dparams | state | tol | ok |",
         "|---|---|---|---|---|---|---|---|---|---|"]
for c in CHECKS:
    if "error" in c:
        lines.append(f"| {c['check']} | | ERROR {c['error'][:100]} | | | | | | | False |")
        continue
    e = [(f"{c[key]:.1e}" + (f" / {c['ref'][key]:.1e}" if key in c["ref"] else "")) if key in c else "-"
         for key in ("out", "dq", "dk", "dv", "dparams", "state")]
    nf = f" (non-finite grads: kernel {c['nonfinite'][0]}, fp32 ref {c['nonfinite'][1]})" if any(
        c.get("nonfinite", [0])) else ""
    lines.append(f"| {c['check']} | {c['shape']} | {' | '.join(e)} | {c['tol']} | {c['ok']}{nf} |")



lines += ["", "decode step, one layer, ms: eager (do_bench, host overhead included where the GPU waits for it) / "
          "replayed from a CUDA graph (device only) / host per call", "",
          "| B | ctx | SDPA over KV cache | SDPA, KV repeated to H heads + mask | fla fused_recurrent_gla | "
          "liger ours | lizard ours | lolcats ours | KV cache MB | liger / lizard / lolcats state MB |",
          "|---|---|---|---|---|---|---|---|---|---|"]
for r in DEC:
    err = f" ERROR {r['error'][:80]}" if "error" in r else ""
    lines.append(f"| {r['B']} | {r['ctx']} | {step_cell(r, 'sdpa_kvcache_ms')} | {step_cell(r, 'sdpa_repeat_kv_ms')} | "
                 f"{step_cell(r, 'fla_recurrent_gla_ms')} | "
                 f"{step_cell(r, 'liger_decode_ms')} | {step_cell(r, 'lizard_decode_ms')} | "
                 f"{step_cell(r, 'lolcats_decode_ms')} | {fmt(r.get('kv_cache_MB_per_layer'), '.0f')} | "
                 f"{fmt(r.get('liger_state_MB_per_layer'), '.1f')} / {fmt(r.get('lizard_state_MB_per_layer'), '.1f')} / "
                 f"{fmt(r.get('lolcats_state_MB_per_layer'), '.1f')} |{err}")
lines += ["", f"| layer (H={H}/{HKV}, D={D}, bf16) | B | T | fwd ms | fwd+bwd ms | Mtok/s fwd+bwd | peak GiB |",
          "|---|---|---|---|---|---|---|"]
for r in ROWS:
    if "skipped" in r:
        lines.append(f"| {r['op']} | {r['B']} | {r['T']} | skipped: {r['skipped']} | | | |")
        continue
    if "error" in r:
        lines.append(f"| {r['op']} | {r['B']} | {r['T']} | ERROR {r['error'][:70]} | | | |")
        continue
    lines.append(f"| {r['op']} | {r['B']} | {r['T']} | {r['fwd_ms']:.2f} | {r['fwdbwd_ms']:.2f} | "
                 f"{r['Mtok_s_fwdbwd']:.2f} | {fmt(r.get('peak_GiB'), '.2f')} |")
if PROF:
    lines += ["", f"device time per kernel, one fwd+bwd at B={PROF_B}, T={PROF_T} (torch.profiler, top 12)"]
    for p in PROF:
        if "error" in p:
            lines.append(f"- {p['op']}: ERROR {p['error'][:100]}")
            continue
        lines.append(f"- {p['op']}: {p['total_ms']:.2f} ms: " + "; ".join(
            f"{k} x{c} {t:.2f}" for k, t, c in p["kernels"]))
if SWEEP:
    lines += ["", f"| launch sweep (B={PROF_B}, T={PROF_T}, bf16) | variant | fwd ms | fwd+bwd ms | "
              "err out / dq vs baseline |", "|---|---|---|---|---|"]
    for r in SWEEP:
        if "error" in r:
            lines.append(f"| {r['core']} | {r['variant']} | ERROR {r['error'][:70]} | | |")
            continue
        err = f"{r['err_out']:.1e} / {r['err_dq']:.1e}" if "err_out" in r else "-"
        lines.append(f"| {r['core']} | {r['variant']} | {r['fwd_ms']:.2f} | {r['fwdbwd_ms']:.2f} | {err} |")
if DEC_SWEEP:
    lines += ["", f"| decode launch sweep (B={DEC_B}, bf16) | variant | ms eager / CUDA graph / host | "
              "err out vs baseline |", "|---|---|---|---|"]
    for r in DEC_SWEEP:
        if "error" in r:
            lines.append(f"| {r['core']} | {r['variant']} | ERROR {r['error'][:70]} | |")
            continue
        err = f"{r['err_out']:.1e}" if "err_out" in r else "-"
        lines.append(f"| {r['core']} | {r['variant']} | {step_cell(r, 'ms')} | {err} |")
if RES["skipped"]:
    lines += ["", f"over the {ARGS.budget_s:.0f} s budget, skipped: {', '.join(RES['skipped'])}"]
all_ok = len(CHECKS) == len(PLANNED) and all(c.get("ok") for c in CHECKS)
lines += ["", f"all checks ok: {all_ok} ({len(CHECKS)} of {len(PLANNED)} checks run)"]
report = "\n".join(lines)
if out_dir:
    with open(os.path.join(out_dir, "gpu_check_kernels.json"), "w") as fh:
        json.dump(RES, fh, indent=1)
    with open(os.path.join(out_dir, "gpu_check_kernels.md"), "w") as fh:
        fh.write(report + "\n")
print("\n" + report)
