"""The per-layer activation predictor: a low-rank MLP `d_model -> rank -> d_ff` and the rule that turns its
logits into an active set.

Architecture (ProSparse's DejaVu_predictor, PAPERS.md (g)): `Linear(d, r) -> ReLU -> Linear(r, d_ff)`, no bias;
neuron j is predicted active when `sigmoid(logit_j) >= 0.5`. ProSparse uses r = 1024, which at LLaMA-2-7B shape
is 11.4% of the FFN's bytes; we default to r = 384 (4.29%, under the 5% goal; `predictor_fraction_of_ffn`).

Input location (`input_location`):
- `pre_norm`: the residual stream just before `post_attention_layernorm` (ProSparse, PowerInfer). It is
  available before the norm runs, so the predictor can overlap with it.
- `mlp_input`: the FFN's own input, after the norm (what `SparseGatedMLP.forward` receives).
Both are [tokens, d_model]; the choice only changes which tensor is captured and fed at inference.
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from .low_rank_logits import LowRankLogits

INPUT_LOCATIONS = ("pre_norm", "mlp_input")
ACTIVE_RULES = ("threshold", "topk")
PREDICTORS_DIRNAME = "predictors"


class LowRankPredictor(nn.Module):
    """Logits `[..., d_ff]` of "neuron j of x1 is nonzero" from a `[..., d_model]` input."""

    def __init__(self, d_model: int, d_ff: int, rank: int):
        super().__init__()
        self.down = nn.Linear(d_model, rank, bias=False)
        self.up = nn.Linear(rank, d_ff, bias=False)
        self.d_model, self.d_ff, self.rank = d_model, d_ff, rank

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(torch.relu(self.down(x.to(self.down.weight.dtype))))

    def kernel_logits(self, rule: "ActiveRule", source: torch.Tensor | None = None) -> LowRankLogits | None:
        """This predictor under `rule` as data the sparse kernels compute themselves (low_rank_logits.py); None for
        a top-k rule, which needs every logit of a token before it can pick."""
        if rule.kind != "threshold":
            return None
        return LowRankLogits(self.down.weight, self.up.weight, None, True, rule.logit_cut(), source)

    def extra_repr(self) -> str:
        return f"d_model={self.d_model}, rank={self.rank}, d_ff={self.d_ff}"


@dataclass(frozen=True)
class ActiveRule:
    """Logits -> bool active set, applied at inference (the recall safety margin lives here).

    - `threshold`: active where `sigmoid(logit) >= threshold` (0.5 is the trained operating point; lower it
      to trade predicted sparsity for recall).
    - `topk`: per token, the `topk_percent`% of neurons with the largest logits (ceil), whatever their value.
    """
    kind: str = "threshold"
    threshold: float = 0.5
    topk_percent: float = 20.0

    def __post_init__(self):
        if self.kind not in ACTIVE_RULES:
            raise ValueError(f"ActiveRule.kind {self.kind!r}: choose from {', '.join(ACTIVE_RULES)}")
        if self.kind == "threshold" and not 0.0 < self.threshold < 1.0:
            raise ValueError(f"ActiveRule.threshold must be in (0, 1), got {self.threshold}")
        if self.kind == "topk" and not 0.0 < self.topk_percent <= 100.0:
            raise ValueError(f"ActiveRule.topk_percent must be in (0, 100], got {self.topk_percent}")

    def __call__(self, logits: torch.Tensor) -> torch.Tensor:
        if self.kind == "threshold":
            return logits >= self.logit_cut()
        k = self.topk_count(logits.shape[-1])
        top = logits.topk(k, dim=-1).indices
        return torch.zeros_like(logits, dtype=torch.bool).scatter_(-1, top, True)

    def logit_cut(self) -> float:
        """`threshold` rule: active where logit >= this, since sigmoid(l) >= p  <=>  l >= log(p / (1 - p))
        (comparing logits avoids a sigmoid per neuron)."""
        return math.log(self.threshold / (1.0 - self.threshold))

    def topk_count(self, d_ff: int) -> int:
        return max(1, min(d_ff, math.ceil(self.topk_percent / 100.0 * d_ff)))

    def describe(self) -> str:
        return f"sigmoid>={self.threshold:g}" if self.kind == "threshold" else f"top-{self.topk_percent:g}%"


def predictor_params(d_model: int, d_ff: int, rank: int) -> int:
    return d_model * rank + rank * d_ff


def ffn_params(d_model: int, d_ff: int) -> int:
    """gate, up and down projections of a gated FFN (no bias)."""
    return 3 * d_model * d_ff


def predictor_fraction_of_ffn(d_model: int, d_ff: int, rank: int) -> float:
    """Predictor bytes / FFN bytes at the same dtype, e.g. (4096, 11008, 384) -> 0.0429."""
    return predictor_params(d_model, d_ff, rank) / ffn_params(d_model, d_ff)


def max_rank_within(d_model: int, d_ff: int, fraction: float = 0.05) -> int:
    """Largest rank whose predictor stays within `fraction` of the FFN's bytes (LLaMA-2-7B, 5%: 447)."""
    return int(fraction * ffn_params(d_model, d_ff) // (d_model + d_ff))


@dataclass
class PredictorSetConfig:
    """`predictors/config.json`: what every `layer_XX.safetensors` next to it holds and how it was trained."""
    num_layers: int
    d_model: int
    d_ff: int
    rank: int
    input_location: str
    label: str = "active"
    activation: str = "relu"
    trained_on: str = ""
    layer_metrics: list | None = None   # per layer: best validation recall / precision / predicted sparsity

    def __post_init__(self):
        if self.input_location not in INPUT_LOCATIONS:
            raise ValueError(f"input_location {self.input_location!r}: choose from {', '.join(INPUT_LOCATIONS)}")


def layer_file(directory: Path, layer: int) -> Path:
    return Path(directory) / f"layer_{layer:02d}.safetensors"


def save_predictors(directory: str | Path, predictors: list[LowRankPredictor], config: PredictorSetConfig) -> Path:
    """Write `layer_XX.safetensors` (weights `down.weight`, `up.weight`) and `config.json` into `directory`."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    for layer, predictor in enumerate(predictors):
        tensors = {k: v.detach().contiguous().cpu() for k, v in predictor.state_dict().items()}
        save_file(tensors, str(layer_file(directory, layer)), metadata={"layer": str(layer)})
    (directory / "config.json").write_text(json.dumps(asdict(config), indent=2))
    return directory


def load_predictors(directory: str | Path, dtype: torch.dtype = torch.float32
                    ) -> tuple[list[LowRankPredictor], PredictorSetConfig]:
    directory = Path(directory)
    config_path = directory / "config.json"
    if not config_path.is_file():
        raise FileNotFoundError(f"{config_path}: no predictor config; train predictors first "
                                "(`actsparse predictors train`)")
    config = PredictorSetConfig(**json.loads(config_path.read_text()))
    predictors = []
    for layer in range(config.num_layers):
        predictor = LowRankPredictor(config.d_model, config.d_ff, config.rank)
        predictor.load_state_dict(load_file(str(layer_file(directory, layer))))
        predictors.append(predictor.to(dtype).eval())
    return predictors, config
