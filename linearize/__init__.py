"""linearize: turn a pretrained Hugging Face LLM's softmax attention into gated linear +
sliding-window attention, recover it with cheap training, evaluate it and publish it.

Importing the package registers the converted models' config and model classes with
``AutoConfig`` / ``AutoModelForCausalLM``, so saved conversions load without remote code.
"""

from transformers import AutoConfig, AutoModelForCausalLM

from .attention_variants import AttentionSpec
from .configuration_linearized import CONFIG_CLASSES
from .modeling_linearized import MODEL_CLASSES
from .surgery import SUPPORTED_FAMILIES, UnsupportedModelError, linearize_model

__version__ = "0.1.0"

for _family, _config_cls in CONFIG_CLASSES.items():
    AutoConfig.register(_config_cls.model_type, _config_cls, exist_ok=True)
    AutoModelForCausalLM.register(_config_cls, MODEL_CLASSES[_family], exist_ok=True)

__all__ = ["AttentionSpec", "SUPPORTED_FAMILIES", "UnsupportedModelError", "linearize_model", "__version__"]
