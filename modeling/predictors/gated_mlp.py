"""Predictor-driven FFN: compute only the neurons a predictor marks active.

`attach_predictors(model, predictors, input_location, rule)` replaces every `SparseGatedMLP` with a
`PredictedSparseMLP` that shares its projections and adds the layer's predictor. Per token it evaluates the
predictor, turns the logits into an active set with `rule` (threshold or top-k: the recall safety margin),
and then either
- masks x1 in PyTorch (`x1 = act(gate(x)) * up(x) * active`, exact on the kept neurons): the CPU reference
  that measures the quality cost of a prediction; it still computes every neuron, so it is not faster; or
- calls `sparse_ffn(x, active=...)` when one is set (the kernels' `SparseFFN`, wired in by
  `actsparse.eval.predictor_decode`; modeling itself never imports kernels).
For `pre_norm` predictors a forward pre-hook on `post_attention_layernorm` hands the residual to the FFN (the
FFN's own input is already normalized). `detach_predictors(model)` restores plain `SparseGatedMLP`s.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from ..sparse_mlp import SparseGatedMLP, _in_backward
from .collect import predictor_sites
from .metrics import PredictionCounts
from .predictor import ActiveRule, LowRankPredictor


class PredictedSparseMLP(SparseGatedMLP):
    """A `SparseGatedMLP` whose x1 is restricted to the predicted active neurons."""

    def __init__(self, mlp: SparseGatedMLP, predictor: LowRankPredictor, input_location: str, rule: ActiveRule):
        super().__init__(mlp.gate_proj, mlp.up_proj, mlp.down_proj, mlp.act_fn, mlp.activation, mlp.threshold,
                         mlp.layer_index)
        object.__setattr__(self, "original_act_fn", getattr(mlp, "original_act_fn", mlp.act_fn))
        self.predictor = predictor
        self.input_location = input_location
        self.rule = rule
        self.sparse_ffn: Callable | None = None   # kernels' SparseFFN: (x [T, d], active [T, d_ff] or LowRankLogits)
        self.prediction_counts: PredictionCounts | None = None   # set to count predicted vs true active sets
        self.tapped_input: torch.Tensor | None = None     # residual handed over by the norm's pre-hook
        self._hook = None

    def predict_active(self, x: torch.Tensor) -> torch.Tensor:
        """bool [..., d_ff]: the neurons to compute for each token of `x` (the FFN input)."""
        source = x
        if self.input_location == "pre_norm":
            if self.tapped_input is None:
                raise RuntimeError(f"layer {self.layer_index}: pre_norm predictor got no residual; "
                                   "attach with attach_predictors(model, ...) so the norm hook is installed")
            source, self.tapped_input = self.tapped_input, None
        return self.rule(self.predictor(source))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.sparse_ffn is not None:
            flat = x.reshape(-1, x.shape[-1])
            out = self.sparse_ffn(flat, active=self._kernel_active(x, flat.shape[0]))
            return out.reshape(*x.shape[:-1], out.shape[-1])
        active = self.predict_active(x)
        up = self.up_proj(x)
        if self.relu_on_up:
            up = torch.relu(up)
        x1 = self.act_fn(self.gate_proj(x)) * up
        if self.prediction_counts is not None:
            self.prediction_counts.add(active, x1 != 0)
        x1 = x1 * active.to(x1.dtype)
        if self.zero_counter is not None and not _in_backward():
            self.zero_counter.add(self.layer_index, x1)
        return self.down_proj(x1)

    def _kernel_active(self, x: torch.Tensor, n_tokens: int):
        """What the kernels' SparseFFN gets as `active`: at one token under a threshold rule the predictor itself as
        a `LowRankLogits` (the kernels build the neuron list while computing the logits), else the bool mask."""
        if n_tokens == 1 and self.rule.kind == "threshold":
            source = None
            if self.input_location == "pre_norm":
                if self.tapped_input is None:
                    self.predict_active(x)   # raises the missing-hook error
                source, self.tapped_input = self.tapped_input.reshape(1, -1), None
            return self.predictor.kernel_logits(self.rule, source)
        active = self.predict_active(x)
        return active.reshape(-1, active.shape[-1])

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, input_location={self.input_location}, rule={self.rule.describe()}"


def _set_child(model: nn.Module, target: nn.Module, new: nn.Module) -> None:
    for name, module in model.named_modules():
        for child_name, child in module.named_children():
            if child is target:
                setattr(module, child_name, new)
                return
    raise ValueError("module to replace not found in model")


def attach_predictors(model: nn.Module, predictors: list[LowRankPredictor], input_location: str,
                      rule: ActiveRule | None = None) -> nn.Module:
    """Swap every converted FFN for a `PredictedSparseMLP` (in place); returns `model`."""
    detach_predictors(model)
    sites = predictor_sites(model, input_location)
    if len(sites) != len(predictors):
        raise ValueError(f"model has {len(sites)} FFN layers but {len(predictors)} predictors were given")
    rule = rule or ActiveRule()
    param = next(model.parameters())
    for (ffn, tap), predictor in zip(sites, predictors):
        wrapped = PredictedSparseMLP(ffn, predictor.to(param.device, param.dtype).eval(), input_location, rule)
        _set_child(model, ffn, wrapped)
        if input_location == "pre_norm":
            def hand_over(module, args, target=wrapped):
                target.tapped_input = args[0]
            wrapped._hook = tap.register_forward_pre_hook(hand_over)
    return model


def predicted_mlps(model: nn.Module) -> list[PredictedSparseMLP]:
    return [m for m in model.modules() if isinstance(m, PredictedSparseMLP)]


def set_rule(model: nn.Module, rule: ActiveRule) -> None:
    """Change the active-set rule (e.g. sweep thresholds) without re-attaching."""
    for mlp in predicted_mlps(model):
        mlp.rule = rule


def detach_predictors(model: nn.Module) -> nn.Module:
    """Replace every `PredictedSparseMLP` by a plain `SparseGatedMLP` with the same projections."""
    for mlp in predicted_mlps(model):
        if mlp._hook is not None:
            mlp._hook.remove()
        plain = SparseGatedMLP(mlp.gate_proj, mlp.up_proj, mlp.down_proj, mlp.act_fn, mlp.activation,
                               mlp.threshold, mlp.layer_index)
        object.__setattr__(plain, "original_act_fn", mlp.original_act_fn)
        _set_child(model, mlp, plain)
    return model
