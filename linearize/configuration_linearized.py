"""Config classes of converted models: the teacher family's config plus the linearization.

Each supported family gets ``Linearized<Family>Config`` (``model_type = "linearized_<family>"``),
a subclass of the teacher's config class, so every field the family's modeling code reads is
still there. The linearization is recorded in ``config.linearization``::

    {"attention": {...AttentionSpec...}, "softmax_layers": [..], "layer_types": [..],
     "recipe": "liger-gla", "teacher": "HuggingFaceTB/SmolLM2-135M-Instruct"}

``layer_types`` here is ours ("linear_hybrid" or "softmax" per layer). The family's own
``config.layer_types`` (full/sliding attention, used by its masks and RoPE) is left untouched.
This file is shipped with exported checkpoints: it imports only transformers.
"""

from __future__ import annotations

from transformers import Gemma2Config, Gemma3TextConfig, LlamaConfig, MistralConfig, Qwen2Config, Qwen3Config

LINEAR_LAYER = "linear_hybrid"
SOFTMAX_LAYER = "softmax"

BASE_CONFIGS = {
    "llama": LlamaConfig,
    "mistral": MistralConfig,
    "qwen2": Qwen2Config,
    "qwen3": Qwen3Config,
    "gemma2": Gemma2Config,
    "gemma3_text": Gemma3TextConfig,
}


def _config_class(family: str, base: type) -> type:
    name = "Linearized" + base.__name__
    return type(
        name,
        (base,),
        {
            "model_type": f"linearized_{family}",
            "__module__": __name__,
            "__doc__": f"{base.__name__} of a model whose attention was linearized (see ``linearization``).",
        },
    )


CONFIG_CLASSES = {family: _config_class(family, base) for family, base in BASE_CONFIGS.items()}
globals().update({cls.__name__: cls for cls in CONFIG_CLASSES.values()})

LinearizedLlamaConfig = CONFIG_CLASSES["llama"]
LinearizedMistralConfig = CONFIG_CLASSES["mistral"]
LinearizedQwen2Config = CONFIG_CLASSES["qwen2"]
LinearizedQwen3Config = CONFIG_CLASSES["qwen3"]
LinearizedGemma2Config = CONFIG_CLASSES["gemma2"]
LinearizedGemma3TextConfig = CONFIG_CLASSES["gemma3_text"]


def family_of(config) -> str:
    """The teacher family of a teacher or converted config ('llama', 'qwen3', ...)."""
    model_type = config.model_type
    return model_type[len("linearized_"):] if model_type.startswith("linearized_") else model_type


def is_linearized_config(config) -> bool:
    return getattr(config, "linearization", None) is not None and config.model_type.startswith("linearized_")


def linear_layer_indices(config) -> list[int]:
    """Indices of the layers that run hybrid attention."""
    return [i for i, kind in enumerate(config.linearization["layer_types"]) if kind == LINEAR_LAYER]
