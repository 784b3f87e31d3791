"""Route a converted model's CPU attention to the Triton kernels (interpreted), as CUDA tensors are routed.

``LinearizedAttention`` takes the kernels for CUDA tensors only; tests that check the model on the kernels
(``test_kernels_model.py``, the multi-process launcher's ``--kernels``) force that choice for CPU tensors and
fail any call that would fall back to the reference instead.
"""

import linearize.modeling_linearized as modeling
from linearize.kernels import kernel_fallback_reason


def route_attention_to_kernels(set_attribute=setattr) -> list[str]:
    """Patch the attention module (``set_attribute``: ``setattr``, or pytest's ``monkeypatch.setattr``) and
    return the list that records each kernel call: "chunked" (training, prefill) or "decode" (a step with a
    state). ``LINEARIZE_FORCE_REFERENCE=1`` still selects the reference."""
    calls = []
    kernel = modeling.hybrid_attention_kernel

    def checked_kernel(core, q_raw, k_raw, v, cos, sin, hidden, scaling, key_valid, softcap, state):
        reason = kernel_fallback_reason(core, q_raw, k_raw, v, softcap, state)
        if reason is not None:
            raise AssertionError(f"this call would fall back to the reference: {reason}")
        calls.append("decode" if q_raw.shape[2] == 1 and state is not None else "chunked")
        return kernel(core, q_raw, k_raw, v, cos, sin, hidden, scaling, key_valid, softcap, state)

    set_attribute(modeling, "hybrid_attention_kernel", checked_kernel)
    set_attribute(modeling.LinearizedAttention, "_use_kernel", lambda self, q: not modeling.reference_forced())
    return calls
