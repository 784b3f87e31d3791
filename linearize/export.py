"""Save a converted model as a self-contained Hugging Face checkpoint, atomically.

A saved directory holds:

* ``model.safetensors`` (LoRA merged; no ``.bin``/adapter files), ``config.json``,
  ``generation_config.json`` and the tokenizer files;
* the modeling code of converted models (``modeling_linearized.py`` and the files it imports
  relatively: ``attention_variants.py``, ``attention_reference.py``, ``cache_linearized.py``,
  ``configuration_linearized.py``) with ``auto_map`` in ``config.json``, so
  ``AutoModelForCausalLM.from_pretrained(DIR, trust_remote_code=True)`` works where ``linearize``
  is not installed. Where it is installed, ``import linearize`` registers the classes and the
  checkpoint loads without remote code;
* ``linearize_report.json`` (numbers measured by the pipeline) when given;
* ``README.md``, the model card (:mod:`linearize.model_card`).

Nothing appears at ``out_dir`` unless everything was written. A checkpoint is meant to be
published, so it names no local path of the machine it was made on: the teacher and data recorded
in ``config.json``, the report and the card are Hub ids as given, and local paths reduced to their
last component (:func:`linearize.model_card.public_name`).
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import torch

from .atomic import atomic_directory
from .configuration_linearized import is_linearized_config
from .model_card import public_name, public_value

REPORT_FILE = "linearize_report.json"
AUTO_CLASSES = ("AutoConfig", "AutoModelForCausalLM")
# Files that must never be part of a published checkpoint (pickles, unmerged adapters).
FORBIDDEN_PATTERNS = ("*.bin", "*.pt", "*.pth", "*.pkl", "adapter_config.json", "adapter_model.*")
# How a tokenizer was loaded (e.g. from a local GGUF file), not what it is: dropped from tokenizer_config.json.
TOKENIZER_LOADER_KEYS = ("is_local", "local_files_only")


def save_model(
    model,
    tokenizer,
    out_dir: str | Path,
    report: dict | None = None,
    *,
    eval_results: str | Path | None = None,
    model_card: bool = True,
    dtype: torch.dtype | str | None = None,
    overwrite: bool = False,
) -> Path:
    """Write weights (safetensors), config, generation config, tokenizer, code and card to ``out_dir``.

    ``report`` (numbers measured by the pipeline) is stored as ``linearize_report.json``.
    ``eval_results`` is an optional lm-eval results JSON or markdown table (or a directory holding
    them) for the model card; results produced later are added with
    :func:`linearize.model_card.write_model_card`. A peft-wrapped model is merged first.
    ``dtype`` (e.g. ``torch.bfloat16`` or ``"bfloat16"``): store the floating-point weights in this
    dtype, and say so in ``config.json``; the model passed in is not changed (a cast copy of its
    weights is written). ``None`` stores them as they are in memory.
    """
    model = merge_adapters(model)
    check_no_adapters(model)
    linearized = is_linearized_config(model.config)
    dtype = resolve_dtype(dtype)
    with atomic_directory(out_dir, kind="model", overwrite=overwrite) as tmp:
        state_dict = cast_state_dict(model, dtype) if dtype is not None else None
        model.save_pretrained(tmp, safe_serialization=True, state_dict=state_dict)
        del state_dict
        if dtype is not None:
            set_config_dtype(tmp, dtype)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
            clean_tokenizer_config(tmp)
        ensure_generation_config(model, tmp)
        if linearized:
            ship_modeling_code(model, tmp)
        if report is not None:
            (tmp / REPORT_FILE).write_text(json.dumps(public_value(report), indent=2) + "\n")
        check_safetensors_only(tmp)
        if linearized and model_card:
            from .model_card import write_model_card

            # Written while config.json still names a local teacher by its path, so the card can take the
            # license from the teacher's own README; the card itself names it by its last component only.
            write_model_card(tmp, eval_results=eval_results, name=Path(out_dir).name)
        public_config(tmp)
    return Path(out_dir).expanduser().resolve()


def resolve_dtype(dtype: torch.dtype | str | None) -> torch.dtype | None:
    """``torch.bfloat16``, ``"bfloat16"`` or ``"torch.bfloat16"`` -> ``torch.bfloat16``; None stays None."""
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    value = getattr(torch, str(dtype).removeprefix("torch."), None)
    if not isinstance(value, torch.dtype) or not value.is_floating_point:
        raise ValueError(f"dtype: {dtype!r} is not a torch floating-point dtype (e.g. bfloat16, float16, float32)")
    return value


def cast_state_dict(model, dtype: torch.dtype) -> dict:
    """The model's state dict with floating-point tensors cast to ``dtype``; the model is not touched.

    Tensors that share storage (tied embeddings) stay shared, so the tied copy is still left out of
    the file; tensors already in ``dtype`` are not copied.
    """
    cast: dict = {}
    out = {}
    for name, tensor in model.state_dict().items():
        if not isinstance(tensor, torch.Tensor) or not tensor.is_floating_point() or tensor.dtype == dtype:
            out[name] = tensor
            continue
        storage = tensor.untyped_storage().data_ptr()
        key = (storage, tensor.storage_offset(), tuple(tensor.shape), tuple(tensor.stride()))
        if key not in cast:
            cast[key] = tensor.detach().to(dtype)
        out[name] = cast[key]
    return out


def set_config_dtype(directory: Path, dtype: torch.dtype) -> None:
    """Make ``config.json``'s dtype field (and the legacy ``torch_dtype``, where present) name ``dtype``."""
    path = directory / "config.json"
    config = json.loads(path.read_text())
    name = str(dtype).removeprefix("torch.")
    config["dtype"] = name
    if "torch_dtype" in config:
        config["torch_dtype"] = name
    path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def public_config(directory: Path) -> None:
    """Reduce local paths in ``config.json``'s ``linearization`` (teacher, recipe) to their last component."""
    path = directory / "config.json"
    config = json.loads(path.read_text())
    lin = config.get("linearization")
    if not isinstance(lin, dict):
        return
    public = {**lin, **{k: public_name(lin[k]) for k in ("teacher", "recipe") if isinstance(lin.get(k), str)}}
    if public != lin:
        config["linearization"] = public
        path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def merge_adapters(model):
    """Merge peft adapters (LoRA) into the base weights; other models are returned unchanged."""
    if type(model).__module__.split(".")[0] == "peft" and hasattr(model, "merge_and_unload"):
        model = model.merge_and_unload()
    return model


def check_no_adapters(model) -> None:
    """Refuse to save weights that still carry unmerged LoRA modules."""
    leftovers = [name for name, _ in model.named_parameters() if "lora_" in name]
    if leftovers:
        raise ValueError(
            f"the model still has {len(leftovers)} unmerged LoRA parameters (e.g. {leftovers[0]}): "
            "merge the adapters (peft merge_and_unload) before saving"
        )


def clean_tokenizer_config(directory: Path) -> None:
    path = directory / "tokenizer_config.json"
    if not path.is_file():
        return
    config = json.loads(path.read_text())
    if any(key in config for key in TOKENIZER_LOADER_KEYS):
        for key in TOKENIZER_LOADER_KEYS:
            config.pop(key, None)
        path.write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n")


def ensure_generation_config(model, directory: Path) -> None:
    """Write ``generation_config.json`` even when the model object carries none."""
    if (directory / "generation_config.json").is_file():
        return
    from transformers import GenerationConfig

    generation_config = getattr(model, "generation_config", None) or GenerationConfig.from_model_config(model.config)
    generation_config.save_pretrained(directory)


def shipped_code_files(model) -> list[Path]:
    """The source files a checkpoint of ``model`` needs for remote-code loading.

    The modeling module of the model's class (``linearize.modeling_linearized``, or the copy in the
    transformers module cache when the model itself was loaded with remote code) plus every file
    it imports relatively, recursively -- the same walk transformers does when loading.
    """
    from transformers.dynamic_module_utils import get_relative_import_files

    modeling_file = Path(sys.modules[type(model).__module__].__file__)
    files = [modeling_file] + [Path(f) for f in get_relative_import_files(modeling_file)]
    config_file = Path(sys.modules[type(model.config).__module__].__file__)
    if config_file.name not in {f.name for f in files}:
        files.append(config_file)
    return files


def auto_map(model) -> dict[str, str]:
    """``config.json`` ``auto_map`` entries pointing at the shipped modules."""
    config_module = type(model.config).__module__.rsplit(".", 1)[-1]
    model_module = type(model).__module__.rsplit(".", 1)[-1]
    return {
        "AutoConfig": f"{config_module}.{type(model.config).__name__}",
        "AutoModelForCausalLM": f"{model_module}.{type(model).__name__}",
    }


def ship_modeling_code(model, directory: Path) -> list[str]:
    """Copy the modeling code into ``directory`` and add ``auto_map`` to its ``config.json``.

    The in-memory config is left alone (no class-level ``register_for_auto_class`` either), so
    only checkpoints written by :func:`save_model` carry code.
    """
    names = []
    for source in shipped_code_files(model):
        shutil.copyfile(source, directory / source.name)
        names.append(source.name)
    config_path = directory / "config.json"
    config = json.loads(config_path.read_text())
    config["auto_map"] = {**config.get("auto_map", {}), **auto_map(model)}
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    return names


def check_safetensors_only(directory: Path) -> None:
    """A checkpoint holds safetensors weights and no pickles or adapter files."""
    found = sorted({p.name for pattern in FORBIDDEN_PATTERNS for p in directory.glob(pattern)})
    if found:
        raise ValueError(f"refusing to publish non-safetensors or adapter files: {', '.join(found)}")
    if not any(directory.glob("*.safetensors")):
        raise ValueError("no .safetensors weights were written")
