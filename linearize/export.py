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

Nothing appears at ``out_dir`` unless everything was written.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

from .atomic import atomic_directory
from .configuration_linearized import is_linearized_config

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
) -> Path:
    """Write weights (safetensors), config, generation config, tokenizer, code and card to ``out_dir``.

    ``report`` (numbers measured by the pipeline) is stored as ``linearize_report.json``.
    ``eval_results`` is an optional lm-eval results JSON or markdown table (or a directory holding
    them) for the model card; results produced later are added with
    :func:`linearize.model_card.write_model_card`. A peft-wrapped model is merged first.
    """
    model = merge_adapters(model)
    check_no_adapters(model)
    linearized = is_linearized_config(model.config)
    with atomic_directory(out_dir) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
            clean_tokenizer_config(tmp)
        ensure_generation_config(model, tmp)
        if linearized:
            ship_modeling_code(model, tmp)
        if report is not None:
            (tmp / REPORT_FILE).write_text(json.dumps(report, indent=2) + "\n")
        check_safetensors_only(tmp)
        if linearized and model_card:
            from .model_card import write_model_card

            write_model_card(tmp, eval_results=eval_results, name=Path(out_dir).name)
    return Path(out_dir).expanduser().resolve()


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
