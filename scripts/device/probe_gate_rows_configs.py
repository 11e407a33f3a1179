"""GPU probe: every gate_rows_kernel config's autotuning time at the 7B FFN, batch 1, 90% (bench-kernels' pattern).

bench-kernels times the config the autotuner picks (`ours_union_gate_rows`); this prints what the autotuner measured
for each of GATE_ROWS_CONFIGS (hand-pipelined STAGES 0 and the pipeliner's STAGES >= 2), sorted, so that the
direction of a change (programs per SM, warps, stages) can be read from one run. The autotuner times repeated calls
on one weight set (108 MB of reads per call, past the 50 MB L2).
Usage: python3 scripts/device/probe_gate_rows_configs.py
"""
import torch

from actsparse.kernels import DispatchConfig, SparseFFN
from actsparse.kernels.bench_data import make_inputs, make_weight_sets, neuron_probabilities, set_gate_bias
from actsparse.kernels.triton_gate_rows import gate_rows_kernel


def main() -> None:
    d, f = 4096, 11008
    ws = make_weight_sets(d, f, torch.float16, "cuda", 1)[0]
    set_gate_bias(ws, neuron_probabilities(f, 0.9, torch.Generator().manual_seed(900)))
    x = make_inputs(1, d, torch.float16, "cuda", torch.Generator(device="cuda").manual_seed(0))
    ffn = SparseFFN(ws.w_gate, ws.w_up, ws.w_down_t, activation="relu",
                    dispatch=DispatchConfig(exact_kernel="gate_rows"))
    ffn(x)
    torch.cuda.synchronize()
    timings = sorted((float(t[0] if isinstance(t, (list, tuple)) else t), str(c))
                     for c, t in gate_rows_kernel.configs_timings.items())
    print(f"# {torch.cuda.get_device_name()}: gate_rows_kernel at {d} x {f}, batch 1, 90%; autotuner µs per call")
    for us, cfg in timings:
        print(f"{us * 1e3:8.1f} µs  {cfg}")


if __name__ == "__main__":
    main()
