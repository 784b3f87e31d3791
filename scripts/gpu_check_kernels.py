"""One-call GPU check of the fused hybrid-attention kernels (linearize/kernels), H100/H200.

(a) correctness: bf16 / fp16 (and fp32, tf32 dots) outputs and q/k/v grads of the Liger-GLA
    kernel against the fp32 PyTorch reference (HybridAttentionCore) at realistic shapes, with
    padding; GLA-only and SWA-only; Lizard (also the grads of its learned parameters);
    prefill + decode steps against the recurrent reference.
(b) timing (triton.testing.do_bench, warm-up then median): the whole layer from raw q/k/v
    (feature maps, gate, RoPE, both branches, mix; projections excluded), fwd, fwd+bwd and peak
    memory, for: a standard RoPE + SDPA (flash, GQA) layer; the published pipeline (fla
    chunk_gla + parallel_attn(window 64) + torch elementwise ops, as in
    /work/shared/anchor_bench/gpu_liger_layer_bench.py); our fused kernels (Liger-GLA, and Lizard:
    window 128, 4 sinks, hedgehog maps, learned gate; no published fused pipeline to compare with).
    H=32, H_kv=8, D=128, B*T = 16k tokens, T in {2k, 8k, 32k}. Then one decode step (B=16) at
    4k and 32k context: SDPA over a KV cache, fla fused_recurrent_gla, our decode kernel.

Run from the repo root:  python3 scripts/gpu_check_kernels.py   (writes $OUT/gpu_check_kernels.json)
fla is optional: carried as wheels (fla-core==0.6.0, flash-linear-attention==0.6.0, see
docs/kernels.md); without it the fla rows say so and the rest is timed.
"""

from __future__ import annotations

import datetime
import json
import math
import os
import sys
import traceback

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.pop("TRITON_INTERPRET", None)

from triton.testing import do_bench  # noqa: E402

from linearize.attention_variants import AttentionSpec, HybridAttentionCore  # noqa: E402
from linearize.kernels import _apply_rope, hybrid_attention_kernel, kernel_fallback_reason  # noqa: E402

dev = "cuda"
torch.manual_seed(0)
RES = {"device": torch.cuda.get_device_name(), "date": datetime.datetime.now().isoformat(timespec="minutes"),
       "torch": torch.__version__}
import triton  # noqa: E402

RES["triton"] = triton.__version__
try:
    from fla.ops.attn import parallel_attn
    from fla.ops.gla import chunk_gla, fused_recurrent_gla

    HAS_FLA = True
except Exception as e:  # noqa: BLE001
    HAS_FLA = False
    RES["fla"] = f"not importable: {e!r}"[:200]
    print("fla not importable (carry fla-core==0.6.0 and flash-linear-attention==0.6.0 as wheels):", e, flush=True)


def bench(fn):
    return do_bench(fn, warmup=25, rep=100, return_mode="median")


def rope_tables(T, D, dtype):
    pos = torch.arange(T, device=dev).float()
    inv = 1.0 / (10000 ** (torch.arange(0, D, 2, device=dev).float() / D))
    ang = torch.outer(pos, inv)
    ang = torch.cat([ang, ang], -1)
    return ang.cos()[None].to(dtype), ang.sin()[None].to(dtype)  # (1, T, D), HF layout


def rel(a, b):
    return ((a.float() - b.float()).norm() / b.float().norm().clamp_min(1e-12)).item()


# ----------------------------------------------------------------------------- (a) correctness
CHECKS = []


LIZARD_SPEC = dict(feature_map="hedgehog", gate="learned", normalize=True, num_sinks=4, mix="learned")


def check_train(branches, dtype, B, T, H, HKV, D, W, tol):
    lizard = branches == "lizard"
    spec = AttentionSpec(window=W, **LIZARD_SPEC) if lizard else AttentionSpec(branches=branches, window=W)
    core = HybridAttentionCore(spec, 64, H, HKV, D).to(dev)
    with torch.no_grad():  # learned parameters away from their init (identity maps, zero sinks, alpha 1)
        for p in core.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    params = list(core.parameters())
    q = torch.randn(B, T, H, D, device=dev).transpose(1, 2) * 2  # strided like the model's views
    k = torch.randn(B, T, HKV, D, device=dev).transpose(1, 2) * 2
    v = torch.randn(B, T, HKV, D, device=dev).transpose(1, 2)
    cos, sin = rope_tables(T, D, torch.float32)
    key_valid = torch.ones(B, T, dtype=torch.bool, device=dev)
    key_valid[-1, : T // 7] = False
    hidden = torch.randn(B, T, 64, device=dev)
    scale = 1 / math.sqrt(D)
    lo = [x.to(dtype).detach().requires_grad_() for x in (q, k, v)]
    assert kernel_fallback_reason(core, lo[0], lo[2]) is None
    out, _ = hybrid_attention_kernel(core, *lo, cos.to(dtype), sin.to(dtype), hidden, scale, key_valid, None, None)
    do = torch.randn_like(out)
    grads = torch.autograd.grad(out, lo + params, do)
    hi = [x.detach().float().requires_grad_() for x in lo]
    ref, _ = core(*hi, _apply_rope(hi[0], cos, sin), _apply_rope(hi[1], cos, sin), hidden, scale, key_valid, None, None)
    rgrads = torch.autograd.grad(ref, hi + params, do.float())
    errs = {"out": rel(out, ref), **{f"d{n}": rel(g, r) for n, g, r in zip("qkv", grads, rgrads)}}
    if params:  # worst learned parameter (feature maps, gate_proj, sinks, alpha)
        errs["dparams"] = max(rel(g, r) for g, r in zip(grads[3:], rgrads[3:]))
    ok = all(e <= tol for e in errs.values()) and all(torch.isfinite(g).all().item() for g in grads)
    row = {"check": f"{branches} train {str(dtype)[6:]}", "shape": f"B{B} T{T} H{H}/{HKV} D{D} W{W}", **errs,
           "tol": tol, "ok": ok}
    CHECKS.append(row)
    print(row, flush=True)


def check_decode(branches, dtype, B, P, steps, H, HKV, D, W, tol):
    spec = AttentionSpec(branches=branches, window=W)
    core = HybridAttentionCore(spec, 64, H, HKV, D).to(dev)
    T = P + steps
    q = (torch.randn(B, H, T, D, device=dev) * 2).to(dtype)
    k = (torch.randn(B, HKV, T, D, device=dev) * 2).to(dtype)
    v = torch.randn(B, HKV, T, D, device=dev).to(dtype)
    cos, sin = rope_tables(T, D, dtype)
    kv = torch.ones(B, T, dtype=torch.bool, device=dev)
    kv[-1, : P // 3] = False
    hid = torch.zeros(B, T, 64, device=dev, dtype=dtype)
    worst = 0.0
    with torch.no_grad():
        st = core.empty_state(B, dev, dtype)
        rs = core.empty_state(B, dev, torch.float32)
        sl = slice(0, P)
        o, st = hybrid_attention_kernel(core, q[:, :, sl], k[:, :, sl], v[:, :, sl], cos[:, sl], sin[:, sl],
                                        hid[:, sl], 0.088, kv[:, sl], None, st)
        f = [x[:, :, sl].float() for x in (q, k, v)]
        c, s = cos[:, sl].float(), sin[:, sl].float()
        r, rs = core(*f, _apply_rope(f[0], c, s), _apply_rope(f[1], c, s), hid[:, sl].float(), 0.088, kv[:, sl], None, rs)
        worst = max(worst, rel(o, r))
        for t in range(P, T):
            sl = slice(t, t + 1)
            o, st = hybrid_attention_kernel(core, q[:, :, sl], k[:, :, sl], v[:, :, sl], cos[:, sl], sin[:, sl],
                                            hid[:, sl], 0.088, kv[:, sl], None, st)
            f = [x[:, :, sl].float() for x in (q, k, v)]
            c, s = cos[:, sl].float(), sin[:, sl].float()
            r, rs = core(*f, _apply_rope(f[0], c, s), _apply_rope(f[1], c, s), hid[:, sl].float(), 0.088, kv[:, sl],
                         None, rs, recurrent=True)
            worst = max(worst, rel(o, r))
    row = {"check": f"{branches} prefill+decode {str(dtype)[6:]}", "shape": f"B{B} P{P}+{steps} H{H}/{HKV} D{D} W{W}",
           "out": worst, "tol": tol, "ok": worst <= tol}
    CHECKS.append(row)
    print(row, flush=True)


for args in [
    ("hybrid", torch.bfloat16, 2, 2048, 32, 8, 128, 64, 2e-2),
    ("hybrid", torch.float16, 2, 2048, 32, 8, 128, 64, 5e-3),
    ("hybrid", torch.float32, 1, 1000, 12, 4, 64, 128, 5e-3),
    ("linear", torch.bfloat16, 1, 4096, 32, 8, 128, 64, 2e-2),
    ("window", torch.bfloat16, 1, 4096, 32, 8, 128, 128, 2e-2),
    ("lizard", torch.bfloat16, 2, 2048, 32, 8, 128, 128, 2e-2),
    ("lizard", torch.float16, 1, 2048, 32, 8, 128, 128, 5e-3),
    ("lizard", torch.float32, 1, 1000, 12, 4, 64, 128, 5e-3),
]:
    try:
        check_train(*args)
    except Exception as e:  # noqa: BLE001
        CHECKS.append({"check": f"{args[0]} train {args[1]}", "error": repr(e)[:300], "ok": False})
        traceback.print_exc()
for args in [("hybrid", torch.bfloat16, 4, 300, 6, 32, 8, 128, 64, 2e-2),
             ("hybrid", torch.float16, 4, 300, 6, 32, 8, 128, 64, 5e-3)]:
    try:
        check_decode(*args)
    except Exception as e:  # noqa: BLE001
        CHECKS.append({"check": f"decode {args[1]}", "error": repr(e)[:300], "ok": False})
        traceback.print_exc()
torch.cuda.empty_cache()

# ----------------------------------------------------------------------------- (b) timing
H, HKV, D, W = 32, 8, 128, 64
LIGER = HybridAttentionCore(AttentionSpec(), 64, H, HKV, D).to(dev)


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


def liger_fused_layer(q, k, v, cos, sin):
    # Same (B, T, h, D) inputs as the others; the kernel reads the (B, h, T, D) views in place.
    out, _ = hybrid_attention_kernel(LIGER, q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), cos, sin,
                                     None, 1 / math.sqrt(D), None, None, None)
    return out.transpose(1, 2)


LIZARD = HybridAttentionCore(AttentionSpec(window=128, **LIZARD_SPEC), 64, H, HKV, D).to(dev)
HID = {}


def lizard_fused_layer(q, k, v, cos, sin):
    # Lizard (hedgehog maps, learned gate from a 64-wide hidden (gate_proj in torch), normalised GLA,
    # window 128 with 4 sinks, learned alpha); gradients also reach the learned parameters.
    B, T = q.shape[:2]
    if (B, T) not in HID:
        HID.clear()
        HID[(B, T)] = torch.randn(B, T, 64, device=dev)
    out, _ = hybrid_attention_kernel(LIZARD, q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), cos, sin,
                                     HID[(B, T)], 1 / math.sqrt(D), None, None, None)
    return out.transpose(1, 2)


LAYERS = [("sdpa_layer", sdpa_layer), ("liger_fla_published", liger_fla_layer if HAS_FLA else None),
          ("liger_fused_ours", liger_fused_layer), ("lizard_fused_ours", lizard_fused_layer)]
ROWS = []
for B, T in [(8, 2048), (2, 8192), (1, 32768)]:
    q = torch.randn(B, T, H, D, device=dev, dtype=torch.bfloat16, requires_grad=True)
    k = torch.randn(B, T, HKV, D, device=dev, dtype=torch.bfloat16, requires_grad=True)
    v = torch.randn(B, T, HKV, D, device=dev, dtype=torch.bfloat16, requires_grad=True)
    cos, sin = rope_tables(T, D, torch.bfloat16)
    do = torch.randn(B, T, H, D, device=dev, dtype=torch.bfloat16)
    for name, fn in LAYERS:
        if fn is None:
            ROWS.append({"op": name, "B": B, "T": T, "error": "fla not importable"})
            continue
        try:
            fwd = bench(lambda: fn(q, k, v, cos, sin))

            def fb():
                q.grad = k.grad = v.grad = None
                fn(q, k, v, cos, sin).backward(do)

            fwdbwd = bench(fb)
            q.grad = k.grad = v.grad = None
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
            fb()
            torch.cuda.synchronize()
            peak = torch.cuda.max_memory_allocated()
            ROWS.append({"op": name, "B": B, "T": T, "fwd_ms": fwd, "fwdbwd_ms": fwdbwd,
                         "Mtok_s_fwdbwd": B * T / fwdbwd / 1e3, "peak_GiB": peak / 2**30,
                         "peak_over_inputs_GiB": (peak - base) / 2**30})
        except Exception as e:  # noqa: BLE001
            ROWS.append({"op": name, "B": B, "T": T, "error": repr(e)[:200]})
            traceback.print_exc()
        print(ROWS[-1], flush=True)
    del q, k, v, do
    torch.cuda.empty_cache()

DEC = []
for B, ctx in [(16, 4096), (16, 32768)]:
    r = {"B": B, "ctx": ctx}
    q = torch.randn(B, H, 1, D, device=dev, dtype=torch.bfloat16)
    kc = torch.randn(B, HKV, ctx, D, device=dev, dtype=torch.bfloat16)
    vc = torch.randn(B, HKV, ctx, D, device=dev, dtype=torch.bfloat16)
    r["sdpa_kvcache_ms"] = bench(lambda: F.scaled_dot_product_attention(q, kc, vc, enable_gqa=True))
    del kc, vc
    if HAS_FLA:
        qq, kk, vv = (torch.randn(B, 1, H, D, device=dev, dtype=torch.bfloat16) for _ in range(3))
        gg = F.logsigmoid(torch.randn(B, 1, H, D, device=dev, dtype=torch.bfloat16))
        h0 = torch.randn(B, H, D, D, device=dev, dtype=torch.float32)
        try:
            r["fla_recurrent_gla_ms"] = bench(lambda: fused_recurrent_gla(qq, kk, vv, gk=gg, initial_state=h0,
                                                                           output_final_state=True))
        except Exception as e:  # noqa: BLE001
            r["fla_recurrent_gla_ms"] = repr(e)[:100]
    state = LIGER.empty_state(B, dev, torch.bfloat16)
    state["linear"].normal_()
    state["k"].normal_()
    state["v"].normal_()
    state["valid"].fill_(True)
    k1 = torch.randn(B, HKV, 1, D, device=dev, dtype=torch.bfloat16)
    v1 = torch.randn(B, HKV, 1, D, device=dev, dtype=torch.bfloat16)
    pos = torch.tensor([ctx], device=dev).float()
    inv = 1.0 / (10000 ** (torch.arange(0, D, 2, device=dev).float() / D))
    ang = torch.cat([torch.outer(pos, inv)] * 2, -1)
    c1, s1 = ang.cos()[None].bfloat16(), ang.sin()[None].bfloat16()
    assert kernel_fallback_reason(LIGER, q, v1, None, state) is None
    with torch.no_grad():
        r["ours_decode_step_ms"] = bench(lambda: hybrid_attention_kernel(LIGER, q, k1, v1, c1, s1, None,
                                                                          1 / math.sqrt(D), None, None, state))
    r["state_MB_per_layer"] = sum(t.numel() * t.element_size() for t in state.values()) / 2**20
    r["kv_cache_MB_per_layer"] = 2 * B * HKV * ctx * D * 2 / 2**20
    DEC.append(r)
    print(r, flush=True)

RES.update(checks=CHECKS, train=ROWS, decode=DEC)
out_dir = os.environ.get("OUT", ".")
with open(os.path.join(out_dir, "gpu_check_kernels.json"), "w") as fh:
    json.dump(RES, fh, indent=1)

print(f"\n# {RES['device']} — {RES['date']} — torch {RES['torch']}, triton {RES['triton']}")
print("\n| check | shape | out | dq | dk | dv | dparams | tol | ok |")
print("|---|---|---|---|---|---|---|---|---|")
for c in CHECKS:
    if "error" in c:
        print(f"| {c['check']} | | ERROR {c['error'][:80]} | | | | | | False |")
        continue
    f = lambda key: f"{c[key]:.1e}" if key in c else "-"  # noqa: E731
    print(f"| {c['check']} | {c['shape']} | {f('out')} | {f('dq')} | {f('dk')} | {f('dv')} | {f('dparams')} | {c['tol']} | {c['ok']} |")
print("\n| layer (H=32/8, D=128, bf16) | B | T | fwd ms | fwd+bwd ms | Mtok/s fwd+bwd | peak GiB |")
print("|---|---|---|---|---|---|---|")
for r in ROWS:
    if "error" in r:
        print(f"| {r['op']} | {r['B']} | {r['T']} | ERROR {r['error'][:70]} | | | |")
        continue
    print(f"| {r['op']} | {r['B']} | {r['T']} | {r['fwd_ms']:.2f} | {r['fwdbwd_ms']:.2f} | "
          f"{r['Mtok_s_fwdbwd']:.2f} | {r['peak_GiB']:.2f} |")
print("\n| decode step, one layer, B=16 | ctx | SDPA over KV cache ms | fla fused_recurrent_gla ms | ours ms |")
print("|---|---|---|---|---|")
for r in DEC:
    fl = r.get("fla_recurrent_gla_ms", "n/a")
    fl = f"{fl:.3f}" if isinstance(fl, float) else fl
    print(f"| | {r['ctx']} | {r['sdpa_kvcache_ms']:.3f} | {fl} | {r['ours_decode_step_ms']:.3f} |")
print("\nall checks ok:", all(c.get("ok") for c in CHECKS))
