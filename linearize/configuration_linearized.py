"""Config classes of converted models: the teacher family's config plus the linearization.

Each supported family gets ``Linearized<Family>Config`` (``model_type = "linearized_<family>"``),
a subclass of the teacher's config class, so every field the family's modeling code reads is
still there. The linearization is recorded in ``config.linearization``::

    {"attention": {...AttentionSpec...}, "softmax_layers": [..], "layer_types": [..],
     "recipe": "liger-gla", "teacher": "HuggingFaceTB/SmolLM2-135M-Instruct"}

``layer_types`` here is ours ("linear_hybrid" or "softmax" per layer). The family's own
``config.layer_types`` (full/sliding attention, used by its masks and RoPE) is left untouched.
A model is only built from a config that passes :func:`check_linearization`: an unknown layer
type or a missing ``linearization`` block raises :class:`LinearizationConfigError` instead of
silently building a different model.
This file is shipped with exported checkpoints: it imports only transformers.
"""

from __future__ import annotations

from transformers import Gemma2Config, Gemma3TextConfig, LlamaConfig, MistralConfig, Qwen2Config, Qwen3Config

LINEAR_LAYER = "linear_hybrid"
SOFTMAX_LAYER = "softmax"
LAYER_TYPES = (LINEAR_LAYER, SOFTMAX_LAYER)


class LinearizationConfigError(ValueError):
    """A converted model's config whose ``linearization`` is missing or names something unknown.

    A ``ValueError`` (this file is shipped with checkpoints and cannot depend on ``linearize``'s
    own error classes); the message names the config, and the offending value and position.
    """


# The errors of this file that mean "a bad checkpoint" (the CLI reports them as one ``error:`` line).
CHECKPOINT_ERRORS = ("LinearizationConfigError",)

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


def config_location(config) -> str:
    """How errors name ``config``: the checkpoint's config.json where it was loaded from one."""
    source = getattr(config, "name_or_path", None) or ""
    return f"{source.rstrip('/')}/config.json" if source else f"the {type(config).__name__}"


def check_linearization(config) -> dict:
    """``config.linearization``, checked: a dict whose ``layer_types`` has one known type per layer.

    Raises :class:`LinearizationConfigError` naming the config and, for a bad layer type, its
    value, its layer index and the known types.
    """
    where = config_location(config)
    lin = getattr(config, "linearization", None)
    if not isinstance(lin, dict):
        what = "has no 'linearization' block" if lin is None else f"has a 'linearization' that is no mapping ({lin!r})"
        raise LinearizationConfigError(
            f"{where}: the converted model's config (model_type {config.model_type!r}) {what}; "
            "it records which layers are linearized and how, and cannot be guessed"
        )
    layer_types = lin.get("layer_types")
    if not isinstance(layer_types, (list, tuple)):
        raise LinearizationConfigError(f"{where}: linearization.layer_types must be a list, got {layer_types!r}")
    for index, kind in enumerate(layer_types):
        if kind not in LAYER_TYPES:
            raise LinearizationConfigError(
                f"{where}: linearization.layer_types[{index}] is {kind!r}, not a known layer type "
                f"({', '.join(LAYER_TYPES)})"
            )
    n_layers = getattr(config, "num_hidden_layers", None)
    if n_layers is not None and len(layer_types) != n_layers:
        raise LinearizationConfigError(
            f"{where}: linearization.layer_types names {len(layer_types)} layers, the model has {n_layers}"
        )
    if not isinstance(lin.get("attention"), dict):
        raise LinearizationConfigError(f"{where}: linearization.attention is no mapping: {lin.get('attention')!r}")
    return lin


def linear_layer_indices(config) -> list[int]:
    """Indices of the layers that run hybrid attention."""
    return [i for i, kind in enumerate(check_linearization(config)["layer_types"]) if kind == LINEAR_LAYER]
