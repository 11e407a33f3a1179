"""GPU probe: repeat the one-token TMA rows path (DispatchConfig(rows_tma=True)) eagerly and in CUDA-graph replays and
count outputs that move by more than one output ulp from the first call, and calls that leave the sum row non-zero;
the register-load rows kernel alongside. Usage: python3 scripts/device/probe_rows_tma.py [calls]"""
import sys

import torch

from actsparse.kernels import DispatchConfig, SparseFFN, configs
from actsparse.kernels.bench_data import make_inputs, make_weight_sets, neuron_probabilities, set_gate_bias, true_active

calls = int(sys.argv[1]) if len(sys.argv) > 1 else 20
for d, f in [(5120, 13824), (4096, 11008)]:
    for dtype in (torch.bfloat16, torch.float16):
        gen = torch.Generator(device="cuda").manual_seed(1)
        ws = make_weight_sets(d, f, dtype, "cuda", 1)[0]
        set_gate_bias(ws, neuron_probabilities(f, 0.9, torch.Generator().manual_seed(0)))
        x = make_inputs(1, d, dtype, "cuda", gen)
        mask = true_active(ws, x)
        ref = (torch.relu(x.double() @ ws.w_gate.double().T) * (x.double() @ ws.w_up.double().T)) @ ws.w_down.double().T
        for name, cfg in [("rows", DispatchConfig(exact_kernel="rows")), ("rows_tma", DispatchConfig(exact_kernel="rows", rows_tma=True))]:
            for fp32 in (False, True):
                ffn = SparseFFN(ws.w_gate, ws.w_up, ws.w_down_t, dispatch=cfg)
                first = ffn(x, fp32_out=fp32).clone()
                err = float((first.double() - ref).norm() / ref.norm())
                ulp = torch.finfo(dtype).eps
                bad_eager = bad_acc = 0
                for _ in range(calls):
                    y = ffn(x, fp32_out=fp32)
                    bad_eager += int(not torch.allclose(y.float(), first.float(), rtol=ulp, atol=ulp))
                    bad_acc += int(ffn._rows_acc.any())
                g = torch.cuda.CUDAGraph()
                with torch.cuda.graph(g):
                    out = ffn(x, fp32_out=fp32)
                bad_graph, worst = 0, 0.0
                for _ in range(calls):
                    g.replay()
                    diff = (out.float() - first.float()).abs()
                    bad = int((diff > ulp * (1 + first.float().abs())).sum())
                    bad_graph += int(bad > 0)
                    worst = max(worst, float(diff.max()))
                    bad_acc += int(ffn._rows_acc.any())
                torch.cuda.synchronize()
                print(f"{d}x{f} {str(dtype)[6:]} {name:8s} fp32_out={fp32!s:5s} rel_err {err:.2e} eager moved {bad_eager}/{calls} "
                      f"graph moved {bad_graph}/{calls} (worst {worst:.3g}) sum row left non-zero {bad_acc}", flush=True)
picks = configs.autotuned_configs()
print({k: v for k, v in picks.items() if "rows" in k})
