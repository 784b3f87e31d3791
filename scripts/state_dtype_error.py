"""bf16 chunk states or fp32 ones: the kernels' errors against the fp32 reference, on CPU (Triton interpreter).

With bf16 inputs the kernels store the chunk states and their gradients in ``chunk_state_dtype`` (bf16, except
under the learned gate and for a prefill into a decoding state). This prints, for the same inputs, the
relative errors of the output, the q / k / v gradients and the learned parameters' gradients (training), and
of the output and the final decoding state (prefill), once as shipped and once with every state stored in
fp32, so that what the bf16 storage costs is a number. Lizard ships fp32 states (its learned gate's gradient);
``--variants lizard`` shows what bf16 ones would cost it. The interpreter emulates bf16 dots (operands rounded
to bf16, fp32 products), as on tensor cores.

    .venv/bin/python scripts/state_dtype_error.py [--variants liger,lolcats,lizard] [--T 96] [--prefill-T 320]
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
from linearize.kernels.hybrid_chunked import chunk_state_dtype  # noqa: E402
from test_kernels import _rel, bf16_prefill_pairs, low_precision_pairs  # noqa: E402


def training_errors(name, T):
    """Relative errors of the output and every gradient (bf16, H 4/2, D 32: the tests' low-precision case)."""
    return {n: _rel(*pair) for n, pair in low_precision_pairs(name, torch.bfloat16, 4, 2, T, 32).items()}


def prefill_errors(T):
    """Relative errors of a Liger-GLA bf16 prefill's output and final decoding state (H 4/2, D 64)."""
    return {n: _rel(*pair) for n, pair in bf16_prefill_pairs(T).items()}


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
    ap.add_argument("--variants", default="liger,lolcats", help="comma-separated subset of liger, lolcats, lizard")
    ap.add_argument("--T", type=int, default=96, help="training sequence length (chunks of 32)")
    ap.add_argument("--prefill-T", type=int, default=320, help="Liger-GLA prefill length (0: skip)")
    args = ap.parse_args()
    names = args.variants.split(",")
    unknown = sorted(set(names) - {"liger", "lolcats", "lizard"})
    if unknown:
        ap.error(f"--variants: unknown {unknown}; choose from liger, lolcats, lizard")
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
