"""Surgery: turn a loaded teacher ``*ForCausalLM`` into its linearized counterpart, in place.

The teacher's modules are kept (no copy): q/k/v/o projections, q/k norms, RoPE, MLPs and
embeddings are shared by the converted model; only ``self_attn`` of the converted layers is
wrapped in :class:`~linearize.modeling_linearized.LinearizedAttention`. The model is checked
completely before anything is changed, so an unsupported model is never converted halfway.
"""

from __future__ import annotations

import torch
from torch import nn

from .attention_spec import AttentionSpec
from .errors import UnsupportedModelError
from .configuration_linearized import CONFIG_CLASSES, LINEAR_LAYER, SOFTMAX_LAYER, family_of
from .modeling_linearized import BASE_MODELS, MODEL_CLASSES, install_hybrid_attention

SUPPORTED_FAMILIES = tuple(BASE_MODELS)


def check_supported(model: nn.Module) -> str:
    """Return the model's family, or raise :class:`UnsupportedModelError` naming the supported ones."""
    family = family_of(model.config)
    base = BASE_MODELS.get(family)
    if base is None or not isinstance(model, base):
        name = type(model).__name__
        supported = ", ".join(cls.__name__ for cls in BASE_MODELS.values())
        raise UnsupportedModelError(
            f"cannot linearize {name} (model_type {model.config.model_type!r}); supported: {supported}"
        )
    return family


def linearize_model(
    model: nn.Module,
    attention: AttentionSpec,
    softmax_layers: list[int] | tuple[int, ...] = (),
    recipe: str | None = None,
    teacher: str | None = None,
    seed: int = 0,
) -> nn.Module:
    """Convert ``model`` in place and return it (now a ``Linearized*ForCausalLM``).

    ``softmax_layers`` keep the teacher's softmax attention (inter-layer hybrid); every other
    layer gets the hybrid attention described by ``attention``. New parameters (gate projections)
    are initialised from ``seed`` without touching the global RNG, so a conversion is reproducible
    and every process of a distributed run builds the same model.
    """
    if getattr(model.config, "linearization", None) is not None:
        raise UnsupportedModelError(
            f"{type(model).__name__} is already linearized (recipe {model.config.linearization.get('recipe')!r}): "
            "give the teacher it was converted from"
        )
    family = check_supported(model)
    n_layers = model.config.num_hidden_layers
    bad = [i for i in softmax_layers if not 0 <= int(i) < n_layers]
    if bad:
        raise ValueError(f"softmax_layers: {bad} out of range for a model with {n_layers} layers (0..{n_layers - 1})")
    keep = set(int(i) for i in softmax_layers)
    config = model.config
    config.__class__ = CONFIG_CLASSES[family]
    config.__dict__.pop("model_type", None)
    config.linearization = {
        "attention": attention.to_dict(),
        "softmax_layers": sorted(keep),
        "layer_types": [SOFTMAX_LAYER if i in keep else LINEAR_LAYER for i in range(n_layers)],
        "recipe": recipe,
        "teacher": teacher,
    }
    model.__class__ = MODEL_CLASSES[family]
    config.architectures = [model.__class__.__name__]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        install_hybrid_attention(model)
    return model
