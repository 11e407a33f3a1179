"""Block sizes for every kernel, chosen in ONE place: autotuned on a GPU, fixed under the interpreter.

`@triton.autotune` cannot run under `TRITON_INTERPRET=1` (it times configs with CUDA events), so there
each kernel gets one fixed config through `triton.heuristics`, with big blocks to keep grids tiny (the
interpreter costs ~1.2 ms per program instance). On a GPU the configs below are timed per shape key (what
the H100 runs chose is in kernels/NOTES.md and docs/RESULTS.md).
"""
from __future__ import annotations

import os

import triton

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
# ACTSPARSE_AUTOTUNE=quick (the GPU tests): every QUICK_STRIDE-th config of each list is timed, not all of them.
# Each new shape key tunes ~20 configs per kernel; the GPU test suite has dozens of keys and ran past a 330 s limit
# (H100, session 6). Benchmarks and models tune over the full lists.
QUICK_TUNING = os.environ.get("ACTSPARSE_AUTOTUNE") == "quick"
QUICK_STRIDE = 4


def _cfg(num_warps: int, num_stages: int = 3, **blocks) -> triton.Config:
    return triton.Config(blocks, num_warps=num_warps, num_stages=num_stages)


# Dense gate GEMV/GEMM + activation + compaction: BLOCK_N neurons per program, BLOCK_K of d per step.
GATE_CONFIGS = [
    _cfg(w, s, BLOCK_N=n, BLOCK_K=k)
    for n, k, w, s in [(8, 512, 4, 3), (16, 256, 4, 3), (16, 512, 4, 3), (32, 256, 4, 3), (32, 128, 4, 4),
                       (64, 128, 4, 4), (16, 1024, 8, 2), (32, 512, 8, 3), (64, 256, 8, 3)]
]
GATE_FIXED = dict(BLOCK_N=128, BLOCK_K=64)

# The same at one token with the gate rows loaded through TMA (triton_gate_tma.py): BLOCK_N rows per program, tiles of
# BLOCK_K columns, STAGES tiles in flight. H100, 7B (bench_gate_probe, session 9; a bare TMA GEMV): N8 K512 s4
# 32.2 µs, N16 K512 s3 32.4, N32 K256 s4 32.7, N16 K256 s4 32.8; 6 stages and N64 slower (33.3-33.7).


def _tma_block_hook(nargs: dict) -> None:
    """Autotune pre-hook: the weight descriptor's tile shape (gate kernel or GEMV) follows the config being run."""
    nargs["wg_desc" if "wg_desc" in nargs else "w_desc"].block_shape = [nargs["BLOCK_N"], nargs["BLOCK_K"]]


GATE_TMA_CONFIGS = [
    triton.Config(dict(BLOCK_N=n, BLOCK_K=k, STAGES=s), num_warps=w, num_stages=1, pre_hook=_tma_block_hook)
    for n, k, w, s in [(8, 512, 4, 4), (16, 512, 4, 3), (32, 256, 4, 4), (16, 256, 4, 4), (8, 512, 4, 3),
                       (8, 1024, 4, 3), (4, 1024, 4, 4), (16, 512, 4, 4), (8, 256, 4, 6), (8, 512, 8, 4)]
]
GATE_TMA_FIXED = dict(BLOCK_N=16, BLOCK_K=32, STAGES=2)   # interpreter: several K steps at the tests' shapes
# A plain one-token GEMV with TMA tiles (triton_gemv.py: e.g. the o projection of a decode step): the gate kernel's
# tiles, and 4-row tiles for the smaller matrices (a 4096x4096 one has 512 programs at BLOCK_N 8).
GEMV_CONFIGS = GATE_TMA_CONFIGS + [
    triton.Config(dict(BLOCK_N=4, BLOCK_K=k, STAGES=s), num_warps=w, num_stages=1, pre_hook=_tma_block_hook)
    for k, w, s in [(512, 4, 4), (512, 2, 4), (2048, 4, 3)]]
GEMV_FIXED = GATE_TMA_FIXED
# The same one-token GEMV with each program's whole rows loaded before it waits for the kernel before it
# (triton_gemv_prefetch.py: the predictor's first layer behind the o projection, with PDL): BLOCK_N rows of up to
# 8192 columns in registers per program.
GEMV_PREFETCH_CONFIGS = [_cfg(w, 1, BLOCK_N=n) for n, w in [(1, 4), (2, 4), (2, 8), (4, 4), (4, 8), (8, 8), (8, 16)]]
GEMV_PREFETCH_FIXED = dict(BLOCK_N=4)

# Sparse up (optionally fused with the gate): BLOCK_J active neurons per step, BLOCK_K of d per step, a grid of
# GRID_PER_SM programs per SM, each owning a balanced range of the list. Batch 1 at 90% lists ~1100 neurons of
# 11008. Until session 6 the kernel was persistent (4 programs per SM walking BLOCK_J blocks) and read the gate tile
# after the up tile's reduction: the predicted path's up kernel read 18 MB in 11.1 µs (1.6 TB/s; session 5, the
# autotuner's choice BLOCK_J 4 x BLOCK_K 1024), which is what a chain of ~8 dependent ~1 µs DRAM round trips (4 K
# steps x 2 matrices) takes. Now gate and up tiles load in the same step, and the BLOCK_K 4096 configs read a 7B row
# (d 4096) in one step: one round trip after the list entry; more programs per SM keep more rows in flight.
UP_CONFIGS = [
    _cfg(w, s, BLOCK_J=j, BLOCK_K=k, GRID_PER_SM=g)
    for j, k, w, s, g in [(1, 4096, 4, 1, 4), (1, 2048, 4, 2, 4), (2, 2048, 4, 2, 4), (2, 1024, 4, 3, 4),
                          (4, 1024, 4, 3, 4), (4, 512, 4, 3, 4), (8, 256, 4, 3, 4), (8, 512, 4, 3, 4),
                          (16, 256, 4, 3, 4), (16, 512, 8, 3, 4), (32, 128, 4, 4, 4), (32, 256, 8, 3, 4),
                          (1, 4096, 4, 1, 8), (1, 4096, 8, 1, 16), (2, 4096, 8, 1, 4), (2, 4096, 8, 1, 8),
                          (4, 4096, 8, 1, 4), (2, 2048, 4, 2, 8), (4, 2048, 8, 2, 4)]
]
UP_FIXED = dict(BLOCK_J=32, BLOCK_K=64, GRID_PER_SM=2)  # interpreter: 2 programs, so ranges loop and split

# Sparse down on W_down^T rows: BLOCK_D output columns per program, SPLITS programs share the neurons
# of one column block (balanced ranges; partial sums folded by the last one to finish), BLOCK_J neurons per step.
# Batch 1 at 90% (session 5: down 10.7 µs for 9 MB, 0.84 TB/s, BLOCK_D 128 x BLOCK_J 64 x SPLITS 8): ~138 neurons
# per split in 3 dependent steps. Wider loads (BLOCK_D 512-1024) did not help; with ~1100 listed neurons, SPLITS 32-64
# and BLOCK_J >= n / SPLITS read every split's rows in one step (session 6 configs, last rows).
DOWN_CONFIGS = [
    _cfg(w, s, BLOCK_D=dd, BLOCK_J=j, SPLITS=sp)
    for dd, j, sp, w, s in [(128, 16, 4, 4, 3), (128, 32, 4, 4, 3), (128, 16, 8, 4, 3), (256, 16, 4, 4, 3),
                            (256, 32, 8, 8, 3), (64, 32, 8, 4, 3), (128, 64, 8, 4, 3), (256, 16, 16, 8, 3),
                            (128, 64, 16, 4, 3), (128, 32, 32, 4, 3), (64, 64, 32, 4, 3),
                            (512, 16, 16, 4, 3), (512, 16, 32, 8, 3), (1024, 16, 16, 8, 3), (1024, 16, 32, 8, 2),
                            (128, 64, 32, 4, 1), (256, 64, 16, 8, 1), (256, 32, 32, 4, 1), (64, 32, 64, 4, 1),
                            (128, 32, 64, 4, 1), (512, 32, 32, 8, 1)]
]
DOWN_FIXED = dict(BLOCK_D=64, BLOCK_J=32, SPLITS=2)
MAX_SPLITS = max(c.kwargs["SPLITS"] for c in DOWN_CONFIGS)
# Version 2 predicted path (triton_predicted.py). Up: program p reads the gate and up rows of the active
# neurons among positions [p*BLOCK_N, (p+1)*BLOCK_N); small BLOCK_N gives many programs (688 at 16 for
# d_ff=11008), so ~1100 active rows at 90% sparsity spread over every SM in one wave.
PRED_UP_CONFIGS = [
    _cfg(w, s, BLOCK_N=n, BLOCK_K=k)
    for n, k, w, s in [(8, 512, 4, 3), (16, 256, 4, 3), (16, 512, 4, 3), (16, 1024, 8, 2), (32, 256, 4, 3),
                       (32, 128, 4, 4), (64, 128, 4, 4), (64, 256, 8, 3)]
]
PRED_UP_FIXED = dict(BLOCK_N=32, BLOCK_K=32)  # interpreter: several programs and K steps at tiny shapes
# Down: BLOCK_D columns x SPLITS position ranges per column block (128 x 16 at d=4096: 512 programs);
# BLOCK_J positions per step, mostly inactive at 90% (their row loads are predicated off), hence large.
PRED_DOWN_CONFIGS = [
    _cfg(w, s, BLOCK_D=dd, BLOCK_J=j, SPLITS=sp)
    for dd, j, sp, w, s in [(128, 64, 8, 4, 3), (128, 128, 8, 4, 3), (128, 64, 16, 4, 3), (128, 32, 16, 4, 3),
                            (256, 64, 8, 8, 3), (256, 128, 16, 8, 3), (64, 64, 16, 4, 3), (64, 128, 32, 4, 3)]
]
PRED_DOWN_FIXED = dict(BLOCK_D=32, BLOCK_J=32, SPLITS=2)  # interpreter
PRED_MAX_SPLITS = max(c.kwargs["SPLITS"] for c in PRED_DOWN_CONFIGS)

# Predicted set at batch 1, compaction inside the up kernel (triton_compact_up.py): BLOCK_N neurons of the mask
# per program (~1.6 live at 90% for 16), their live rows BLOCK_R at a time, BLOCK_K of d per step.
COMPACT_UP_CONFIGS = [
    _cfg(w, s, BLOCK_N=n, BLOCK_R=r, BLOCK_K=k)
    for n, r, k, w, s in [(16, 1, 2048, 4, 2), (16, 2, 2048, 4, 2), (16, 2, 1024, 4, 3), (32, 2, 1024, 4, 3),
                          (32, 4, 1024, 4, 3), (16, 4, 512, 4, 3), (64, 4, 1024, 8, 3), (32, 1, 4096, 4, 1)]
]
COMPACT_UP_FIXED = dict(BLOCK_N=16, BLOCK_R=2, BLOCK_K=16)  # interpreter: several groups and K steps

# One token, one kernel over the neuron list (triton_rows_ffn.py): BLOCK_J listed neurons per step, their gate / up
# rows BLOCK_K of d per step (4096: a 7B row in one step), W_down^T rows whole (BLOCK_D, set at launch), a grid of
# GRID_PER_SM programs per SM. Each program adds its fp32 sum into one row with atomics.
ROWS_CONFIGS = [
    _cfg(w, s, BLOCK_J=j, BLOCK_K=k, GRID_PER_SM=g, PIPELINE=0)
    for j, k, w, s, g in [(1, 4096, 8, 1, 4), (1, 4096, 8, 1, 8), (1, 4096, 4, 1, 8), (2, 4096, 8, 1, 1),
                          (2, 4096, 8, 1, 2), (2, 4096, 8, 1, 4), (4, 4096, 8, 1, 1), (4, 4096, 16, 1, 1),
                          (4, 4096, 16, 1, 2), (1, 2048, 4, 2, 8), (2, 2048, 8, 2, 2), (4, 1024, 8, 3, 1),
                          (2, 1024, 4, 3, 4), (8, 512, 8, 3, 1)]
] + [
    # Software-pipelined (PIPELINE = how many blocks ahead the loads are issued; where W_down^T rows are read whole,
    # d_model <= 8192): every block's gate / up / W_down^T rows are read whole. BLOCK_K serves only wider models (the
    # plain loop). H100, 7B, 1101 listed neurons (session 8): PIPELINE 1 at BLOCK_J 2, 8 warps, one program per SM
    # 17.4-17.7 µs against 21.4-21.5 for the same plain config; PIPELINE 2 18.8 (two configs kept for other shapes).
    _cfg(w, 1, BLOCK_J=j, BLOCK_K=4096, GRID_PER_SM=g, PIPELINE=p)
    for j, w, g, p in [(1, 4, 1, 1), (1, 4, 2, 1), (1, 8, 1, 1), (1, 8, 2, 1), (2, 8, 1, 1), (2, 16, 1, 1), (2, 8, 2, 1),
                       (4, 16, 1, 1), (1, 8, 1, 2), (2, 8, 1, 2), (1, 8, 2, 2)]
]
# compile_report (sm_90, fp16): with the gate rows too (a predicted set), BLOCK_J 4 x BLOCK_K 4096 and 8 x 512 at 8-16
# warps spill 48-176 bytes of stack; the autotuner times them like the others.
# GATE_FIRST (launch_rows(gate_first=True), a tuning key of its own): each step waits for a gate tile's act before it
# issues that block's up / W_down^T loads, so more blocks in flight per SM may pay. compile_report's compile (sm_90,
# fp16, 4096, the predictor path's variant: index list, sum_is_out; not timed): registers off / on at BLOCK_J 1 x 8
# warps 94 / 92 (PIPELINE 1), 128 / 112 (PIPELINE 2: two programs per SM fit, hence the last config above); BLOCK_J 2
# x 8 warps 145 / 143 and 194 / 171; the plain loop 100 / 56 (J1) and 171 / 99 (J2); no spills in any ROWS_CONFIGS.
# Interpreter: 3 programs, ranges that loop; pipelined two blocks ahead where W_down^T rows are whole (the plain
# loop's several K steps: tests pass a PIPELINE=0 config, or force W_down^T column steps).
ROWS_FIXED = dict(BLOCK_J=2, BLOCK_K=16, GRID_PER_SM=3, PIPELINE=2)

# One token's exact FFN in one kernel (triton_gate_rows.py): BLOCK_N neurons per step, whole rows, GRID_PER_SM
# persistent programs per SM.
GATE_ROWS_CONFIGS = [_cfg(w, 1, BLOCK_N=n, GRID_PER_SM=g, STAGES=0)
                     for n, w, g in [(1, 4, 2), (1, 4, 3), (1, 4, 4), (1, 8, 2), (1, 8, 3), (2, 4, 2), (2, 8, 1),
                                     (2, 8, 2), (2, 16, 1), (4, 8, 1), (4, 16, 1)]]
# STAGES >= 2: the plain loop, gate rows copied STAGES - 1 blocks ahead by Triton's pipeliner (session 20).
GATE_ROWS_CONFIGS += [_cfg(w, 1, BLOCK_N=n, GRID_PER_SM=g, STAGES=s)
                      for n, w, g, s in [(1, 4, 2, 3), (1, 4, 2, 4), (1, 8, 2, 4), (1, 8, 1, 6), (1, 4, 3, 3),
                                         (1, 4, 4, 3), (1, 4, 4, 2), (1, 8, 3, 3), (1, 8, 4, 2), (2, 4, 1, 3),
                                         (2, 4, 2, 3), (2, 8, 1, 4), (2, 8, 2, 3), (4, 8, 1, 3)]]
# compile_report (sm_90, fp16, 4096): STAGES 3 / 4 / 6 at BLOCK_N 1: 49 / 74 / 123 KB of shared memory (cp.async gate
# rows), 58-64 registers at 8 warps, 126-128 at 4; BLOCK_N 2: 98-148 KB, 97-175 registers; BLOCK_N 4, STAGES 3: 197 KB.
# compile_report (sm_90, fp16, 4096): 85 registers at BLOCK_N 1 x 8 warps (three programs fit an SM), 139-244 at
# BLOCK_N 2-4 (one program per SM; GRID_PER_SM 2 then runs as two waves).
GATE_ROWS_FIXED = dict(BLOCK_N=2, GRID_PER_SM=3, STAGES=0)  # interpreter: 3 programs, many steps each

# Mask -> index-list compaction (predicted active sets).
COMPACT_CONFIGS = [_cfg(4, 1, BLOCK_N=n) for n in (256, 1024)]
COMPACT_FIXED = dict(BLOCK_N=128)

# A low-rank predictor's second layer + cut -> the union list at one token (triton_predictor_list.py): BLOCK_N rows of
# up [d_ff, rank] per program, BLOCK_K of the rank per step (ranks are small: 358-1024, often one step).
PREDICTOR_LIST_CONFIGS = [
    _cfg(w, s, BLOCK_N=n, BLOCK_K=k)
    for n, k, w, s in [(16, 512, 4, 1), (8, 512, 4, 1), (32, 256, 4, 2), (16, 256, 4, 2), (32, 512, 8, 1),
                       (8, 1024, 4, 1), (64, 128, 4, 3), (16, 1024, 8, 1)]
]
PREDICTOR_LIST_FIXED = dict(BLOCK_N=32, BLOCK_K=64)
# The same with the rows of up through TMA (16-byte aligned rows): the gate kernel's tiles and shorter ones.
PREDICTOR_LIST_TMA_CONFIGS = [
    triton.Config(dict(BLOCK_N=n, BLOCK_K=k, STAGES=s), num_warps=w, num_stages=1, pre_hook=_tma_block_hook)
    for n, k, w, s in [(16, 128, 4, 3), (8, 256, 4, 2), (16, 256, 4, 2), (32, 128, 4, 3), (8, 128, 4, 3),
                       (32, 256, 4, 2), (16, 512, 4, 1), (64, 128, 8, 3)]
]
PREDICTOR_LIST_TMA_FIXED = GATE_TMA_FIXED


def tuned(configs: list[triton.Config], fixed: dict, key: list[str], reset_to_zero: list[str] | None = None,
          restore_value: list[str] | None = None):
    """Decorator: `triton.autotune(configs, key)` on a GPU, timed by device time (tune_timing.py); the `fixed`
    block sizes under the interpreter.

    `reset_to_zero` names the atomic counters a timing run would otherwise leave incremented; `restore_value`
    the inputs a timing run changes (the down kernel zeroes the list lengths it read).
    """
    if INTERPRET:
        return triton.heuristics({name: (lambda value: lambda _args: value)(v) for name, v in fixed.items()})
    if QUICK_TUNING:
        configs = configs[::QUICK_STRIDE]

    def decorate(fn):
        tuner = triton.autotune(configs=configs, key=key, reset_to_zero=reset_to_zero, restore_value=restore_value,
                                prune_configs_by={"early_config_prune": _prune_for_tokens}, **_timer())(fn)
        AUTOTUNERS.append(tuner)
        return tuner
    return decorate


def _timer() -> dict:
    """`do_bench=graph_do_bench` where this Triton's autotune takes a timer (3.2+); else its own, said once."""
    import inspect
    if "do_bench" in inspect.signature(triton.autotune).parameters:
        from .tune_timing import graph_do_bench
        return {"do_bench": graph_do_bench}
    from .dispatch import warn_once
    warn_once(f"triton {triton.__version__}: autotune takes no do_bench; configs timed by Triton's own timer "
              "(host-bound for kernels under ~20 µs)")
    return {}

# Every autotuned kernel, so that a benchmark can forget the chosen configs between cases.
AUTOTUNERS: list = []
# Counts the resets below (the stream path launches its gate kernel first after one: it may tune again).
TUNE_GENERATION = 0


def reset_autotune_caches() -> None:
    """Forget every kernel's chosen config: the next call of each key tunes again, on its own data.
    The keys hold shapes and modes, not the sparsity (the host does not know the active count without a sync),
    so a sweep would otherwise run every sparsity with the configs tuned at the first one."""
    global TUNE_GENERATION
    TUNE_GENERATION += 1
    for tuner in AUTOTUNERS:
        tuner.cache.clear()


def autotuned_configs() -> dict[str, dict[str, str]]:
    """What the autotuner chose so far: {kernel name: {tuning key: config}}, for a benchmark's JSON."""
    picks: dict[str, dict[str, str]] = {}
    for tuner in AUTOTUNERS:
        name = getattr(tuner, "base_fn", tuner.fn).__name__
        picks.setdefault(name, {}).update({str(k): str(v) for k, v in tuner.cache.items()})
    return picks


def _prune_for_tokens(configs, named_args, **kwargs):
    """`tl.dot` (used when BLOCK_T > 1) needs every dot dimension >= 16: drop smaller neuron blocks there.
    The wide down blocks (BLOCK_D > 256) are for batch 1: with tokens, their [BLOCK_T, BLOCK_D] tiles overflow
    shared memory and registers (compile_report: 256 KB and stack spills at BLOCK_T=64, BLOCK_D=1024)."""
    block_t = kwargs.get("BLOCK_T", named_args.get("BLOCK_T", 1))
    if block_t == 1:
        return configs
    kept = [c for c in configs if c.kwargs.get("BLOCK_J", 16) >= 16 and c.kwargs.get("BLOCK_N", 16) >= 16
            and c.kwargs.get("BLOCK_D", 0) <= MAX_BLOCK_D_WITH_TOKENS and _dot_smem_bytes(c, block_t) <= SMEM_BUDGET]
    return kept or configs


MAX_BLOCK_D_WITH_TOKENS = 256
# Hopper allows 227 KB of shared memory per block; tl.dot pipelines stage x and weight tiles there.
SMEM_BUDGET = 200_000


def _dot_smem_bytes(config: triton.Config, block_t: int) -> int:
    """Estimate (2-byte operands): (tokens + weight rows) x BLOCK_K per pipeline stage; compile_report
    showed the configs above this failing to fit (e.g. BLOCK_T=64, BLOCK_K=512, 3 stages: 240 KB)."""
    rows = config.kwargs.get("BLOCK_N", config.kwargs.get("BLOCK_J", 0))
    return (block_t + rows) * config.kwargs.get("BLOCK_K", 0) * 2 * config.num_stages

