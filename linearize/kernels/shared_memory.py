"""Whether a kernel path fits the GPU's shared memory per block, found by compiling its launches.

The launch configurations were chosen on sm_90, whose blocks may take 227 KiB of shared memory, and CI
compiles every launch for it (``tests/test_kernels_compile.py``). Other GPUs give a block less (A100 163 KiB;
the sm_86 / sm_89 / sm_120 parts, RTX 30xx / 40xx / 50xx, A10, L4, L40: 99 KiB), and a launch that needs more
fails with Triton's ``OutOfResources``: Lizard's training backward at head dim 128 needs 168 KiB. So on any
GPU but sm_90 the first call of each kind (variant, dtype, heads, head dim, and training / forward / prefill /
decode) records the launches that call makes at a tiny shape (``offline_compile.record_launches``: the shared
memory a kernel needs depends on its block sizes and dtypes, not on B or T), compiles them for the GPU (Triton
caches the binaries) and compares each one's shared memory with the block's. A kind that does not fit runs
the PyTorch reference, with a warning the first time; ``kernel_fallback_reason`` names the kernel, its need
and the GPU's limit.
"""

from __future__ import annotations

import warnings

import torch

MODES = ("train", "forward", "prefill", "decode")

_verdicts: dict[tuple, str | None] = {}


def call_mode(q_raw: torch.Tensor, state, wants_grad: bool) -> str:
    """Which kind of call this is: training (forward + backward), forward, prefill into a state, decode."""
    if state is not None:
        return "decode" if q_raw.shape[2] == 1 else "prefill"
    return "train" if wants_grad else "forward"


def _hidden_size(core) -> int:
    """Width of the hidden states the learned gate reads (1 without one: ``hidden`` is then unused)."""
    return core.gate_proj.in_features if hasattr(core, "gate_proj") else 1


def drive(core, mode: str, dtype: torch.dtype, device, run) -> None:
    """One ``mode`` call of ``core``'s attention at a tiny shape through ``run`` (``hybrid_attention_kernel`` or
    ``run_kernels``): B 2 with padding in one row; training 80 tokens (forward and the backward of a random
    loss), forward and prefill 79 (Triton specialises on T % 16), decode one step."""
    B, T = 2, 80
    H, HKV, D = core.num_heads, core.num_kv_heads, core.head_dim
    grad = mode == "train"
    q = torch.randn(B, H, T, D, dtype=dtype, device=device, requires_grad=grad)
    k = torch.randn(B, HKV, T, D, dtype=dtype, device=device, requires_grad=grad)
    v = torch.randn(B, HKV, T, D, dtype=dtype, device=device, requires_grad=grad)
    hidden = torch.randn(B, T, _hidden_size(core), dtype=dtype, device=device)
    cos = torch.ones(1, T, D, dtype=dtype, device=device)
    sin = torch.zeros(1, T, D, dtype=dtype, device=device)
    key_valid = torch.ones(B, T, dtype=torch.bool, device=device)
    key_valid[1, :7] = False
    if grad:
        with torch.enable_grad():
            out, _ = run(core, q, k, v, cos, sin, hidden, D**-0.5, key_valid=key_valid, state=None)
            out.backward(torch.randn_like(out))
        return
    with torch.no_grad():
        state = core.empty_state(B, device, dtype) if mode in ("prefill", "decode") else None
        step = slice(T - 1, T) if mode == "decode" else slice(0, T - 1)
        run(core, q[:, :, step], k[:, :, step], v[:, :, step], cos[:, step], sin[:, step], hidden[:, step],
            D**-0.5, key_valid=key_valid if mode == "decode" else key_valid[:, step], state=state)


def _tiny_core(core, device):
    """A fresh core of the same attention, heads, dims and parameter dtype (the real one's parameters may be
    sharded or trained: they stay untouched)."""
    from ..attention_variants import HybridAttentionCore

    tiny = HybridAttentionCore(core.spec, _hidden_size(core), core.num_heads, core.num_kv_heads, core.head_dim)
    param = next(core.parameters(), None)
    return tiny.to(device=device, dtype=param.dtype if param is not None else None)


def shared_memory_fallback(core, q_raw: torch.Tensor, v: torch.Tensor, state, wants_grad: bool,
                           block: tuple[int, int]) -> str | None:
    """None when every launch of this kind of call fits a block of the GPU ``block`` = (compute capability,
    shared memory per block); otherwise why the reference runs. Decided once per kind and GPU."""
    from . import run_kernels
    from .offline_compile import compile_launch, record_launches

    mode = call_mode(q_raw, state, wants_grad)
    param = next(core.parameters(), None)
    key = (core.spec, core.num_heads, core.num_kv_heads, core.head_dim, v.shape[-1], q_raw.dtype,
           param.dtype if param is not None else None, mode, block)
    if key in _verdicts:
        return _verdicts[key]
    arch, limit = block
    verdict = None
    with record_launches(on_cpu=not q_raw.is_cuda) as launches:
        drive(_tiny_core(core, q_raw.device), mode, q_raw.dtype, q_raw.device, run_kernels)
    seen = set()
    for launch in launches:
        if launch.key() in seen:
            continue
        seen.add(launch.key())
        need = compile_launch(launch).metadata.shared
        if need > limit:
            verdict = (f"{launch.name} needs {need} B of shared memory per block ({mode} call); this GPU (sm_{arch}) "
                       f"allows {limit} B (docs/kernels.md, 'Other GPUs')")
            break
    if verdict is not None:
        warnings.warn(f"linearize kernels: {verdict}; these calls run the PyTorch reference", stacklevel=3)
    _verdicts[key] = verdict
    return verdict
