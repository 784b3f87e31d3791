"""Recipes: typed, validated descriptions of a linearization method and its recovery training.

A recipe is a YAML file (shipped ones live in ``linearize/recipes/``; ``--recipe liger-gla``
finds them from any directory, and a path works too). Defaults live here, in the models, and
nowhere else. Unknown keys, wrong types and impossible values are errors that name the key
and the file.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, PositiveFloat, PositiveInt, ValidationError, field_validator, model_validator

from .attention_spec import AttentionSpec
from .errors import RecipeError


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


_SPEC = AttentionSpec()  # the attention defaults live in AttentionSpec


class AttentionSettings(_Strict):
    """What every linearized layer computes (SPEC §2); see :class:`AttentionSpec`."""

    branches: Literal["hybrid", "linear", "window"] = _SPEC.branches
    feature_map: Literal["softmax", "hedgehog"] = _SPEC.feature_map
    gate: Literal["key", "learned", "none"] = _SPEC.gate
    gate_scale: PositiveFloat = _SPEC.gate_scale
    normalize: bool = _SPEC.normalize
    window: int = _SPEC.window
    num_sinks: int = Field(_SPEC.num_sinks, ge=0)
    mix: Literal["average", "learned", "weighted-linear", "shared"] = _SPEC.mix
    linear_scale: Literal["none", "rsqrt-head-dim"] = _SPEC.linear_scale
    linear_weight_init: PositiveFloat = _SPEC.linear_weight_init
    window_factor_init: float = Field(_SPEC.window_factor_init, gt=0.0, lt=1.0)
    chunk_size: PositiveInt = _SPEC.chunk_size

    @model_validator(mode="after")
    def _check(self):
        try:
            self.to_spec()
        except ValueError as err:
            raise ValueError(str(err).removeprefix("attention.")) from None
        return self

    def to_spec(self) -> AttentionSpec:
        return AttentionSpec(**self.model_dump())


class LoraSettings(_Strict):
    """LoRA adapters of stage 2 (peft)."""

    rank: PositiveInt = 8
    alpha: PositiveFloat = 16.0
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    targets: list[str] = Field(default_factory=lambda: ["q_proj", "k_proj", "v_proj"], min_length=1)
    train_new_modules: bool = True


class TransferSettings(_Strict):
    """Stage 1, attention transfer: per-layer MSE to the teacher's attention output."""

    lr: PositiveFloat = 1e-3
    tokens: PositiveInt = 20_000_000
    seq_len: PositiveInt = 1024
    batch_size: PositiveInt = 8
    loss_scale: PositiveFloat = 1.0
    warmup_ratio: float = Field(0.1, ge=0.0, lt=1.0)
    grad_clip: PositiveFloat = 1.0
    micro_batch_size: PositiveInt | None = None  # per device and step; None: the whole batch on CPU, up to 8 on GPU
    checkpoint_every: int = Field(50, ge=0)  # optimizer steps between checkpoints (0: only at the end)
    log_every: PositiveInt = 1  # optimizer steps between lines in metrics.jsonl
    eval_every: int = Field(0, ge=0)  # optimizer steps between validation passes (0: before and after only)
    activation_checkpointing: bool = False  # recompute each decoder layer in the backward: less memory, ~30% slower


class RecoverySettings(_Strict):
    """Stage 2, recovery: LoRA with next-token CE, KL distillation to the teacher, or a mix."""

    lr: PositiveFloat = 1e-3
    tokens: PositiveInt = 20_000_000
    seq_len: PositiveInt = 1024
    batch_size: PositiveInt = 8
    warmup_ratio: float = Field(0.0, ge=0.0, lt=1.0)
    schedule: Literal["cosine", "constant"] = "cosine"
    grad_clip: PositiveFloat = 1.0
    weight_decay: float = Field(0.0, ge=0.0)
    loss: Literal["ce", "kd", "mix"] = "ce"
    kd_weight: float = Field(0.5, ge=0.0, le=1.0)
    kd_temperature: PositiveFloat = 1.0
    lora: LoraSettings = Field(default_factory=LoraSettings)
    micro_batch_size: PositiveInt | None = None  # per device and step; None: the whole batch on CPU, up to 8 on GPU
    checkpoint_every: int = Field(50, ge=0)  # optimizer steps between checkpoints (0: only at the end)
    log_every: PositiveInt = 1  # optimizer steps between lines in metrics.jsonl
    eval_every: int = Field(0, ge=0)  # optimizer steps between validation passes (0: before and after only)
    activation_checkpointing: bool = False  # recompute each decoder layer in the backward: less memory, ~30% slower


class DataSettings(_Strict):
    """Training data: a Hugging Face dataset id or local .txt/.jsonl/.parquet files."""

    dataset: str = "yahma/alpaca-cleaned"
    template: Literal["alpaca", "text"] = "alpaca"
    validation_fraction: float = Field(0.02, gt=0.0, lt=0.5)
    max_samples: PositiveInt | None = None


class BudgetOverrides(_Strict):
    """Stage settings a recipe sets for one budget, on top of the budget's sizes (only the keys given;
    a nested key such as ``lora`` is replaced whole)."""

    transfer: dict[str, Any] = Field(default_factory=dict)
    recovery: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _check(self):
        for stage, model in (("transfer", TransferSettings), ("recovery", RecoverySettings)):
            try:
                model.model_validate({**model().model_dump(), **getattr(self, stage)})
            except ValidationError as err:
                first = err.errors()[0]
                key = ".".join(str(p) for p in first["loc"])
                msg = first["msg"].removeprefix("Value error, ")
                msg = "unknown key" if first["type"] == "extra_forbidden" else msg
                raise ValueError(f"{stage}.{key}: {msg}") from None
        return self

    def apply(self, stage: str, settings: TransferSettings | RecoverySettings, base: dict | None = None):
        """``settings`` with ``base`` (the budget's sizes) and then this recipe's keys for ``stage``."""
        change = {**(base or {}), **getattr(self, stage)}
        if not change:
            return settings
        return type(settings).model_validate({**settings.model_dump(), **change})


class AutoSoftmaxLayers(_Strict):
    """Keep softmax attention in the layers whose linearized attention matches the teacher's worst, measured
    after stage 1 (``softmax_layers: {auto: 2}`` keeps two layers, ``{auto: 0.1}`` a tenth of them)."""

    auto: PositiveFloat

    @field_validator("auto")
    @classmethod
    def _whole_or_fraction(cls, value: float) -> float:
        if value >= 1 and value != int(value):
            raise ValueError(f"a count of layers (a whole number) or a fraction below 1, got {value}")
        return value

    def count(self, num_layers: int) -> int:
        """How many of ``num_layers`` layers keep softmax attention (at least one, never all)."""
        n = round(self.auto * num_layers) if self.auto < 1 else int(self.auto)
        return max(1, min(n, num_layers - 1))


class Recipe(_Strict):
    """One linearization method end to end."""

    name: str
    description: str = ""
    attention: AttentionSettings = Field(default_factory=AttentionSettings)
    softmax_layers: list[int] | AutoSoftmaxLayers = Field(default_factory=list)
    transfer: TransferSettings | None = None
    recovery: RecoverySettings = Field(default_factory=RecoverySettings)
    data: DataSettings = Field(default_factory=DataSettings)
    # What the recipe changes for the CPU demo budget (e.g. a learning rate measured at 65k tokens).
    demo: BudgetOverrides = Field(default_factory=BudgetOverrides)
    seed: int = 0

    @field_validator("softmax_layers", mode="before")
    @classmethod
    def _auto_needs_a_size(cls, value):
        if value == "auto":
            raise ValueError("give auto a count or a fraction of the layers: {auto: 2} or {auto: 0.1}")
        return value

    @field_validator("softmax_layers")
    @classmethod
    def _check_layers(cls, layers):
        if isinstance(layers, AutoSoftmaxLayers):
            return layers
        negative = [i for i in layers if i < 0]
        if negative:
            raise ValueError(f"negative layer index {negative}")
        if len(set(layers)) != len(layers):
            raise ValueError("duplicate layer index")
        return layers

    @property
    def fixed_softmax_layers(self) -> list[int]:
        """The layers the conversion keeps as softmax (none yet for ``auto``: chosen after stage 1)."""
        return [] if isinstance(self.softmax_layers, AutoSoftmaxLayers) else list(self.softmax_layers)

    @property
    def auto_softmax_layers(self) -> AutoSoftmaxLayers | None:
        return self.softmax_layers if isinstance(self.softmax_layers, AutoSoftmaxLayers) else None

    def check_model(self, num_layers: int, source: str | Path | None = None) -> None:
        """Raise :class:`RecipeError` if the recipe names a layer the model does not have."""
        if self.auto_softmax_layers is not None and num_layers < 2:
            where = f"{source}: " if source else ""
            raise RecipeError(f"{where}softmax_layers: auto needs a model of at least 2 layers")
        beyond = [i for i in self.fixed_softmax_layers if i >= num_layers]
        if beyond:
            where = f"{source}: " if source else ""
            raise RecipeError(
                f"{where}softmax_layers: layer {beyond} beyond the model's depth ({num_layers} layers, 0..{num_layers - 1})"
            )


def shipped_recipes() -> dict[str, Path]:
    """Names and paths of the recipes shipped with the package."""
    folder = resources.files("linearize") / "recipes"
    return {Path(p.name).stem: Path(str(p)) for p in folder.iterdir() if p.name.endswith(".yaml")}


def resolve_recipe_path(name_or_path: str | Path) -> Path:
    """A shipped recipe name (``liger-gla``) or a path to a YAML file."""
    candidate = Path(name_or_path).expanduser()
    if candidate.suffix in (".yaml", ".yml") or candidate.exists() or "/" in str(name_or_path):
        if not candidate.is_file():
            raise RecipeError(f"recipe file not found: {candidate}")
        return candidate
    shipped = shipped_recipes()
    if str(name_or_path) not in shipped:
        raise RecipeError(f"unknown recipe {name_or_path!r}; shipped recipes: {', '.join(sorted(shipped))} (or give a path)")
    return shipped[str(name_or_path)]


def _format_errors(path: Path, err: ValidationError) -> str:
    lines = []
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"])
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            msg = "unknown key"
        lines.append(f"{key}: {msg}" if key else msg)
    return f"{path}: " + "; ".join(lines)


def load_recipe(name_or_path: str | Path) -> Recipe:
    """Load and validate a recipe; errors name the file and the key."""
    path = resolve_recipe_path(name_or_path)
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise RecipeError(f"{path}: not valid YAML: {' '.join(str(err).split())}") from None
    if not isinstance(data, dict):
        raise RecipeError(f"{path}: a recipe is a mapping of keys to values")
    data.setdefault("name", path.stem)
    try:
        recipe = Recipe.model_validate(data)
    except ValidationError as err:
        raise RecipeError(_format_errors(path, err)) from None
    object.__setattr__(recipe, "_source", path)
    return recipe


def recipe_source(recipe: Recipe) -> Path | None:
    return getattr(recipe, "_source", None)
