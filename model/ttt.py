"""The test-time-training (TTT) layer that "zips" all frames into fixed-size fast weights.

Follows LaCT (Zhang et al., "Test-Time Training Done Right", arXiv 2505.23884;
a1600012888/LaCT ``minimal_implementations/bidirectional_lact_layer.py``) as used by ZipMap
(arXiv 2603.04385, Sec. 3): the scene state is the weights ``W = (w0, w1, w2)`` of a SwiGLU MLP

    f_W(x) = (silu(x @ w0) * (x @ w2)) @ w1          w0, w2: [d, dh]   w1: [dh, d]

An *update* over a token range takes one step on the negative dot-product loss
``L = -sum_t lr_t <v_t, f_W(k_t)>`` (per-token, per-matrix learning rates), orthogonalises each
step with Newton-Schulz (Muon), adds it, and re-projects every column of each matrix back to its
norm before the update. An *apply* over a token range returns ``f_W(q_t)``. The order of updates
and applies is data, a list of :class:`TTTOp`, so the same function serves every mode:

- offline (bidirectional): ``[update(all), apply(all)]``
- streaming with windows of W frames: ``[update(w1), apply(w1), update(w2), apply(w2), ...]``
- state query: ``[update(image tokens), apply(image + query tokens)]``
- render from a stored state: ``[apply(all)]``

The maths lives in pure functions over ``[b, l, d]`` tensors (``b`` = batch x heads); the module
only projects, reshapes and calls them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from .layers.block import LayerScale, Mlp


class TTTOp(NamedTuple):
    """One step of the schedule over tokens ``[start, end)``; ``end = -1`` means to the last."""

    start: int
    end: int
    update: bool
    apply: bool


FastWeights = tuple[torch.Tensor, torch.Tensor, torch.Tensor]

# Quintic Newton-Schulz coefficients chosen to maximise the slope at zero (Keller Jordan's Muon;
# MoonshotAI/Moonlight). The iteration maps singular values into roughly [0.7, 1.2] in 5 steps.
NS_COEFFS = (3.4445, -4.7750, 2.0315)


def newton_schulz(g: torch.Tensor, steps: int, dtype: torch.dtype | None = torch.bfloat16) -> torch.Tensor:
    """Approximately orthogonalise each matrix of ``g`` ``[b, m, n]`` (``U S V^T -> U S' V^T``).

    The iteration runs in ``dtype`` (bfloat16 in the published model; ``None`` keeps ``g``'s
    dtype) and the result is returned in that dtype. Cost: ``steps * (4 m^2 n + 2 m^3)`` FLOPs per
    matrix with ``m = min(m, n)``. On CPU, where bfloat16 GEMMs are tens of times slower than
    float32 ones, bfloat16 is emulated: float32 arithmetic with every intermediate rounded to
    bfloat16, which is what a bf16 GEMM with float32 accumulation produces.
    """
    a, b, c = NS_COEFFS
    emulate = dtype == torch.bfloat16 and g.device.type == "cpu"
    if emulate:
        def r(t: torch.Tensor) -> torch.Tensor:
            return t.to(torch.bfloat16).float()

        x = r(g.float())
    else:
        def r(t: torch.Tensor) -> torch.Tensor:
            return t

        x = g.to(dtype) if dtype is not None else g
    tall = g.shape[-2] > g.shape[-1]
    if tall:  # iterate on the wide orientation so that X X^T is the small Gram matrix
        x = x.transpose(-1, -2)
    x = r(x / r(r(x.norm(dim=(-2, -1), keepdim=True)) + 1e-7))  # spectral norm <= Frobenius <= 1
    for _ in range(steps):
        gram = r(x @ x.transpose(-1, -2))
        x = r(r(a * x) + r(r(r(b * gram) + r(c * r(gram @ gram))) @ x))
    x = x.transpose(-1, -2) if tall else x
    return x.to(torch.bfloat16) if emulate else x


def swiglu_apply(w0: torch.Tensor, w1: torch.Tensor, w2: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``f_W(x) = (silu(x w0) * (x w2)) w1`` for ``x`` ``[b, l, d]`` -> ``[b, l, d]``."""
    return (F.silu(x @ w0) * (x @ w2)) @ w1


def swiglu_update_directions(
    w0: torch.Tensor,  # [b, d, dh]
    w1: torch.Tensor,  # [b, dh, d]
    w2: torch.Tensor,  # [b, d, dh]
    k: torch.Tensor,  # [b, l, d]
    v: torch.Tensor,  # [b, l, d]
    lr0: torch.Tensor,  # [b, l, 1]
    lr1: torch.Tensor,  # [b, l, 1]
    lr2: torch.Tensor,  # [b, l, 1]
) -> FastWeights:
    """Closed-form descent directions ``-dL_i/dw_i`` of ``L_i = -sum_t lr_i,t <v_t, f_W(k_t)>``.

    Returned in the layout of the weights: ``[b, d, dh]``, ``[b, dh, d]``, ``[b, d, dh]``.
    Cost: ``6 l d dh`` multiply-adds per matrix triple (three forward, three gradient GEMMs).
    """
    gate = k @ w0  # [b, l, dh]
    up = k @ w2  # [b, l, dh]
    act = F.silu(gate)
    hidden = act * up
    dhidden = v @ w1.transpose(-1, -2)  # [b, l, dh]  = dL/dhidden up to sign
    dup = dhidden * act
    sig = torch.sigmoid(gate)
    dgate = dhidden * up * sig * (1 + gate * (1 - sig))  # silu'(g) = s (1 + g (1 - s))
    d0 = (k * lr0).transpose(-1, -2) @ dgate
    d1 = (hidden * lr1).transpose(-1, -2) @ v
    d2 = (k * lr2).transpose(-1, -2) @ dup
    return d0, d1, d2


def ttt_schedule(
    w: FastWeights,
    q: torch.Tensor,  # [b, l, d]
    k: torch.Tensor,  # [b, l, d]
    v: torch.Tensor,  # [b, l, d]
    lr: tuple[torch.Tensor, torch.Tensor, torch.Tensor],  # each [b, l, 1]
    ops: Sequence[TTTOp],
    muon_steps: int = 5,
    ns_dtype: torch.dtype | None = torch.bfloat16,
) -> tuple[torch.Tensor, FastWeights]:
    """Run an update/apply schedule; returns the applied outputs (concatenated in op order) and
    the final fast weights.

    Each update re-projects every column (norm over the input dim) to the norm the incoming
    weights had when this call started, so the state's scale is fixed while its direction learns.
    """
    w0, w1, w2 = w
    norms = [t.detach().norm(dim=1, keepdim=True) for t in (w0, w1, w2)]
    outputs = []
    for start, end, update, apply in ops:
        end = q.shape[1] if end == -1 else end
        if update:
            sl = slice(start, end)
            dirs = swiglu_update_directions(
                w0, w1, w2, k[:, sl], v[:, sl], lr[0][:, sl], lr[1][:, sl], lr[2][:, sl]
            )
            new = []
            for weight, step, norm in zip((w0, w1, w2), dirs, norms):
                weight = weight + newton_schulz(step, muon_steps, ns_dtype)
                new.append(weight / (weight.norm(dim=1, keepdim=True) + 1e-5) * norm)
            w0, w1, w2 = new
        if apply:
            outputs.append(swiglu_apply(w0, w1, w2, q[:, start:end]))
    out = torch.cat(outputs, dim=1) if outputs else q[:, :0]
    return out, (w0, w1, w2)


def inverse_softplus(y: float) -> float:
    """``x`` with ``softplus(x) = y``."""
    return y + math.log(-math.expm1(-y))


class FastWeightSwiGLU(nn.Module):
    """The TTT mixer of a global block (state-dict names of the published model).

    ``w0, w1, w2`` are the initial fast weights ``[heads, d, dh]``, ``[heads, dh, d]``,
    ``[heads, d, dh]``; ``to_qkv`` projects (then SiLU) to queries, keys and values, with q and k
    L2-normalised per head; ``lr_fc`` gives three per-token, per-head learning rates, passed through
    ``softplus(. + softplus^-1(base_lr))`` in float32 (a precision island of the published model);
    the output is RMS-normalised per head (``o_norm``), gated by ``silu(gate_fn x)`` and projected
    by ``c_proj``.

    Initial magnitudes (LaCT's reasoning): with unit-norm q/k a Kaiming init (gain sqrt(2)) keeps
    the hidden activations at unit scale.
    """

    def __init__(self, dim: int, head_dim: int, inter_multi: int = 2, bias: bool = True,
                 base_lr: float = 0.01, muon_steps: int = 5, gate: bool = True,
                 ns_dtype: str = "bfloat16"):
        super().__init__()
        self.num_heads = dim // head_dim
        self.head_dim = head_dim
        hidden = head_dim * inter_multi
        gain = math.sqrt(2.0)
        self.w0 = nn.Parameter(torch.randn(self.num_heads, head_dim, hidden) * gain / math.sqrt(head_dim))
        self.w1 = nn.Parameter(torch.randn(self.num_heads, hidden, head_dim) * gain / math.sqrt(hidden))
        self.w2 = nn.Parameter(torch.randn(self.num_heads, head_dim, hidden) * gain / math.sqrt(head_dim))
        self.to_qkv = nn.Linear(dim, 3 * dim, bias=bias)
        self.c_proj = nn.Linear(dim, dim, bias=bias)
        self.lr_fc = nn.Linear(dim, 3 * self.num_heads)
        self.base_lr_inv = inverse_softplus(base_lr)
        self.muon_steps = muon_steps
        self.ns_dtype = ns_dtype
        self.gate_fn = nn.Sequential(nn.Linear(dim, dim, bias=bias), nn.SiLU()) if gate else None
        self.o_norm = nn.RMSNorm(head_dim, eps=1e-5)

    def initial_state(self, batch: int) -> FastWeights:
        """The learned initial fast weights, repeated per batch item: each ``[batch*heads, ., .]``."""
        return tuple(w.repeat(batch, 1, 1) for w in (self.w0, self.w1, self.w2))  # type: ignore[return-value]

    def _ns_dtype(self, x: torch.Tensor) -> torch.dtype | None:
        return {"bfloat16": torch.bfloat16, "float32": torch.float32, "input": None}[self.ns_dtype]

    def forward(self, x: torch.Tensor, ops: Sequence[TTTOp], state: FastWeights | None = None,
                ) -> tuple[torch.Tensor, FastWeights]:
        """``x`` ``[B, L, D]`` -> (output ``[B, L_applied, D]``, fast weights after ``ops``)."""
        B, L, D = x.shape
        h = self.num_heads

        def heads(t: torch.Tensor) -> torch.Tensor:  # (B, L, h*dh) -> (B*h, L, dh)
            return t.reshape(B, L, h, -1).transpose(1, 2).reshape(B * h, L, -1)

        q, k, v = (heads(t) for t in F.silu(self.to_qkv(x)).chunk(3, dim=-1))
        q = q / (q.norm(dim=-1, keepdim=True) + 1e-5)
        k = k / (k.norm(dim=-1, keepdim=True) + 1e-5)
        with torch.autocast(device_type=x.device.type, enabled=False):
            lr = F.softplus(self.lr_fc(x).float() + self.base_lr_inv)  # (B, L, 3h), float32
        lr0, lr1, lr2 = (heads(t) for t in lr.chunk(3, dim=-1))  # each (B*h, L, 1)

        w = state if state is not None else self.initial_state(B)
        out, w = ttt_schedule(w, q, k, v, (lr0, lr1, lr2), ops, self.muon_steps, self._ns_dtype(x))

        if out.shape[1] != L:
            raise ValueError(f"TTT apply ops cover {out.shape[1]} of {L} tokens; they must cover all")
        # per head; the weight in the activations' dtype, so bf16 autocast keeps the fused kernel
        out = F.rms_norm(out, self.o_norm.normalized_shape, self.o_norm.weight.to(out.dtype), self.o_norm.eps)
        out = out.reshape(B, h, L, -1).transpose(1, 2).reshape(B, L, D)
        if self.gate_fn is not None:
            out = out * self.gate_fn(x)
        return self.c_proj(out), w

    def extra_repr(self) -> str:
        return (f"heads={self.num_heads}, head_dim={self.head_dim}, hidden={self.w0.shape[-1]}, "
                f"muon_steps={self.muon_steps}, ns_dtype={self.ns_dtype}")


class TTTBlock(nn.Module):
    """Global block of ZipMap: ``x + ls1(ttt(norm1 x))`` then ``x + ls2(mlp(norm2 x))``."""

    def __init__(self, dim: int, head_dim: int, mlp_ratio: float, init_values: float, **ttt_kwargs):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.ttt_block = FastWeightSwiGLU(dim, head_dim, **ttt_kwargs)
        self.ls1 = LayerScale(dim, init_values)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.ls2 = LayerScale(dim, init_values)

    def forward(self, x: torch.Tensor, ops: Sequence[TTTOp], state: FastWeights | None = None,
                ) -> tuple[torch.Tensor, FastWeights]:
        residual, state = self.ttt_block(self.norm1(x), ops, state)
        x = x + self.ls1(residual)
        return x + self.ls2(self.mlp(self.norm2(x))), state
