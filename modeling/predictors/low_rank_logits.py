"""A low-rank predictor's active set written as data, so that the sparse kernels can compute it themselves.

`LowRankLogits(down, up, bias, relu_hidden, cut, source)`: neuron j is predicted active where

    (act(source @ down^T) @ up^T + bias)_j >= cut,    act = relu if relu_hidden else the identity.

`source` is the predictor's input [tokens, d_model] when it is not the FFN's own input (a `pre_norm` predictor),
else None. `mask(x)` is that rule in PyTorch; at one token `actsparse.kernels.SparseFFN` takes the description
itself as its `active` and builds the neuron list in its kernels (triton_predictor_list.py), instead of a bool mask
that a separate compaction kernel turns into a list. Both the trained predictors (`LowRankPredictor` with a
threshold `ActiveRule`) and bench_decode's stand-in (`GateSVDPredictor`) describe themselves this way.
"""
from __future__ import annotations

from typing import NamedTuple, Optional

import torch
from torch.nn import functional as F


class LowRankLogits(NamedTuple):
    down: torch.Tensor                    # [rank, d_model]
    up: torch.Tensor                      # [d_ff, rank]
    bias: Optional[torch.Tensor]          # [d_ff] or None
    relu_hidden: bool
    cut: float
    source: Optional[torch.Tensor] = None  # the predictor's input if not the FFN's (pre_norm), [tokens, d_model]

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """[tokens, d_ff] in the weights' dtype, for the FFN input x [tokens, d_model] (or `source`)."""
        src = (x if self.source is None else self.source).reshape(-1, self.down.shape[1])
        h = F.linear(src.to(self.down.dtype), self.down)
        if self.relu_hidden:
            h = torch.relu(h)
        return F.linear(h, self.up, self.bias)

    def mask(self, x: torch.Tensor) -> torch.Tensor:
        """bool [tokens, d_ff]: the predicted active set."""
        return self.logits(x) >= self.cut
