"""linearize: turn a pretrained Hugging Face LLM's softmax attention into gated linear +
sliding-window attention, recover it with cheap training, evaluate it and publish it.

Importing the package registers the converted models' config and model classes with
``AutoConfig`` / ``AutoModelForCausalLM``, so saved conversions load without remote code.
The ``linearize`` command is the exception: it registers them when it first loads a model,
so that ``linearize --help`` answers without importing torch. The public names below are
imported on first use.
"""

import importlib
import sys
from pathlib import Path

__version__ = "0.1.0"

_EXPORTS = {
    "AttentionSpec": "attention_spec",
    "SUPPORTED_FAMILIES": "surgery",
    "UnsupportedModelError": "errors",
    "LinearizeError": "errors",
    "linearize_model": "surgery",
    "register_auto_classes": "auto_classes",
}
__all__ = [*_EXPORTS, "__version__"]


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _started_as_command() -> bool:
    """True in the ``linearize`` console script (which registers the classes when it needs them)."""
    return bool(sys.argv) and Path(sys.argv[0]).name == "linearize"


if not _started_as_command():
    from .auto_classes import register_auto_classes as _register

    _register()
