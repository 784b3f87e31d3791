"""Decoding cache of converted models: constant memory per linearized layer.

A linearized layer keeps its recurrent state (fp32, ``F x Dv`` per key/value head) plus a
sliding-window buffer of exactly ``window`` rotated keys/values and their validity; its size is
fixed from the first token on. Layers that stay softmax (inter-layer hybrids) keep the usual
transformers KV layer of their family (full or sliding). The cache is a ``transformers.Cache``,
so ``generate()``, beam reordering and batched left-padded generation work unchanged.
This file is shipped with exported checkpoints: it imports only torch and transformers.
"""

from __future__ import annotations

import torch
from transformers.cache_utils import Cache, CacheLayerMixin, DynamicCache

from .configuration_linearized import LINEAR_LAYER, check_linearization


class HybridStateLayer(CacheLayerMixin):
    """State of one linearized layer: a dict of fixed-size tensors and the number of tokens seen."""

    is_sliding = False
    is_compileable = False
    is_croppable = False

    def __init__(self, **kwargs):
        super().__init__()
        self.state: dict[str, torch.Tensor] | None = None
        self.seen_tokens = 0

    def lazy_initialization(self, key_states=None, value_states=None) -> None:
        self.is_initialized = True

    def update(self, key_states, value_states, *args, **kwargs):
        raise TypeError("a linearized layer's cache is updated through set_state(), not update()")

    def set_state(self, state: dict[str, torch.Tensor], num_new_tokens: int) -> None:
        self.state = state
        self.seen_tokens += num_new_tokens
        self.is_initialized = True

    def get_seq_length(self) -> int:
        return self.seen_tokens

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.seen_tokens + query_length, 0

    def get_max_length(self) -> int:
        return -1

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.state or {}).values())

    def _map(self, fn) -> None:
        if self.state is not None:
            self.state = {name: fn(t) for name, t in self.state.items()}

    def offload(self):
        self._map(lambda t: t.to("cpu", non_blocking=True))

    def prefetch(self):
        pass

    def reset(self) -> None:
        self.state = None
        self.seen_tokens = 0

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        self._map(lambda t: t.index_select(0, beam_idx.to(t.device)))

    def batch_repeat_interleave(self, repeats: int) -> None:
        self._map(lambda t: t.repeat_interleave(repeats, dim=0))

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        self._map(lambda t: t[indices, ...])

    def crop(self, max_length: int) -> None:
        raise NotImplementedError("a recurrent state cannot be cropped back to an earlier length")


class LinearizedCache(Cache):
    """Per layer: :class:`HybridStateLayer` for linearized layers, the family's KV layer otherwise."""

    def __init__(self, config):
        kv_layers = DynamicCache(config=config.get_text_config(decoder=True)).layers
        layer_types = check_linearization(config)["layer_types"]  # known types only, one per layer
        layers = [
            HybridStateLayer() if kind == LINEAR_LAYER else kv_layers[i] for i, kind in enumerate(layer_types)
        ]
        super().__init__(layers=layers)

    def get_state(self, layer_idx: int) -> dict[str, torch.Tensor] | None:
        return self.layers[layer_idx].state

    def set_state(self, layer_idx: int, state: dict[str, torch.Tensor], num_new_tokens: int) -> None:
        self.layers[layer_idx].set_state(state, num_new_tokens)

    def nbytes(self) -> int:
        """Bytes held by all cache tensors (states, window buffers and softmax KV)."""
        total = 0
        for layer in self.layers:
            if isinstance(layer, HybridStateLayer):
                total += layer.nbytes()
            elif getattr(layer, "keys", None) is not None:
                total += sum(t.numel() * t.element_size() for t in (layer.keys, layer.values))
        return total
