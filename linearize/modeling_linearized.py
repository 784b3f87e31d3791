"""Converted models: the teacher family's ``*ForCausalLM`` with hybrid attention in chosen layers.

``Linearized<Family>ForCausalLM`` subclasses the family's own class, so embeddings, norms, MLPs,
RoPE, masks, ``generate`` and ``save_pretrained``/``from_pretrained`` are the family's; only the
``self_attn`` of linearized layers is replaced by :class:`LinearizedAttention`, which reuses the
teacher's q/k/v/o projections (and q/k norms) and adds the variant's small modules.
This file is shipped with exported checkpoints: it imports only torch, transformers and the
sibling files ``attention_*``, ``cache_linearized`` and ``configuration_linearized``.

Fused kernels: on CUDA tensors the attention runs ``linearize``'s Triton kernels when the
installed ``linearize`` distribution provides a compatible kernel interface, and the shipped
PyTorch reference otherwise (:func:`find_installed_kernels` says which, and why; one warning
per process when the reference is used for that reason). Nothing is looked up when this file
is imported and nothing on CPU, so loading a checkpoint never executes a ``linearize`` package
that merely happens to be on ``sys.path`` (e.g. a stray ``./linearize/`` in the working directory).
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import json
import os
import warnings
from pathlib import Path
from urllib.parse import unquote, urlsplit

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
from .configuration_linearized import (
    CONFIG_CLASSES,
    LinearizationConfigError,
    check_linearization,
    config_location,
    linear_layer_indices,
)

FORCE_REFERENCE_ENV = "LINEARIZE_FORCE_REFERENCE"
# The interface of ``linearize.kernels.hybrid_attention_kernel`` this file calls (argument order, state
# layout). The installed kernels are used only when they declare exactly this ``KERNEL_INTERFACE_VERSION``.
KERNEL_INTERFACE_VERSION = 1
KERNEL_PACKAGE = "linearize"
_kernel_lookup: tuple | None = None  # (kernel or None, reason or None), once per process


def reference_forced() -> bool:
    """``LINEARIZE_FORCE_REFERENCE=1``: CUDA tensors take the PyTorch reference instead of the kernels."""
    return os.environ.get(FORCE_REFERENCE_ENV, "0") == "1"


def _editable_project(dist) -> Path | None:
    """The project directory of an editable (``pip install -e``) install, from PEP 610's direct_url.json."""
    try:
        info = json.loads(dist.read_text("direct_url.json") or "{}")
    except (OSError, ValueError):
        return None
    url = info.get("url", "")
    if not (info.get("dir_info") or {}).get("editable") or not url.startswith("file://"):
        return None
    return Path(unquote(urlsplit(url).path)).resolve()


def _is_installed_package(origin: Path, dist) -> bool:
    """Whether ``origin`` (the ``__init__.py`` Python would import) belongs to the distribution ``dist``.

    A regular install lists the file in its RECORD; an editable install points at its project
    directory, whose package is ``<project>/linearize`` or ``<project>/src/linearize``.
    """
    for file in dist.files or ():
        if file.name == origin.name and Path(dist.locate_file(file)).resolve() == origin:
            return True
    project = _editable_project(dist)
    if project is None:
        return False
    return origin.parent in (project / KERNEL_PACKAGE, project / "src" / KERNEL_PACKAGE)


def find_installed_kernels(required_version: int = KERNEL_INTERFACE_VERSION):
    """``(hybrid_attention_kernel, None)`` from the installed ``linearize``, or ``(None, reason)``.

    The kernels are used only if (a) the ``linearize`` that Python would import is the installed
    distribution (its files, or the project of an editable install), so a stray ``linearize/``
    directory on ``sys.path`` is never imported, and (b) ``linearize.kernels`` declares
    ``KERNEL_INTERFACE_VERSION == required_version``. Nothing else is imported to decide.
    """
    try:
        dist = importlib.metadata.distribution(KERNEL_PACKAGE)
    except importlib.metadata.PackageNotFoundError:
        return None, "the linearize package is not installed"
    try:
        spec = importlib.util.find_spec(KERNEL_PACKAGE)
    except (ImportError, ValueError) as err:
        return None, f"the linearize package cannot be located ({err})"
    if spec is None or not spec.origin:
        return None, "the linearize package cannot be located"
    origin = Path(spec.origin).resolve()
    if not _is_installed_package(origin, dist):
        return None, (
            f"the linearize package Python would import ({origin.parent}) is not the installed distribution "
            f"linearize {dist.version}"
        )
    try:
        kernels = importlib.import_module(f"{KERNEL_PACKAGE}.kernels")
    except Exception as err:  # noqa: BLE001 - any import problem means "use the reference"
        return None, f"linearize.kernels cannot be imported ({type(err).__name__}: {err})"
    version = getattr(kernels, "KERNEL_INTERFACE_VERSION", None)
    if version != required_version:
        return None, (
            f"the installed linearize {dist.version} has kernel interface version {version}, "
            f"this checkpoint's code needs {required_version}"
        )
    kernel = getattr(kernels, "hybrid_attention_kernel", None)
    if not callable(kernel):
        return None, "linearize.kernels has no hybrid_attention_kernel"
    return kernel, None


def installed_kernel():
    """The kernel function for CUDA tensors, looked up once per process; None means "run the reference".

    The first time the reference is chosen for lack of usable kernels, one warning says why.
    """
    global _kernel_lookup
    if _kernel_lookup is None:
        _kernel_lookup = find_installed_kernels()
        kernel, reason = _kernel_lookup
        if kernel is None:
            warnings.warn(
                f"linearized attention: running the PyTorch reference on the GPU, not the fused kernels: {reason}",
                RuntimeWarning,
                stacklevel=3,
            )
    return _kernel_lookup[0]


def hybrid_attention_kernel(core, q_raw, k_raw, v, cos, sin, hidden, scale, key_valid, softcap, state):
    """The installed kernels' ``hybrid_attention_kernel`` (see :func:`installed_kernel`)."""
    kernel = installed_kernel()
    if kernel is None:
        raise RuntimeError(f"no usable linearize kernels: {_kernel_lookup[1]}")
    return kernel(core, q_raw, k_raw, v, cos, sin, hidden, scale, key_valid, softcap, state)


PADDING_MASK_KWARG = "linear_padding_mask"
ATTENTION_MODES = ("hybrid", "teacher", "transfer")


class LinearizedAttention(nn.Module):
    """Drop-in replacement of a teacher attention module (same forward signature and outputs).

    ``attention_mode`` selects what the layer computes:
    * ``"hybrid"`` (default): the linearized attention;
    * ``"teacher"``: the teacher's own softmax attention with the same weights (distillation targets);
    * ``"transfer"``: both; stores the MSE between them in ``self.transfer_loss`` (and the teacher output's
      mean square in ``self.transfer_target_power``) and passes the
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
        self.transfer_target_power: torch.Tensor | None = None  # mean square of the teacher's output

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
        return q.is_cuda and not reference_forced() and installed_kernel() is not None

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
                power = target.detach().float() ** 2  # for the error relative to the target's size
                if key_valid is not None:
                    diff = diff * key_valid[:, None, :, None]
                    count = (key_valid.sum() * diff.shape[1] * diff.shape[-1]).clamp(min=1)
                    self.transfer_loss = diff.sum() / count
                    self.transfer_target_power = (power * key_valid[:, None, :, None]).sum() / count
                else:
                    self.transfer_loss = diff.mean()
                    self.transfer_target_power = power.mean()
                out = target
        out = out.transpose(1, 2).reshape(B, T, -1)
        return self.o_proj(out), None


def install_hybrid_attention(model: nn.Module) -> None:
    """Replace ``self_attn`` of every linearized layer of ``model`` (per ``config.linearization``)."""
    config = model.config
    lin = check_linearization(config)
    try:
        spec = AttentionSpec.from_dict(lin["attention"])
    except (TypeError, ValueError) as err:
        raise LinearizationConfigError(f"{config_location(config)}: linearization.{err}") from None
    layers = model.model.layers
    for idx in linear_layer_indices(config):
        layer = layers[idx]
        if not isinstance(layer.self_attn, LinearizedAttention):
            layer.self_attn = LinearizedAttention(layer.self_attn, spec, config, idx)


class LinearizedMixin:
    """What converted models add to their family's ``*ForCausalLM``."""

    def __init__(self, config, *args, **kwargs):
        check_linearization(config)  # before the (possibly large) model is built
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
