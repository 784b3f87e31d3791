"""Register the converted models' config and model classes with transformers' Auto factories.

After :func:`register_auto_classes`, ``AutoConfig`` / ``AutoModelForCausalLM.from_pretrained(DIR)``
load a saved conversion without remote code. ``import linearize`` calls it; the ``linearize``
command calls it when it first loads a model, so that ``linearize --help`` needs no torch.
"""

from __future__ import annotations

_registered = False


def register_auto_classes() -> None:
    """Idempotent: every ``Linearized<Family>Config`` / ``Linearized<Family>ForCausalLM`` pair."""
    global _registered
    if _registered:
        return
    from transformers import AutoConfig, AutoModelForCausalLM

    from .configuration_linearized import CONFIG_CLASSES
    from .modeling_linearized import MODEL_CLASSES

    for family, config_cls in CONFIG_CLASSES.items():
        AutoConfig.register(config_cls.model_type, config_cls, exist_ok=True)
        AutoModelForCausalLM.register(config_cls, MODEL_CLASSES[family], exist_ok=True)
    _registered = True
