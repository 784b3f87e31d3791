"""bf16 chunk states or fp32 ones: the kernels' errors against the fp32 reference, on CPU (Triton interpreter).

With bf16 inputs the kernels store the chunk states and their gradients in ``chunk_state_dtype`` (bf16, except
under the learned gate and for a prefill into a decoding state). This prints, for the same inputs, the
relative errors of the output, the q / k / v gradients and the learned parameters' gradients (training), and
of the output and the final decoding state (prefill), once as shipped and once with every state stored in
fp32, so that what the bf16 storage costs is a number. The interpreter emulates bf16 dots (operands rounded
to bf16, fp32 products), as on tensor cores.

    .venv/bin/python scripts/state_dtype_error.py [--variants liger,lolcats] [--T 96] [--prefill-T 320]
"""

from __future__ import annotations

import argparse
import os
import sys

os.environ["TRITON_INTERPRET"] = "1"
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tests"))

import torch  # noqa: E402

import linearize.kernels as K  # noqa: E402
import linearize.kernels.lolcats_chunked as LC  # noqa: E402
from linearize.attention_variants import AttentionSpec, HybridAttentionCore  # noqa: E402
from linearize.kernels.hybrid_chunked import chunk_state_dtype  # noqa: E402
from test_kernels import HIDDEN, LOW_PRECISION_SPECS, _inputs, _learned_core, _reference, _rel  # noqa: E402


def training_errors(name, T, H=4, HKV=2, D=32):
    core = _learned_core(LOW_PRECISION_SPECS[name], H, HKV, D)
    q, k, v, hidden, cos, sin, key_valid = _inputs(2, H, HKV, T, D, True, dtype=torch.bfloat16)
    leaves = [x.requires_grad_() for x in (q, k, v)]
    names, params = zip(*core.named_parameters()) if name != "liger" else ((), ())
    out, _ = K.hybrid_attention_kernel(core, q, k, v, cos, sin, hidden.float(), 0.125, key_valid, None, None)
    do = torch.randn(out.shape, generator=torch.Generator().manual_seed(1)).to(out.dtype)
    grads = torch.autograd.grad(out, leaves + list(params), do)
    f32 = [x.detach().float().requires_grad_() for x in (q, k, v)]
    ref, _ = _reference(core, *f32, cos.float(), sin.float(), hidden.float(), 0.125, key_valid)
    ref_grads = torch.autograd.grad(ref, f32 + list(params), do.float())
    return {"out": _rel(out, ref), **{n: _rel(g, r) for n, g, r in zip(["q", "k", "v", *names], grads, ref_grads)}}


def prefill_errors(T, H=4, HKV=2, D=64):
    core = HybridAttentionCore(AttentionSpec(), HIDDEN, H, HKV, D)
    q, k, v, hidden, cos, sin, _ = _inputs(2, H, HKV, T, D, False, dtype=torch.bfloat16)
    with torch.no_grad():
        out, st = K.hybrid_attention_kernel(core, q, k, v, cos, sin, hidden, 0.125, None, None,
                                            core.empty_state(2, q.device, q.dtype))
        ref, ref_st = _reference(core, q.float(), k.float(), v.float(), cos.float(), sin.float(), hidden.float(),
                                 0.125, None, core.empty_state(2, q.device, torch.float32))
    return {"out": _rel(out, ref), "state": _rel(st["linear"], ref_st["linear"])}


def fp32_states(dtype, exact=False):
    """A ``chunk_state_dtype`` rule: fp32 always."""
    return torch.float32


def bf16_states(dtype, exact=False):
    """A ``chunk_state_dtype`` rule: bf16 for bf16 inputs even where the launchers keep fp32."""
    return chunk_state_dtype(dtype)


def with_state_dtype(rule, fn, *args):
    """``fn`` with the launchers' ``chunk_state_dtype`` replaced by ``rule`` (their imports patched)."""
    K.chunk_state_dtype = LC.chunk_state_dtype = rule
    try:
        return fn(*args)
    finally:
        K.chunk_state_dtype = LC.chunk_state_dtype = chunk_state_dtype


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--variants", default="liger,lolcats", help="comma-separated subset of liger, lolcats")
    ap.add_argument("--T", type=int, default=96, help="training sequence length (chunks of 32)")
    ap.add_argument("--prefill-T", type=int, default=320, help="Liger-GLA prefill length (0: skip)")
    args = ap.parse_args()
    names = args.variants.split(",")
    unknown = sorted(set(names) - {"liger", "lolcats"})
    if unknown:
        ap.error(f"--variants: unknown {unknown}; choose from liger, lolcats (Lizard's states are always fp32)")
    print(f"relative error against the fp32 reference, bf16 inputs, Triton interpreter (torch {torch.__version__})\n")
    print("| case | tensor | fp32 states | as shipped | bf16 states everywhere |")
    print("|---|---|---|---|---|")
    cases = [(f"{name} training, T {args.T}", training_errors, (name, args.T)) for name in names]
    if args.prefill_T:
        cases.append((f"liger prefill, T {args.prefill_T}", prefill_errors, (args.prefill_T,)))
    for label, fn, fn_args in cases:
        fp32 = with_state_dtype(fp32_states, fn, *fn_args)
        shipped = fn(*fn_args)
        bf16 = with_state_dtype(bf16_states, fn, *fn_args)
        for tensor in shipped:
            print(f"| {label} | {tensor} | {fp32[tensor]:.2e} | {shipped[tensor]:.2e} | {bf16[tensor]:.2e} |",
                  flush=True)


if __name__ == "__main__":
    main()
