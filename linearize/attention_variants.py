"""The hybrid attention of one layer: feature maps, gate, linear branch, window branch, mixing.

One module, configured by an :class:`AttentionSpec`, covers every variant of SPEC §2:

=========  ===========  =======  =========  ======  =====  =======
variant    feature map  gate     normalise  window  sinks  mix
=========  ===========  =======  =========  ======  =====  =======
liger-gla  softmax      key      yes        64      0      average
lizard     hedgehog     learned  yes        128     4      weighted-linear
lolcats    hedgehog     none     (shared)   64      0      shared
gla        any          any      any        0       0      (linear only)
swa        -            -        -          w       any    (window only)
=========  ===========  =======  =========  ======  =====  =======

(The published formulations: liger-gla-paper unnormalised, lizard-paper with mix ``learned``.)

It sees q/k/v after the teacher's projections (and q/k norms) in two versions: raw (for the
feature maps and the gate) and rotated (for the window branch), plus the layer's hidden states
(for a learned gate). It returns the per-head output before ``o_proj`` and, when asked,
the new decoding state. This file is shipped with exported checkpoints: it imports only torch.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .attention_reference import (
    add_sinks,
    gla_chunked,
    gla_recurrent,
    safe_divide,
    softmax_attention,
    window_attention_chunked,
    window_attention_step,
)
from .attention_spec import BRANCHES, FEATURE_MAPS, GATES, MIXES, AttentionSpec  # noqa: F401 (re-exported)

State = dict[str, torch.Tensor]


def _fp32(x: torch.Tensor) -> torch.Tensor:
    """Half precision goes up to fp32; fp32 and fp64 stay as they are."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


class HedgehogFeatureMap(nn.Module):
    """phi(x) = [softmax(x W), softmax(-x W)] per head, W in R^{D x D} initialised to identity."""

    def __init__(self, num_heads: int, head_dim: int):
        super().__init__()
        self.weight = nn.Parameter(torch.eye(head_dim).repeat(num_heads, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (B, heads, T, D)
        projected = torch.einsum("bhtd,hde->bhte", _fp32(x), self.weight.to(_fp32(x).dtype))
        return torch.cat([projected.softmax(dim=-1), (-projected).softmax(dim=-1)], dim=-1)


class HybridAttentionCore(nn.Module):
    """Learned parts and math of one linearized layer (projections stay in the teacher's module)."""

    def __init__(self, spec: AttentionSpec, hidden_size: int, num_heads: int, num_kv_heads: int, head_dim: int):
        super().__init__()
        self.spec = spec
        self.num_heads, self.num_kv_heads, self.head_dim = num_heads, num_kv_heads, head_dim
        self.groups = num_heads // num_kv_heads
        if spec.has_linear and spec.feature_map == "hedgehog":
            self.feature_map_q = HedgehogFeatureMap(num_heads, head_dim)
            self.feature_map_k = HedgehogFeatureMap(num_kv_heads, head_dim)
        if spec.has_linear and spec.gate == "learned":
            # gamma_t = sigmoid(x_t W + b) per key/value head; b = 3 starts with a retention of ~0.95.
            self.gate_proj = nn.Linear(hidden_size, num_kv_heads, bias=True)
            nn.init.normal_(self.gate_proj.weight, std=0.02)
            nn.init.constant_(self.gate_proj.bias, 3.0)
        if spec.has_window and spec.num_sinks:
            self.sinks = nn.Parameter(torch.zeros(num_heads, spec.num_sinks))
        if spec.branches == "hybrid" and spec.mix == "learned":  # o = o_lin + alpha * o_win, alpha = 1 at start
            self.mix_alpha = nn.Parameter(torch.ones(num_heads))
        if spec.branches == "hybrid" and spec.mix == "weighted-linear":  # o = a * o_lin + o_win, a small at start
            self.linear_weight = nn.Parameter(torch.full((num_heads,), float(spec.linear_weight_init)))
        if spec.shared:
            init = spec.window_factor_init
            self.window_factor = nn.Parameter(torch.full((num_heads,), math.log(init / (1 - init))))

    # ----- pieces -------------------------------------------------------------------------
    def feature_dim(self) -> int:
        return 2 * self.head_dim if self.spec.feature_map == "hedgehog" else self.head_dim

    def _features(self, q_raw: torch.Tensor, k_raw: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.spec.feature_map == "hedgehog":
            return self.feature_map_q(q_raw), self.feature_map_k(k_raw)
        return _fp32(q_raw).softmax(dim=-1), _fp32(k_raw).softmax(dim=-1)

    def _log_gate(self, k_raw: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor | None:
        if self.spec.gate == "key":
            return F.logsigmoid(_fp32(k_raw)) / self.spec.gate_scale
        if self.spec.gate == "learned":
            return F.logsigmoid(_fp32(self.gate_proj(hidden))).transpose(1, 2).unsqueeze(-1)
        return None

    def _per_head(self, param: torch.Tensor) -> torch.Tensor:
        return _fp32(param).view(self.num_kv_heads, self.groups, 1, 1)

    def _group(self, x: torch.Tensor) -> torch.Tensor:
        B, H, T, D = x.shape
        return x.view(B, self.num_kv_heads, H // self.num_kv_heads, T, D)

    def empty_state(self, batch: int, device, dtype) -> State:
        """Decoding state before any token: zero linear state, an all-invalid window."""
        spec, Hkv, D = self.spec, self.num_kv_heads, self.head_dim
        state: State = {}
        if spec.has_linear:
            dv = D + (1 if (spec.normalize or spec.shared) else 0)
            state["linear"] = torch.zeros(batch, Hkv, self.feature_dim(), dv, device=device, dtype=torch.float32)
        if spec.has_window:
            w = spec.window
            state["k"] = torch.zeros(batch, Hkv, w, D, device=device, dtype=dtype)
            state["v"] = torch.zeros(batch, Hkv, w, D, device=device, dtype=dtype)
            state["valid"] = torch.zeros(batch, w, device=device, dtype=torch.bool)
            if spec.shared:
                state["kfeat"] = torch.zeros(batch, Hkv, w, self.feature_dim(), device=device, dtype=torch.float32)
        return state

    # ----- forward -------------------------------------------------------------------------
    def forward(
        self,
        q_raw: torch.Tensor,
        k_raw: torch.Tensor,
        v: torch.Tensor,
        q_rope: torch.Tensor,
        k_rope: torch.Tensor,
        hidden: torch.Tensor,
        scale: float,
        key_valid: torch.Tensor | None = None,
        softcap: float | None = None,
        state: State | None = None,
        recurrent: bool = False,
    ) -> tuple[torch.Tensor, State | None]:
        """Hybrid attention output (B, H, T, D) and the updated state (None if ``state`` is None).

        q_raw/q_rope: (B, H, T, D); k_raw/k_rope/v: (B, Hkv, T, D); hidden: (B, T, hidden);
        key_valid: (B, T) bool, False at padding (padded keys reach no state and no window).
        ``recurrent`` runs the step-by-step form (same result as the chunked form).
        """
        B, H, T, D = q_raw.shape
        spec = self.spec
        qf = kf = g = None
        if spec.has_linear:
            qf, kf = self._features(q_raw, k_raw)
            g = self._log_gate(k_raw, hidden)
            if key_valid is not None:
                kf = kf * key_valid[:, None, :, None]
                if g is not None:
                    g = g * key_valid[:, None, :, None]
            qf = self._group(qf)
        qr = self._group(q_rope)
        track = state is not None
        if state is None and (recurrent or spec.shared):
            state = self.empty_state(B, q_raw.device, k_rope.dtype)
        runner = self._recurrent if recurrent else self._chunked
        out, new_state = runner(qf, kf, g, v, qr, k_rope, key_valid, scale, softcap, state)
        out = out.reshape(B, H, T, -1)
        if key_valid is not None:
            out = out * key_valid[:, None, :, None]
        return out.to(v.dtype), (new_state if track else None)

    def _value_for_linear(self, v: torch.Tensor) -> torch.Tensor:
        if self.spec.normalize or self.spec.shared:
            v = _fp32(v)
            return torch.cat([v, v.new_ones(*v.shape[:-1], 1)], dim=-1)
        return _fp32(v)

    def _finish(self, lin, win, sink_logits_max=None):
        """Combine linear output (num or num|den) and window partial sums into the output."""
        spec = self.spec
        o_lin = None
        if spec.has_linear and not spec.shared:
            o_lin = safe_divide(lin[..., :-1], lin[..., -1], spec.eps) if spec.normalize else lin
            factor = spec.linear_factor(self.head_dim)
            if factor != 1.0:
                o_lin = o_lin * factor
        if not spec.has_window:
            return o_lin
        num, den, m = win
        if spec.shared:
            gamma = torch.sigmoid(self._per_head(self.window_factor))
            if num.dim() == 4:  # single step: (B, Hkv, G, D)
                gamma = gamma[..., 0]
            return safe_divide(gamma * num + lin[..., :-1], gamma[..., 0] * den + lin[..., -1])
        if spec.num_sinks:
            sinks = self.sinks.view(self.num_kv_heads, self.groups, -1)
            num, den = add_sinks(den, m, sinks, num)
        o_win = safe_divide(num, den)
        if not spec.has_linear:
            return o_win
        if spec.mix == "average":
            return 0.5 * o_lin + 0.5 * o_win
        if spec.mix == "weighted-linear":
            weight = self._per_head(self.linear_weight)
            return (weight[..., 0] if o_win.dim() == 4 else weight) * o_lin + o_win
        alpha = self._per_head(self.mix_alpha)
        if o_win.dim() == 4:
            alpha = alpha[..., 0]
        return o_lin + alpha * o_win

    def _chunked(self, qf, kf, g, v, qr, kr, key_valid, scale, softcap, state):
        spec = self.spec
        B, T = v.shape[0], v.shape[2]
        new_state: State = {}
        lin = win = None
        if spec.has_window:
            if state is not None:
                w = spec.window
                k_all = torch.cat([state["k"], kr.to(state["k"].dtype)], dim=2)
                v_all = torch.cat([state["v"], v.to(state["v"].dtype)], dim=2)
                valid_new = key_valid if key_valid is not None else torch.ones(B, T, dtype=torch.bool, device=v.device)
                valid_all = torch.cat([state["valid"], valid_new.bool()], dim=1)
                new_state.update(k=k_all[:, :, -w:], v=v_all[:, :, -w:], valid=valid_all[:, -w:])
            else:
                k_all, v_all, valid_all = kr, v, key_valid
            win = window_attention_chunked(qr, k_all, v_all, spec.window, scale, valid_all, softcap)
        if spec.has_linear:
            v_lin = self._value_for_linear(v)
            if spec.shared:
                # Keys older than the window: the linear part sees the key sequence shifted by w.
                kf_all = torch.cat([state["kfeat"], kf], dim=2)
                v_all_lin = torch.cat([self._value_for_linear(state["v"]), v_lin], dim=2)
                v_all_lin = v_all_lin * torch.cat([state["valid"], key_valid if key_valid is not None
                                                   else torch.ones(B, T, dtype=torch.bool, device=v.device)],
                                                  dim=1)[:, None, :, None]
                kf_lin, v_lin = kf_all[:, :, :T], v_all_lin[:, :, :T]
                new_state["kfeat"] = kf_all[:, :, -spec.window:]
                g_lin = None
            else:
                kf_lin, g_lin = kf, g
            initial = state["linear"] if state is not None else None
            lin, final = gla_chunked(qf, kf_lin, v_lin, g_lin, initial, spec.chunk_size)
            new_state["linear"] = final
        return self._finish(lin, win), new_state

    def _recurrent(self, qf, kf, g, v, qr, kr, key_valid, scale, softcap, state):
        spec = self.spec
        B, T = v.shape[0], v.shape[2]
        state = dict(state)
        outputs = []
        for t in range(T):
            valid_t = key_valid[:, t].bool() if key_valid is not None else torch.ones(B, dtype=torch.bool, device=v.device)
            lin = win = None
            if spec.has_window:
                evicted_v, evicted_valid = state["v"][:, :, 0], state["valid"][:, 0]
                state["k"] = torch.cat([state["k"][:, :, 1:], kr[:, :, t : t + 1].to(state["k"].dtype)], dim=2)
                state["v"] = torch.cat([state["v"][:, :, 1:], v[:, :, t : t + 1].to(state["v"].dtype)], dim=2)
                state["valid"] = torch.cat([state["valid"][:, 1:], valid_t[:, None]], dim=1)
                win = window_attention_step(qr[:, :, :, t], state["k"], state["v"], state["valid"], scale, softcap)
            if spec.has_linear:
                if spec.shared:
                    k_in = state["kfeat"][:, :, :1]
                    v_in = self._value_for_linear(evicted_v[:, :, None]) * evicted_valid[:, None, None, None]
                    state["kfeat"] = torch.cat([state["kfeat"][:, :, 1:], kf[:, :, t : t + 1]], dim=2)
                    g_in = None
                else:
                    k_in, v_in = kf[:, :, t : t + 1], self._value_for_linear(v[:, :, t : t + 1])
                    g_in = g[:, :, t : t + 1] if g is not None else None
                o, state["linear"] = gla_recurrent(qf[:, :, :, t : t + 1], k_in, v_in, g_in, state["linear"])
                lin = o[:, :, :, 0]
            outputs.append(self._finish(lin, win))
        return torch.stack(outputs, dim=3), state

    def teacher_output(self, q_rope, k_rope, v, scale, key_valid=None, softcap=None, window=None):
        """The teacher's softmax attention on the same inputs (for attention transfer)."""
        B, H, T, D = q_rope.shape
        out = softmax_attention(self._group(q_rope), k_rope, v, scale, key_valid, softcap, window)
        return out.reshape(B, H, T, -1).to(v.dtype)
