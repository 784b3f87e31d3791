"""``softmax_layers: {auto: N}``: keep softmax attention where the linearized attention matches worst.

After stage 1 (or right after the conversion, for recipes without one), every linearized layer is run in
``"transfer"`` mode on validation windows: its hybrid output is compared with the teacher's softmax output
on the teacher's own hidden states. The criterion is the error relative to the size of the teacher's output,
``mean (hybrid - softmax)^2 / mean softmax^2``: raw MSE would favour the layers whose outputs are simply
larger. The N layers with the largest relative error go back to the teacher's attention module (same
weights), making an inter-layer hybrid; their stage-1 parameters are dropped.
"""

from __future__ import annotations

import sys

import torch
from torch import nn

from .configuration_linearized import LINEAR_LAYER, SOFTMAX_LAYER, family_of
from .modeling_linearized import BASE_MODELS, LinearizedAttention


@torch.no_grad()
def relative_transfer_errors(model: nn.Module, input_ids: torch.Tensor, batch_size: int = 1) -> dict[int, float]:
    """Layer index -> relative transfer error of every linearized layer on the windows ``input_ids`` (N, T)."""
    layers = {i: layer.self_attn for i, layer in enumerate(model.model.layers)
              if isinstance(layer.self_attn, LinearizedAttention)}
    errors = {i: 0.0 for i in layers}
    powers = {i: 0.0 for i in layers}
    modes = {i: attn.attention_mode for i, attn in layers.items()}
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    try:
        for attn in layers.values():
            attn.attention_mode = "transfer"
        for start in range(0, len(input_ids), batch_size):
            batch = input_ids[start : start + batch_size].to(device)
            model(input_ids=batch, use_cache=False, logits_to_keep=1)
            for i, attn in layers.items():
                errors[i] += float(attn.transfer_loss) * len(batch)
                powers[i] += float(attn.transfer_target_power) * len(batch)
    finally:
        for i, attn in layers.items():
            attn.attention_mode = modes[i]
        model.train(was_training)
    return {i: errors[i] / max(powers[i], 1e-30) for i in layers}


def choose_softmax_layers(errors: dict[int, float], count: int) -> list[int]:
    """The ``count`` layers with the largest error (ties: the lower index), sorted."""
    ranked = sorted(errors, key=lambda i: (-errors[i], i))
    return sorted(ranked[:count])


def _teacher_attention_class(model: nn.Module) -> type:
    family = family_of(model.config)
    base = BASE_MODELS[family]
    return getattr(sys.modules[base.__module__], base.__name__.replace("ForCausalLM", "Attention"))


def restore_softmax_layers(model: nn.Module, layers: list[int]) -> None:
    """Give ``layers`` of a converted model back the teacher's softmax attention (its own projections and
    norms) and record them in ``config.linearization`` (``softmax_layers``, ``layer_types``)."""
    lin = model.config.linearization
    attention_cls = _teacher_attention_class(model)
    for i in layers:
        layer = model.model.layers[i]
        hybrid = layer.self_attn
        if not isinstance(hybrid, LinearizedAttention):
            raise ValueError(f"layer {i} is not linearized")
        teacher = attention_cls(model.config, i)
        for name in ("q_proj", "k_proj", "v_proj", "o_proj", "q_norm", "k_norm"):
            if hasattr(hybrid, name):
                setattr(teacher, name, getattr(hybrid, name))
        teacher.to(next(hybrid.parameters()).device)
        layer.self_attn = teacher
    kept = sorted(set(lin["softmax_layers"]) | set(layers))
    lin["softmax_layers"] = kept
    lin["layer_types"] = [SOFTMAX_LAYER if i in kept else LINEAR_LAYER for i in range(len(lin["layer_types"]))]
