"""Converted models: the teacher family's ``*ForCausalLM`` with hybrid attention in chosen layers.

``Linearized<Family>ForCausalLM`` subclasses the family's own class, so embeddings, norms, MLPs,
RoPE, masks, ``generate`` and ``save_pretrained``/``from_pretrained`` are the family's; only the
``self_attn`` of linearized layers is replaced by :class:`LinearizedAttention`, which reuses the
teacher's q/k/v/o projections (and q/k norms) and adds the variant's small modules.
This file is shipped with exported checkpoints: it imports only torch, transformers and the
sibling files ``attention_*``, ``cache_linearized`` and ``configuration_linearized``.
"""

from __future__ import annotations

import os

import torch
from torch import nn
from transformers import (
    Gemma2ForCausalLM,
    Gemma3ForCausalLM,
    LlamaForCausalLM,
    MistralForCausalLM,
    Qwen2ForCausalLM,
    Qwen3ForCausalLM,
)

from .attention_reference import apply_rope
from .attention_variants import AttentionSpec, HybridAttentionCore
from .cache_linearized import LinearizedCache
from .configuration_linearized import CONFIG_CLASSES, linear_layer_indices

try:  # Triton kernels are optional: only used when importable and the tensors are on a GPU.
    from linearize.kernels import hybrid_attention_kernel
except Exception:  # noqa: BLE001 - any import problem means "use the reference"
    hybrid_attention_kernel = None

FORCE_REFERENCE_ENV = "LINEARIZE_FORCE_REFERENCE"


def reference_forced() -> bool:
    """``LINEARIZE_FORCE_REFERENCE=1``: CUDA tensors take the PyTorch reference instead of the kernels."""
    return os.environ.get(FORCE_REFERENCE_ENV, "0") == "1"


PADDING_MASK_KWARG = "linear_padding_mask"
ATTENTION_MODES = ("hybrid", "teacher", "transfer")


class LinearizedAttention(nn.Module):
    """Drop-in replacement of a teacher attention module (same forward signature and outputs).

    ``attention_mode`` selects what the layer computes:
    * ``"hybrid"`` (default): the linearized attention;
    * ``"teacher"``: the teacher's own softmax attention with the same weights (distillation targets);
    * ``"transfer"``: both; stores the MSE between them in ``self.transfer_loss`` and passes the
      teacher's output on, so every layer is trained on the teacher's hidden states (stage 1).
    """

    def __init__(self, teacher_attention: nn.Module, spec: AttentionSpec, config, layer_idx: int):
        super().__init__()
        self.layer_idx = layer_idx
        self.head_dim = teacher_attention.head_dim
        self.scaling = teacher_attention.scaling
        self.num_heads = config.num_attention_heads
        self.num_kv_heads = config.num_key_value_heads
        self.softcap = getattr(teacher_attention, "attn_logit_softcapping", None)
        self.teacher_window = getattr(teacher_attention, "sliding_window", None)
        self.q_proj, self.k_proj = teacher_attention.q_proj, teacher_attention.k_proj
        self.v_proj, self.o_proj = teacher_attention.v_proj, teacher_attention.o_proj
        if hasattr(teacher_attention, "q_norm"):
            self.q_norm, self.k_norm = teacher_attention.q_norm, teacher_attention.k_norm
        self.core = HybridAttentionCore(spec, config.hidden_size, self.num_heads, self.num_kv_heads, self.head_dim)
        self.attention_mode = "hybrid"
        self.transfer_loss: torch.Tensor | None = None

    @property
    def spec(self) -> AttentionSpec:
        return self.core.spec

    def _project(self, hidden_states: torch.Tensor):
        B, T, _ = hidden_states.shape
        q = self.q_proj(hidden_states).view(B, T, -1, self.head_dim)
        k = self.k_proj(hidden_states).view(B, T, -1, self.head_dim)
        v = self.v_proj(hidden_states).view(B, T, -1, self.head_dim)
        if hasattr(self, "q_norm"):
            q, k = self.q_norm(q), self.k_norm(k)
        return q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)

    def _use_kernel(self, q: torch.Tensor) -> bool:
        return hybrid_attention_kernel is not None and q.is_cuda and not reference_forced()

    def forward(
        self,
        hidden_states: torch.Tensor,
        position_embeddings: tuple[torch.Tensor, torch.Tensor] | None = None,
        attention_mask: torch.Tensor | None = None,
        cache=None,
        past_key_values=None,
        **kwargs,
    ):
        cache = cache if cache is not None else past_key_values
        B, T, _ = hidden_states.shape
        q_raw, k_raw, v = self._project(hidden_states)
        cos, sin = position_embeddings
        use_kernel = self.attention_mode != "teacher" and self._use_kernel(q_raw)
        # The kernel rotates inside; the reference and the teacher path take rotated q/k.
        q_rope = k_rope = None
        if not use_kernel:
            q_rope, k_rope = apply_rope(q_raw, cos, sin), apply_rope(k_raw, cos, sin)
        padding = kwargs.get(PADDING_MASK_KWARG)  # bool (B, past + T), only when some token is padding
        key_valid = padding[:, -T:] if padding is not None else None

        if self.attention_mode == "teacher":
            out = self.core.teacher_output(q_rope, k_rope, v, self.scaling, key_valid, self.softcap, self.teacher_window)
        else:
            state = cache.get_state(self.layer_idx) if isinstance(cache, LinearizedCache) else None
            if state is None and isinstance(cache, LinearizedCache):
                state = self.core.empty_state(B, hidden_states.device, k_raw.dtype)
            if use_kernel:
                out, new_state = hybrid_attention_kernel(
                    self.core, q_raw, k_raw, v, cos, sin, hidden_states, self.scaling, key_valid, self.softcap, state
                )
            else:
                out, new_state = self.core(
                    q_raw, k_raw, v, q_rope, k_rope, hidden_states, self.scaling, key_valid, self.softcap, state,
                    recurrent=(T == 1 and state is not None),
                )
            if isinstance(cache, LinearizedCache):
                cache.set_state(self.layer_idx, new_state, T)
            if self.attention_mode == "transfer":
                if q_rope is None:
                    q_rope, k_rope = apply_rope(q_raw, cos, sin), apply_rope(k_raw, cos, sin)
                with torch.no_grad():
                    target = self.core.teacher_output(
                        q_rope, k_rope, v, self.scaling, key_valid, self.softcap, self.teacher_window
                    )
                diff = (out.float() - target.float()) ** 2
                if key_valid is not None:
                    diff = diff * key_valid[:, None, :, None]
                    self.transfer_loss = diff.sum() / (key_valid.sum() * diff.shape[1] * diff.shape[-1]).clamp(min=1)
                else:
                    self.transfer_loss = diff.mean()
                out = target
        out = out.transpose(1, 2).reshape(B, T, -1)
        return self.o_proj(out), None


def install_hybrid_attention(model: nn.Module) -> None:
    """Replace ``self_attn`` of every linearized layer of ``model`` (per ``config.linearization``)."""
    config = model.config
    spec = AttentionSpec.from_dict(config.linearization["attention"])
    layers = model.model.layers
    for idx in linear_layer_indices(config):
        layer = layers[idx]
        if not isinstance(layer.self_attn, LinearizedAttention):
            layer.self_attn = LinearizedAttention(layer.self_attn, spec, config, idx)


class LinearizedMixin:
    """What converted models add to their family's ``*ForCausalLM``."""

    def __init__(self, config, *args, **kwargs):
        super().__init__(config, *args, **kwargs)
        install_hybrid_attention(self)

    def forward(self, input_ids=None, attention_mask=None, **kwargs):
        if "past_key_values" in kwargs:
            kwargs["cache"] = kwargs.pop("past_key_values")
        use_cache = kwargs.get("use_cache")
        if use_cache is None:  # a forward that will be backpropagated needs no cache (and the kernels take
            # gradients only without a decoding state), also in eval mode
            use_cache = self.config.use_cache and not self.training and not torch.is_grad_enabled()
        if use_cache and kwargs.get("cache") is None:
            kwargs["cache"] = LinearizedCache(self.config)
        kwargs["use_cache"] = use_cache
        if attention_mask is not None and attention_mask.dim() == 2:
            # Checked once per forward, not in every layer: ``bool(...)`` waits for the GPU (HF checks the
            # same for SDPA). Without padding no mask at all, so the teacher's SDPA keeps its flash kernel.
            valid = attention_mask.bool()
            if not bool(valid.all()):
                kwargs[PADDING_MASK_KWARG] = valid
        return super().forward(input_ids=input_ids, attention_mask=attention_mask, **kwargs)

    def _prepare_cache_for_generation(self, generation_config, model_kwargs, *args, **kwargs):
        if model_kwargs.get("cache") is None and model_kwargs.get("past_key_values") is None:
            if generation_config.use_cache is not False:
                model_kwargs["cache"] = LinearizedCache(self.config)
                return
        return super()._prepare_cache_for_generation(generation_config, model_kwargs, *args, **kwargs)

    def set_attention_mode(self, mode: str) -> None:
        """Switch every linearized layer to ``mode`` (one of ``ATTENTION_MODES``)."""
        if mode not in ATTENTION_MODES:
            raise ValueError(f"attention mode {mode!r} is not one of {', '.join(ATTENTION_MODES)}")
        for module in self.modules():
            if isinstance(module, LinearizedAttention):
                module.attention_mode = mode


BASE_MODELS = {
    "llama": LlamaForCausalLM,
    "mistral": MistralForCausalLM,
    "qwen2": Qwen2ForCausalLM,
    "qwen3": Qwen3ForCausalLM,
    "gemma2": Gemma2ForCausalLM,
    "gemma3_text": Gemma3ForCausalLM,
}


def _model_class(family: str, base: type) -> type:
    return type(
        "Linearized" + base.__name__,
        (LinearizedMixin, base),
        {
            "config_class": CONFIG_CLASSES[family],
            "__module__": __name__,
            "__doc__": f"{base.__name__} whose attention is linearized in the layers ``config.linearization`` names.",
        },
    )


MODEL_CLASSES = {family: _model_class(family, base) for family, base in BASE_MODELS.items()}

LinearizedLlamaForCausalLM = MODEL_CLASSES["llama"]
LinearizedMistralForCausalLM = MODEL_CLASSES["mistral"]
LinearizedQwen2ForCausalLM = MODEL_CLASSES["qwen2"]
LinearizedQwen3ForCausalLM = MODEL_CLASSES["qwen3"]
LinearizedGemma2ForCausalLM = MODEL_CLASSES["gemma2"]
LinearizedGemma3ForCausalLM = MODEL_CLASSES["gemma3_text"]
