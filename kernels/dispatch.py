"""Which path one SparseFFN call takes: dense cuBLAS, sparse over the union of active neurons, or sparse
with one neuron list per token.

The decision uses only the batch size, the layer's shape and a per-neuron activation probability measured
beforehand (`SparseFFN.calibrate`), never the current call's active count: reading that count would
synchronize the host with the GPU and rule out CUDA graphs. f is the expected fraction of neurons read:
union mode `mean_j(1 - (1 - p_j)^T)` (tokens of different sequences taken as independent), per-token mode
`T * mean_j(p_j)` (rows shared by tokens are read again, perhaps from L2, which the models ignore).

Union plans are priced by a cost model in microseconds (cost_model.py: a fixed cost per call plus per-MB
rates, fitted to `actsparse bench-kernels` on an H100 over four shapes and batch 1-64): sparse when its
predicted time is at most `max_time_ratio` of dense. Weight bytes alone were not enough: at MiniCPM-1B's shape
(35 MB) the sparse path's ~20 us fixed cost made it 0.77x of cuBLAS at 32 tokens and a byte ratio of 0.79,
which is a clear win at the 7B shape (docs/RESULTS.md, session 5). Per-token plans, and any plan when
`cost_model=None`, use the byte ratio against `max_byte_ratio`:
- no predictor: the gate is dense, up and down rows are read for the listed neurons, (1 + 2 f) / 3;
- with a predicted set: gate, up and down rows only for the listed neurons, f.
Union beat per-token at batch 8 and 32 at every sparsity (0.5-0.95) in sessions 3-5, so `batch_mode="union"`.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from .cost_model import H100_FP16, CostModel

log = logging.getLogger(__name__)

BATCH_MODES = ("union", "per_token", "auto")
PREDICTED_KERNELS = ("lists", "fused", "lists_inline", "rows", "auto")
EXACT_KERNELS = ("split", "gate_up", "auto", "rows", "gate_rows", "stream")
DOWN_KERNELS = ("split", "atomic")
# "auto": gate_up for this many tokens (union mode), split otherwise.
GATE_UP_TOKENS = range(8, 17)


@dataclass
class DispatchConfig:
    # "union": one neuron list shared by all tokens; "per_token": one list per token; "auto": per-token
    # up to `per_token_max_batch` tokens, union above. Default union: measured faster (module docstring).
    batch_mode: str = "union"
    per_token_max_batch: int = 4
    # Union plans: sparse when the cost model's sparse time is at most `max_time_ratio` of its dense time. With
    # the H100 fit, 0.95 took no measured case below 0.98x of dense (test_cost_model; the fit's error is larger,
    # up to 28%, where sparse wins by far). None: the byte-ratio rule below for every plan.
    cost_model: CostModel | None = H100_FP16
    max_time_ratio: float = 0.95
    # Per-token plans (and all plans without a cost model): dense cuBLAS when the expected sparse bytes exceed
    # this fraction of the dense bytes (union broke even near 0.9 at the 7B shape, sessions 3-4).
    max_byte_ratio: float = 0.8
    # Above this many tokens (prefill) the FFN runs dense.
    max_sparse_tokens: int = 64
    # Kernels of the predicted-set path: "lists" (Version 1: compaction, fused gate/up, split-K down; three
    # launches) or "fused" (Version 2, triton_predicted.py: mask or index slices scanned in place, two
    # launches, union mode only; measured slower than "lists"), or "lists_inline" (Version 1's lists with the
    # compaction inside the up kernel at batch 1, triton_compact_up.py: two launches; measured on an H100 at
    # the 7B shape slower than "lists" at 90% sparsity, 38.1 vs 32.0 µs, faster at 95%, 24.5 vs 27.4 µs;
    # other batch sizes run "lists"), or "rows" (one token: up, x1 and down in one kernel over the list,
    # triton_rows_ffn.py; an index list takes that one launch alone, a mask a compaction first; other batch sizes
    # run "lists"), or "auto": rows at one token (lists for dReLU, as on the exact path), lists otherwise. H100, 7B,
    # batch 1, 90% (session 8, the rows kernel software-pipelined): index list 16.4-17.4 µs (rows) against 19.8-20.7
    # (lists), mask 19.0-20.0 against 23.6.
    predicted_kernel: str = "auto"
    # Kernels of the exact (no predictor) union path: "split" (gate, up, down: three launches), "gate_up" (the
    # gate kernel reads its active neurons' up rows too: two launches), or "auto": rows at one token (split for
    # dReLU), gate_up at 8-16 tokens, split otherwise. H100, 7B shape (sessions 5-6): at batch 1 gate_up is no faster (54.5-62.4 vs 53.7-61.4 µs at 90%);
    # at batch 8 it was faster at 50/80/90% in all six runs (90%: 71.9-74.5 vs 74.7-80.4 µs, 1.56-1.60x over dense
    # in session 6) and at batch 16 at 50-90%; at batch 4 and above 16 neither path led throughout. "rows": one token
    # takes the gate kernel and then up, x1 and down in one kernel (triton_rows_ffn.py); other batches as "auto".
    # At one token rows beat split in all four bench runs of session 7 (7B, 80/90/95%: 48.5-52.1 vs 51.9-53.8 µs
    # at 90%) and in the 32-layer compiled decode (1.42x vs 1.38x over dense). "gate_rows": one token in one kernel
    # (triton_gate_rows.py: gate rows streamed, active neurons' up / down rows behind them; d_model <= 8192, not
    # dReLU, else as "rows"); other batches as "auto". "stream": one token takes the TMA gate kernel and the rows
    # consumer at the same time on two streams, the consumer reading each active neuron's rows as soon as the gate
    # kernel lists it (triton_stream_rows.py; d_model <= 8192 with TMA usable, else as "rows"); other batches as "auto".
    # H100, 7B, 90% (session 10): 49.1-49.8 µs with a consumer program on every SM, 60.5 with half, against 47.6 for
    # gate then rows: the consumer's per-claim atomics, not the bytes, set its time. Opt-in.
    exact_kernel: str = "auto"
    # The down kernel after the up kernel (lists / split / gate_up paths): "split" (triton_up_down.down_kernel:
    # split-K partial sums added by the last program in a fixed order, deterministic), or "atomic" at one token
    # (triton_rows_ffn.py with x1 given: whole W_down^T rows, each program's fp32 sum added with atomics, so the
    # last bits may differ between calls; no dReLU x1 = 0 skipping). Other batch sizes run "split".
    down_kernel: str = "split"
    # Programmatic dependent launch between the kernels of one call (pdl.py; Hopper+): each kernel's launch
    # overlaps the previous one's tail; the "lists" / "split" paths (Version 2 ignores it). No gain measured (sessions 5
    # and 7 in the bench, session 9 in the decode loop).
    pdl: bool = False
    # One token without a predictor: the gate kernel loads its rows through TMA (triton_gate_tma.py) where the device
    # (compute capability 9.0+), the Triton and the row alignment allow (else the plain loads, said once). H100, 7B
    # (session 9): the exact path 0.2-1.3 µs faster than with plain loads (90%: 46.6-46.7 against 46.8-47.4 µs).
    gate_tma: bool = True
    # With gate_tma on the one-token rows path: the gate kernel also sends each active neuron's up and W_down^T rows
    # towards L2 (bulk prefetches that nothing waits for), so the rows kernel after it reads them from L2. GPU only.
    # H100, 7B (session 9): 0.2-0.8 µs slower, so off.
    gate_prefetch: bool = False
    # The stream path's consumer (exact_kernel="stream"): its programs as a fraction of the SMs (at most one per SM),
    # neurons per claim, warps per program. Session 10 (7B, 90%): 1.0 (49.8 µs) beat 0.5 (60.5) and 0.25 (80.9). The
    # GPU tests of session 10 ran 0.5; 1.0 matched the rows path in 40 calls (debug run) and the bench's check.
    stream_programs: float = 1.0
    stream_block_j: int = 2
    stream_warps: int = 4
    # Predicted sets at one token on the rows path: each listed neuron's gate row is read first and its up and
    # W_down^T rows only where act(gate) != 0 (GATE_FIRST, triton_rows_ffn.py): the predictor's false positives cost
    # their gate row only. The sum is the same. None: on for the list a low-rank predictor's kernels build (it
    # over-selects), off for a caller's mask or index list. H100, 7B, stand-in predictor (15% listed, half of them
    # truly active; session 14): 26.4 against 29.2 µs per layer for its three kernels (probe_predictor_path), decode
    # 1.82x against 1.76x.
    gate_first: bool | None = None

    def __post_init__(self):
        if self.predicted_kernel not in PREDICTED_KERNELS:
            raise ValueError(f"DispatchConfig.predicted_kernel={self.predicted_kernel!r}; supported: "
                             f"{', '.join(PREDICTED_KERNELS)}")
        if self.exact_kernel not in EXACT_KERNELS:
            raise ValueError(f"DispatchConfig.exact_kernel={self.exact_kernel!r}; supported: "
                             f"{', '.join(EXACT_KERNELS)}")
        if self.down_kernel not in DOWN_KERNELS:
            raise ValueError(f"DispatchConfig.down_kernel={self.down_kernel!r}; supported: {', '.join(DOWN_KERNELS)}")
        if self.batch_mode not in BATCH_MODES:
            raise ValueError(f"DispatchConfig.batch_mode={self.batch_mode!r}; supported: {', '.join(BATCH_MODES)}")
        if not 0.0 < self.max_time_ratio <= 1.0:
            raise ValueError(f"DispatchConfig.max_time_ratio={self.max_time_ratio} must lie in (0, 1]")
        if not 0.0 <= self.max_byte_ratio <= 1.0:
            raise ValueError(f"DispatchConfig.max_byte_ratio={self.max_byte_ratio} must lie in [0, 1]")
        if not 0.0 < self.stream_programs <= 1.0:
            raise ValueError(f"DispatchConfig.stream_programs={self.stream_programs} must lie in (0, 1]")
        if self.stream_block_j not in (1, 2, 4, 8) or self.stream_warps not in (1, 2, 4, 8):
            raise ValueError(f"DispatchConfig.stream_block_j={self.stream_block_j}, stream_warps={self.stream_warps}: "
                             "each must be 1, 2, 4 or 8")
        if not 1 <= self.max_sparse_tokens <= 64:
            raise ValueError(f"DispatchConfig.max_sparse_tokens={self.max_sparse_tokens} must lie in [1, 64]")

    def gate_first_for(self, low_rank: bool) -> bool:
        """Whether a predicted set on the rows path reads its gate rows first (`low_rank`: the list is built by a
        low-rank predictor's kernels)."""
        return low_rank if self.gate_first is None else self.gate_first

    def fuse_up(self, n_tokens: int) -> bool:
        """Whether the exact union path runs the gate_up kernels for a batch of `n_tokens`."""
        return self.exact_kernel == "gate_up" or (self.exact_kernel in ("auto", "rows", "gate_rows", "stream")
                                                  and n_tokens in GATE_UP_TOKENS)

    def rows(self, n_tokens: int, predicted: bool, activation: str = "relu") -> bool:
        """Whether a call of `n_tokens` runs the one-token rows kernel (triton_rows_ffn.py). "auto" leaves dReLU on
        split / lists: their down kernel skips the rows of x1 = 0 neurons (up <= 0), which the rows kernel reads."""
        if n_tokens != 1:
            return False
        kernel = self.predicted_kernel if predicted else self.exact_kernel
        return kernel in ("rows", "gate_rows", "stream") or (kernel == "auto" and activation != "drelu")

    def gate_rows(self, n_tokens: int, predicted: bool) -> bool:
        """Whether a call asks for the one-kernel exact path (triton_gate_rows.py): one token, no predictor. The kernel
        serves d_model <= 8192 without dReLU; other calls run the gate and rows kernels, said once in the log."""
        return n_tokens == 1 and not predicted and self.exact_kernel == "gate_rows"

    def stream(self, n_tokens: int, predicted: bool) -> tuple | None:
        """The stream path's consumer settings (programs as a fraction of the SMs, BLOCK_J, warps) where a call asks
        for it (one token, no predictor, exact_kernel "stream"), else None."""
        if n_tokens == 1 and not predicted and self.exact_kernel == "stream":
            return self.stream_programs, self.stream_block_j, self.stream_warps
        return None


def expected_fraction(neuron_prob: torch.Tensor, n_tokens: int, per_token: bool) -> float:
    """Expected fraction of the d_ff neurons whose rows are read for a batch of `n_tokens`."""
    if per_token:
        return float(n_tokens * neuron_prob.mean())
    return float((1.0 - (1.0 - neuron_prob.double()) ** n_tokens).mean())


def byte_ratio(fraction: float, predicted: bool) -> float:
    """Sparse weight bytes over dense weight bytes for the given fraction of neurons read."""
    return fraction if predicted else (1.0 + 2.0 * fraction) / 3.0


@dataclass
class Plan:
    path: str  # "dense" or "sparse"
    per_token: bool = False


def choose_plan(config: DispatchConfig, n_tokens: int, neuron_prob: torch.Tensor | None, predicted: bool,
                mask_rows: int, weight_mb: float) -> Plan:
    """The path for one call; `mask_rows` is 1 for a shared predicted set (or none), n_tokens per token;
    `weight_mb` is the MB of the three weight matrices."""
    if n_tokens > config.max_sparse_tokens:
        return Plan("dense")
    per_token = n_tokens > 1 and (
        config.batch_mode == "per_token"
        or (config.batch_mode == "auto" and n_tokens <= config.per_token_max_batch))
    if predicted and (mask_rows == 1 or config.predicted_kernel == "fused"):
        per_token = False  # one shared set: every token's list would be the same list; "fused": union only
    if neuron_prob is None:
        return Plan("sparse", per_token)
    fraction = expected_fraction(neuron_prob, n_tokens, per_token)
    if config.cost_model is not None and not per_token:
        model = config.cost_model
        ratio = model.sparse_us(weight_mb, fraction, n_tokens, predicted) / model.dense_us(weight_mb)
        return Plan("dense" if ratio > config.max_time_ratio else "sparse", per_token)
    return Plan("dense" if byte_ratio(fraction, predicted) > config.max_byte_ratio else "sparse", per_token)


_warned: set[str] = set()


def warn_once(message: str) -> None:
    """Log a missing fast path once per message (no silent fallbacks)."""
    if message not in _warned:
        _warned.add(message)
        log.warning(message)
