"""What a linearized layer computes: :class:`AttentionSpec`, stored in a converted model's config.

Plain data with validation, no torch: recipes and the command line read it without loading the
numeric libraries. This file is shipped with exported checkpoints.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

FEATURE_MAPS = ("softmax", "hedgehog")
GATES = ("key", "learned", "none")
BRANCHES = ("hybrid", "linear", "window")
MIXES = ("average", "learned", "weighted-linear", "shared")
LINEAR_SCALES = ("none", "rsqrt-head-dim")


@dataclass(frozen=True)
class AttentionSpec:
    """What a linearized layer computes. Stored in the converted model's config."""

    branches: str = "hybrid"
    feature_map: str = "softmax"
    gate: str = "key"
    gate_scale: float = 16.0
    normalize: bool = False
    window: int = 64
    num_sinks: int = 0
    mix: str = "average"
    linear_scale: str = "none"
    linear_weight_init: float = 0.1
    window_factor_init: float = 0.1
    chunk_size: int = 16
    eps: float = 1e-6

    def __post_init__(self):
        def choice(name, value, options):
            if value not in options:
                raise ValueError(f"attention.{name}: {value!r} is not one of {', '.join(options)}")

        choice("branches", self.branches, BRANCHES)
        choice("feature_map", self.feature_map, FEATURE_MAPS)
        choice("gate", self.gate, GATES)
        choice("mix", self.mix, MIXES)
        choice("linear_scale", self.linear_scale, LINEAR_SCALES)
        if self.branches != "linear" and self.window <= 0:
            raise ValueError(f"attention.window: must be > 0 when the window branch is used, got {self.window}")
        if self.num_sinks < 0:
            raise ValueError(f"attention.num_sinks: must be >= 0, got {self.num_sinks}")
        if self.chunk_size <= 0:
            raise ValueError(f"attention.chunk_size: must be > 0, got {self.chunk_size}")
        if self.gate_scale <= 0:
            raise ValueError(f"attention.gate_scale: must be > 0, got {self.gate_scale}")
        if self.linear_weight_init <= 0:
            raise ValueError(f"attention.linear_weight_init: must be > 0, got {self.linear_weight_init}")
        if not 0.0 < self.window_factor_init < 1.0:
            raise ValueError(f"attention.window_factor_init: must be in (0, 1), got {self.window_factor_init}")
        if self.gate == "key" and self.feature_map != "softmax":
            raise ValueError("attention.gate: 'key' needs feature_map 'softmax' (one gate per key dimension)")
        if self.branches == "hybrid" and self.mix == "shared" and (self.gate != "none" or self.normalize):
            raise ValueError("attention.mix: 'shared' (LoLCATs) takes gate 'none' and normalize false")
        if self.branches == "hybrid" and self.mix == "shared" and self.linear_scale != "none":
            raise ValueError("attention.linear_scale: not defined for mix 'shared' (one normaliser for both parts)")
        if self.branches == "hybrid" and self.mix == "shared" and self.num_sinks:
            raise ValueError("attention.num_sinks: sinks are not defined for mix 'shared'")

    @property
    def has_linear(self) -> bool:
        return self.branches != "window"

    @property
    def has_window(self) -> bool:
        return self.branches != "linear"

    def linear_factor(self, head_dim: int) -> float:
        """The constant the linear branch's output is multiplied by (``linear_scale``)."""
        return head_dim**-0.5 if self.linear_scale == "rsqrt-head-dim" else 1.0

    @property
    def shared(self) -> bool:
        return self.branches == "hybrid" and self.mix == "shared"

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "AttentionSpec":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})
