"""`SparseFFN`: one gated FFN prepared for sparse decoding, callable as `ffn(x, active=None)`.

Weights: gate and up stay row-major [d_ff, d_model] (the module's own parameters, not copied); W_down is
stored transposed, [d_ff, d_model], so one neuron's down weights are one contiguous row.

What is skipped (no predictor):
- relu / fatrelu / relu2: the gate is dense (it decides sparsity); up and down rows only for neurons
  with act(gate) != 0 (for any token of the batch in union mode, per token in per-token mode).
- drelu (x1 = relu(gate) * relu(up)): with a dense gate, up rows are skipped where gate <= 0, and down
  rows where x1 == 0, i.e. gate <= 0 OR up <= 0 (the down kernel tests x1 before loading a row).
With a predicted set `active` (bool [d_ff] or [tokens, d_ff], or a 1-D index tensor): gate, up and
down rows of neurons outside the set are all skipped; x1 is act(gate) * up inside the set and 0 outside.
`active` may also be the predictor itself as a `LowRankLogits` (modeling/predictors/low_rank_logits.py): at one
token on the rows path its second layer builds the neuron list in a kernel (triton_predictor_list.py); elsewhere
its mask is computed in PyTorch and taken as above.
`forward_add_norm(residual, attn_out, norm_weight, eps)`: the decoder layer's residual add and RMSNorm before the FFN
computed in the FFN's first kernel at one token (fused_ffn_norm.py).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from actsparse.modeling.activations import check_activation, gate_activation
from actsparse.modeling.predictors.low_rank_logits import LowRankLogits

from .dispatch import DispatchConfig, choose_plan, warn_once
from .torch_sparse import sparse_ffn_torch

SPARSE_ACTIVATIONS = ("relu", "fatrelu", "drelu", "relu2")
BACKENDS = ("triton", "torch")


def _bias(linear: nn.Module) -> torch.Tensor | None:
    return getattr(linear, "bias", None)


def llama_rms_norm(h: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """transformers' LlamaRMSNorm (also Mistral's, Qwen2's) of h, op for op."""
    variance = h.float().pow(2).mean(-1, keepdim=True)
    return weight * (h.float() * torch.rsqrt(variance + eps)).to(h.dtype)


class SparseFFN(nn.Module):
    def __init__(self, w_gate, w_up, w_down_t, b_gate=None, b_up=None, b_down=None, activation="relu",
                 threshold=0.0, backend="triton", dispatch: DispatchConfig | None = None):
        super().__init__()
        check_activation(activation, threshold)
        if activation not in SPARSE_ACTIVATIONS:
            raise ValueError(f"activation {activation!r} has no exact zeros to skip; supported: "
                             f"{', '.join(SPARSE_ACTIVATIONS)}")
        if backend not in BACKENDS:
            raise ValueError(f"backend {backend!r}; supported: {', '.join(BACKENDS)}")
        d_ff, d_model = w_gate.shape
        if w_up.shape != (d_ff, d_model) or w_down_t.shape != (d_ff, d_model):
            raise ValueError(f"shapes: gate {tuple(w_gate.shape)}, up {tuple(w_up.shape)}, "
                             f"down^T {tuple(w_down_t.shape)}; expected [d_ff, d_model] for all three")
        self.w_gate, self.w_up, self.w_down_t = w_gate.contiguous(), w_up.contiguous(), w_down_t.contiguous()
        self.b_gate, self.b_up, self.b_down = b_gate, b_up, b_down
        self.activation, self.threshold = activation, float(threshold)
        self.act_fn = gate_activation(activation, threshold)
        self.backend = backend
        self.dispatch = dispatch or DispatchConfig()
        self.neuron_prob: torch.Tensor | None = None  # set by calibrate(), on the host
        self._plans: dict = {}
        self._tickets: torch.Tensor | None = None
        self._list_state: torch.Tensor | None = None  # list lengths + finish counter (triton_ffn.list_state)
        self._rows_acc: torch.Tensor | None = None  # the rows kernel's fp32 sum (triton_rows_ffn.py)
        self._stream_state: tuple | None = None  # entries + counters of the stream path (triton_stream_rows.py)
        self._stream_tuned = -1  # configs.TUNE_GENERATION of this FFN's last stream call (gate launched first if stale)
        # Allocator of the Triton path's float workspaces and output; tests swap in a NaN-filling one.
        self.workspace_alloc = torch.empty

    @classmethod
    def from_mlp(cls, mlp: nn.Module, activation: str = "relu", threshold: float = 0.0, backend: str = "triton",
                 dispatch: DispatchConfig | None = None) -> "SparseFFN":
        """From any module with gate_proj / up_proj / down_proj linears (e.g. a `SparseGatedMLP`)."""
        own = getattr(mlp, "activation", None)
        if own is not None and (own != activation or float(getattr(mlp, "threshold", 0.0)) != float(threshold)):
            raise ValueError(f"{type(mlp).__name__} computes activation={own!r} threshold={mlp.threshold}, "
                             f"but from_mlp got activation={activation!r} threshold={threshold}")
        with torch.no_grad():
            w_down_t = mlp.down_proj.weight.detach().t().contiguous()
        return cls(mlp.gate_proj.weight.detach(), mlp.up_proj.weight.detach(), w_down_t,
                   *(None if b is None else b.detach() for b in map(_bias, (mlp.gate_proj, mlp.up_proj,
                                                                             mlp.down_proj))),
                   activation=activation, threshold=threshold, backend=backend, dispatch=dispatch)

    @property
    def d_ff(self) -> int:
        return self.w_gate.shape[0]

    @torch.no_grad()
    def calibrate(self, x: torch.Tensor) -> float:
        """Measure each neuron's activation probability on sample tokens `x` (this synchronizes); the
        dispatcher uses it to pick dense / union / per-token. Returns the mean active fraction."""
        x1 = self.dense_x1(x.reshape(-1, x.shape[-1]))
        # Kept on the host: the dispatcher reads it every call, which must not synchronize (CUDA graphs).
        self.neuron_prob = (x1 != 0).float().mean(0).cpu()
        self._plans.clear()
        return float(self.neuron_prob.mean())

    def dense_x1(self, x: torch.Tensor) -> torch.Tensor:
        up = F.linear(x, self.w_up, self.b_up)
        if self.activation == "drelu":
            up = F.relu(up)
        return self.act_fn(F.linear(x, self.w_gate, self.b_gate)) * up

    def dense(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """cuBLAS path (three GEMMs); with a predicted mask, x1 is zeroed outside it."""
        x1 = self.dense_x1(x)
        if mask is not None:
            x1 = x1 * mask.to(x1.dtype)
        out = x1 @ self.w_down_t
        return out if self.b_down is None else out + self.b_down

    @torch.no_grad()
    def forward(self, x: torch.Tensor, active: torch.Tensor | None = None, fp32_out: bool = False) -> torch.Tensor:
        """The FFN of x [tokens, d_model] in the weights' dtype, or float32 with `fp32_out`. On the one-token exact
        path through the rows kernel, `fp32_out` returns the kernel's fp32 sum row itself (the gate kernel sets it to
        b_down first), which saves the rows kernel's epilogue: a release fence, a ticket and the copy into the
        weights' dtype by its last program. The caller's cast then does that copy, and under torch.compile it merges
        into the next elementwise kernel (SparseDecodingMLP). Other paths cast their output (one more launch)."""
        out = self._forward(x, active, fp32_out)
        return out.float() if fp32_out and out.dtype != torch.float32 else out

    @torch.no_grad()
    def forward_add_norm(self, residual: torch.Tensor, attn_out: torch.Tensor, norm_weight: torch.Tensor, eps: float,
                         active=None, fp32_out: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """(h, FFN(x)) for h = residual + attn_out ([tokens, d_model]) and x = LlamaRMSNorm(h) with `norm_weight` and
        `eps`: a decoder layer's post-attention add and norm, then this FFN as `forward(x, active, fp32_out)` returns
        it. At one token on the rows path, after the TMA gate kernel (no predictor) or a LowRankLogits `active` (its
        GEMV), that first kernel computes h and x itself (triton_gate_tma.py NORM) and writes both: no add + norm
        kernel before the FFN. Elsewhere (`add_norm_unusable`, said once) torch's add and norm, then `forward`."""
        reason = self.add_norm_unusable(residual, attn_out, norm_weight, active)
        if reason is not None:
            warn_once(f"SparseFFN: the add + RMSNorm before the FFN runs in torch, not in its first kernel ({reason})")
            h = residual + attn_out
            return h, self.forward(llama_rms_norm(h, norm_weight, eps), active, fp32_out)
        x, h = (self.workspace_alloc(*residual.shape, dtype=residual.dtype, device=residual.device) for _ in "xh")
        low_rank = active if isinstance(active, LowRankLogits) else None
        norm = (residual.contiguous(), attn_out.contiguous(), norm_weight.contiguous(), float(eps), h)
        out = self._triton_ffn(x, None, None, False, low_rank is not None, fp32_out, low_rank=low_rank, norm=norm)
        return h, out.float() if fp32_out and out.dtype != torch.float32 else out

    def add_norm_unusable(self, residual: torch.Tensor, attn_out: torch.Tensor, norm_weight: torch.Tensor,
                          active=None) -> str | None:
        """Why `forward_add_norm` cannot compute the add and norm in the FFN's first kernel (None: it can)."""
        if self.backend != "triton":
            return "the torch backend"
        d_model = self.w_gate.shape[1]
        if residual.dim() != 2 or residual.shape[0] != 1:
            return "more than one token"
        if attn_out.shape != residual.shape or residual.shape[1] != d_model or norm_weight.shape != (d_model,):
            return "residual / attn_out not [1, d_model] or a norm weight not [d_model]"
        if {residual.dtype, attn_out.dtype, norm_weight.dtype} != {self.w_gate.dtype}:
            return "residual, attention output and norm weight not all in the FFN's dtype"
        if isinstance(active, LowRankLogits):
            if active.source is not None:
                return "a predictor with its own input (`source`): its GEMV does not read x"
            if not self._lists_from_logits(1):
                return "a predictor taken as its mask (not the rows path, or the dispatcher's dense plan)"
            from .triton_gemv import gemv_unusable
            return gemv_unusable(residual, active.down)
        if active is not None:
            return "a predicted mask or index list (its first kernel does not read x)"
        d = self.dispatch
        if not d.rows(1, False, self.activation) or d.exact_kernel in ("gate_rows", "stream") or not d.gate_tma:
            return (f"exact_kernel={d.exact_kernel!r}, gate_tma={d.gate_tma}, {self.activation} (the TMA gate kernel "
                    "then the rows kernel take it)")
        if self._plan(1, False).path == "dense":
            return "the dispatcher's dense plan"
        from .triton_gate_tma import tma_unusable
        return tma_unusable(residual, self.w_gate)

    def sums_in_fp32(self, n_tokens: int, predicted: bool, low_rank: bool = False) -> bool:
        """Whether a call of `n_tokens` with `fp32_out` takes the rows kernel after the gate kernel (no predictor, not
        gate_rows / stream) or after a low-rank predictor's list kernel (`low_rank`: `active` is a LowRankLogits), whose
        fp32 sum it returns as it is: one token. Attribute checks only, so torch.compile traces it into a constant; the
        plan is not asked (calibration tensors), so a layer the dispatcher sends to cuBLAS at one token (low sparsity)
        casts its output to fp32 here and back in the caller."""
        if self.backend != "triton" or not self.dispatch.rows(n_tokens, predicted, self.activation):
            return False
        return low_rank if predicted else self.dispatch.exact_kernel not in ("gate_rows", "stream")

    def _forward(self, x: torch.Tensor, active: torch.Tensor | None, fp32_out: bool) -> torch.Tensor:
        if x.dim() != 2 or x.shape[1] != self.w_gate.shape[1]:
            raise ValueError(f"x must be (tokens, {self.w_gate.shape[1]}), got {tuple(x.shape)}")
        x = x.to(self.w_gate.dtype).contiguous()
        if isinstance(active, LowRankLogits):
            if self._lists_from_logits(x.shape[0]):
                return self._triton_ffn(x, None, None, False, True, fp32_out, low_rank=active)
            active = active.mask(x)
        fused = active is not None and self.backend == "triton" and self.dispatch.predicted_kernel == "fused"
        # The fused and the lists kernels read an index list as given (no mask built from it, no compaction).
        idx = active if (active is not None and self.backend == "triton" and self._is_index(active)
                         and self.dispatch.predicted_kernel in ("fused", "lists", "rows", "auto")) else None
        mask = None if active is None or idx is not None else self._as_mask(active, x.shape[0])
        plan = self._plan(x.shape[0], active is not None, 1 if mask is None else mask.shape[0])
        if plan.path == "dense":
            return self.dense(x, mask if idx is None else self._as_mask(idx, x.shape[0]))
        args = (x, self.w_gate, self.w_up, self.w_down_t, self.b_gate, self.b_up, self.b_down)
        if self.backend == "torch":
            return sparse_ffn_torch(*args, self.act_fn, self.activation == "drelu", mask, plan.per_token)
        if fused:
            from .triton_predicted import predicted_ffn
            return predicted_ffn(*args, self.activation, self.threshold, mask, idx, self._ticket_buffer(x),
                                 self.workspace_alloc)
        return self._triton_ffn(x, mask, idx, plan.per_token, active is not None, fp32_out)

    def _triton_ffn(self, x, mask, idx, per_token: bool, predicted: bool, fp32_out: bool = False,
                    low_rank: LowRankLogits | None = None, norm: tuple | None = None) -> torch.Tensor:
        from .triton_ffn import list_state, triton_sparse_ffn  # triton is needed only for this backend
        if self._list_state is None or self._list_state.device != x.device:
            self._list_state = list_state(x.device)
        args = (x, self.w_gate, self.w_up, self.w_down_t, self.b_gate, self.b_up, self.b_down)
        return triton_sparse_ffn(*args, self.activation, self.threshold, mask, per_token, self._ticket_buffer(x),
                                 self.workspace_alloc, fuse_up=self.dispatch.fuse_up(x.shape[0]),
                                 state=self._list_state,
                                 inline_compact=self.dispatch.predicted_kernel == "lists_inline",
                                 pdl=self.dispatch.pdl, index=None if idx is None else self._int32(idx),
                                 rows=self.dispatch.rows(x.shape[0], predicted, self.activation),
                                 gate_rows=self.dispatch.gate_rows(x.shape[0], predicted),
                                 rows_acc=self._rows_acc_buffer(x), atomic_down=self.dispatch.down_kernel == "atomic",
                                 gate_tma=self.dispatch.gate_tma, gate_prefetch=self.dispatch.gate_prefetch,
                                 stream=self._stream_args(x, predicted), fp32_out=fp32_out, low_rank=low_rank,
                                 gate_first=self.dispatch.gate_first_for(low_rank is not None), norm=norm)

    def _lists_from_logits(self, n_tokens: int) -> bool:
        """Whether a LowRankLogits `active` goes to the kernels as it is (one token on the rows path, the dispatcher
        not choosing dense), rather than as its PyTorch mask."""
        if self.backend != "triton" or not self.dispatch.rows(n_tokens, True, self.activation):
            return False
        return self._plan(n_tokens, True).path != "dense"

    def _plan(self, n_tokens: int, predicted: bool, mask_rows: int = 1):
        """The dispatcher's choice, cached per (tokens, predicted, mask rows): host-only, no sync.
        Assign a new DispatchConfig (rather than editing fields of the old one) to change the choice."""
        if self.neuron_prob is None:
            warn_once("SparseFFN: not calibrated, so no dense fallback at low sparsity (call calibrate())")
        key = (n_tokens, predicted, mask_rows, id(self.neuron_prob), id(self.dispatch))
        if key not in self._plans:
            weight_mb = 3 * self.w_gate.numel() * self.w_gate.element_size() / 1e6
            self._plans[key] = choose_plan(self.dispatch, n_tokens, self.neuron_prob, key[1], key[2], weight_mb)
        return self._plans[key]

    @staticmethod
    def _int32(idx: torch.Tensor) -> torch.Tensor:
        """The list as the kernels read it; pass int32 (contiguous) to save this conversion's launch."""
        if idx.dtype != torch.int32 or not idx.is_contiguous():
            warn_once("SparseFFN: an index list that is not contiguous int32 is converted each call (one launch)")
            return idx.to(torch.int32).contiguous()
        return idx

    @staticmethod
    def _is_index(active: torch.Tensor) -> bool:
        return active.dim() == 1 and active.dtype != torch.bool and not active.is_floating_point()

    def _as_mask(self, active: torch.Tensor, n_tokens: int) -> torch.Tensor:
        """active -> bool mask [1, d_ff] (shared set) or [tokens, d_ff]."""
        if active.dtype == torch.bool:
            if active.shape == (self.d_ff,):
                return active[None]
            if active.shape == (n_tokens, self.d_ff):
                return active.contiguous()
            raise ValueError(f"bool active must be [{self.d_ff}] or [{n_tokens}, {self.d_ff}], "
                             f"got {tuple(active.shape)}")
        if self._is_index(active):
            mask = torch.zeros(self.d_ff, dtype=torch.bool, device=active.device)
            return mask.index_fill_(0, active.long(), True)[None]
        raise ValueError(f"active must be a bool mask or a 1-D index tensor, got {active.dtype} "
                         f"{tuple(active.shape)}")

    def _stream_args(self, x: torch.Tensor, predicted: bool) -> tuple | None:
        """(consumer settings, state, gate_first) for the stream path (triton_stream_rows.py) where the dispatch asks
        for it. gate_first on the first call since the autotune caches were last reset: the gate kernel may still
        tune, and its timing runs must not meet a waiting consumer."""
        settings = self.dispatch.stream(x.shape[0], predicted)
        if settings is None or self.backend != "triton":
            return None
        from . import configs
        from .triton_stream_rows import stream_state
        if self._stream_state is None or self._stream_state[0].device != x.device:
            self._stream_state = stream_state(self.d_ff, x.device)
        gate_first = self._stream_tuned != configs.TUNE_GENERATION
        self._stream_tuned = configs.TUNE_GENERATION
        return settings, self._stream_state, gate_first

    def _rows_acc_buffer(self, x: torch.Tensor) -> torch.Tensor:
        """The rows kernel's fp32 [d_model] sum: zeroed once, left zero by every call (triton_rows_ffn.py)."""
        if self._rows_acc is None or self._rows_acc.device != x.device:
            self._rows_acc = torch.zeros(self.w_gate.shape[1], dtype=torch.float32, device=x.device)
        return self._rows_acc

    def _ticket_buffer(self, x: torch.Tensor) -> torch.Tensor:
        """Zeroed once; the down kernel leaves every ticket at 0 again when it finishes."""
        if self._tickets is None or self._tickets.device != x.device:
            self._tickets = torch.zeros(64 * (self.w_gate.shape[1] // 32 + 1), dtype=torch.int32, device=x.device)
        return self._tickets
