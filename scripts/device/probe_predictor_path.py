"""GPU probe: the predictor path's kernels at one token, 7B shape, as a decode step runs them.

32 layers' FFNs (each its own weights and stand-in predictor, 11% truly active, 15% predicted) called back to back
inside one CUDA graph, as the 32-layer decode step calls them; the graph replay is timed with CUDA events (median of
`reps`) and divided by 32. Variants side by side in one run:
- `path, <variant>`: the whole predictor path (fp32 sum: GEMV, list kernel, rows kernel) as VARIANTS dispatch it,
  with and without PDL or gate_first; the eager outputs are compared with the default's, and each kernel's device
  time is taken from a profiled eager run;
- `gemv`: the predictor's first layer alone; `gemv + list`: with the list kernel (+ a memset of the list length,
  which the rows kernel resets otherwise); `memset`: that memset alone.
Usage: python3 scripts/device/probe_predictor_path.py [reps]
"""
import sys

import torch

from actsparse.kernels import DispatchConfig, SparseFFN
from actsparse.kernels.bench_data import make_inputs, make_weight_sets, neuron_probabilities, set_gate_bias, true_active
from actsparse.kernels.bench_predictor import GateSVDPredictor
from actsparse.kernels.bench_timing import time_calls_us
from actsparse.kernels.triton_gemv import gemv_kernel
from actsparse.kernels.triton_predictor_list import (launch_predictor_list, predictor_hidden,
                                                     predictor_list_tma_kernel)

LAYERS, D, F, RANK = 32, 4096, 11008, 358
VARIANTS = {"three kernels": DispatchConfig(gate_first=False),
            "three kernels, pdl": DispatchConfig(pdl=True, gate_first=False),
            "three kernels, gate_first": DispatchConfig(gate_first=True),
            "three kernels, pdl, gate_first": DispatchConfig(pdl=True, gate_first=True)}


def layers(dtype):
    sets = make_weight_sets(D, F, dtype, "cuda", LAYERS * 3 * D * F * 2)[:LAYERS]
    gen = torch.Generator(device="cuda").manual_seed(1)
    sample = make_inputs(64, D, dtype, "cuda", gen)
    out = []
    for i, ws in enumerate(sets):
        set_gate_bias(ws, neuron_probabilities(F, 0.89, torch.Generator().manual_seed(i)))
        pred = GateSVDPredictor(ws.w_gate, None, RANK)
        pred.set_margin(sample, 0.15)
        out.append((ws, pred.low_rank_logits(), pred(sample) & true_active(ws, sample), true_active(ws, sample)))
    recall = sum(float(hit.sum() / act.sum()) for _, _, hit, act in out) / len(out)
    print(f"{len(out)} layers, truly active {float(sum(a.float().mean() for *_, a in out) / len(out)):.3f}, "
          f"predictor recall {recall:.3f}")
    return [(ws, lr) for ws, lr, _, _ in out], make_inputs(1, D, dtype, "cuda", gen)


def kernel_us(calls, names) -> dict:
    """Device time (µs per layer) of each kernel whose name contains one of `names`, over one eager run of `calls`
    (profiler)."""
    from torch.profiler import ProfilerActivity, profile
    for call in calls:
        call()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for call in calls:
            call()
        torch.cuda.synchronize()
    out = dict.fromkeys(names, 0.0)
    for e in prof.events():
        name = next((n for n in names if e.device_type.name == "CUDA" and n in e.name), None)
        if name is not None:
            out[name] += e.device_time / LAYERS
    return out


def main(reps: int) -> None:
    torch.manual_seed(0)
    dtype = torch.float16
    lays, x = layers(dtype)
    results = {}
    checks = {}
    for name, dispatch in VARIANTS.items():
        ffns = [SparseFFN(ws.w_gate, ws.w_up, ws.w_down_t, dispatch=dispatch) for ws, _ in lays]
        calls = [lambda f=f, lr=lr: f(x, lr, fp32_out=True) for f, (_, lr) in zip(ffns, lays)]
        checks[name] = torch.stack([call()[0] for call in calls])
        results[f"path, {name}"] = time_calls_us(calls, reps)["us"]
        print(f"path {name}: list config {getattr(predictor_list_tma_kernel, 'best_config', None)}, "
              f"gemv config {getattr(gemv_kernel, 'best_config', None)}", flush=True)
        kernels = kernel_us(calls, ("gemv_kernel", "predictor_list", "rows_ffn_kernel"))
        print("  kernels, µs per layer (eager, profiler): " + ", ".join(f"{k} {v:.2f}" for k, v in kernels.items()))
    base = checks["three kernels"].double()
    for name, out in checks.items():   # eager outputs of the 32 layers against the three kernels'
        print(f"{name}: max |out - three kernels'| / max |three kernels'| "
              f"{float((out.double() - base).abs().max() / base.abs().max()):.2e}")
    counts = [torch.zeros(2, dtype=torch.int32, device="cuda") for _ in lays]
    idx = [torch.empty(F, dtype=torch.int32, device="cuda") for _ in lays]
    results["gemv"] = time_calls_us([lambda lr=lr: predictor_hidden(x, lr.down, False) for _, lr in lays], reps)["us"]
    for pdl in (False, True):
        results[f"gemv + list (+ memset), pdl {pdl}"] = time_calls_us(
            [lambda lr=lr, c=c, i=i, pdl=pdl: (launch_predictor_list(x, lr, c, i, pdl=pdl), c.zero_())
             for (_, lr), c, i in zip(lays, counts, idx)], reps)["us"]
    results["memset"] = time_calls_us([lambda c=c: c.zero_() for c in counts], reps)["us"]
    print("| variant | µs per layer |\n|---|---|")
    for name, us in results.items():
        print(f"| {name} | {us:.2f} |")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 20)
