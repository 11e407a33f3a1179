import torch
from actsparse.kernels import SparseFFN
from actsparse.kernels.dispatch import DispatchConfig
from actsparse.kernels.bench_data import make_weight_sets, set_gate_bias, neuron_probabilities, make_inputs
d, f = 4096, 11008
ws = make_weight_sets(d, f, torch.float16, "cuda", 1)[0]
set_gate_bias(ws, neuron_probabilities(f, 0.9, torch.Generator().manual_seed(0)))
x = make_inputs(1, d, torch.float16, "cuda", torch.Generator(device="cuda").manual_seed(0))
rows = SparseFFN(ws.w_gate, ws.w_up, ws.w_down_t, dispatch=DispatchConfig(exact_kernel="rows"))
ref = rows(x).float()
for kw in [{}, dict(stream_warps=8), dict(stream_programs=0.25), dict(stream_programs=1.0)]:
    ffn = SparseFFN(ws.w_gate, ws.w_up, ws.w_down_t, dispatch=DispatchConfig(exact_kernel="stream", **kw))
    errs = []
    for i in range(40):
        out = ffn(x).float()
        torch.cuda.synchronize()
        errs.append((out - ref).abs().max().item())
    ent, sync = ffn._stream_state
    print(kw, "max err %.3e" % max(errs), "calls over 2e-3:", sum(e > 2e-3 for e in errs), "state", int((ent != -1).sum()), sync.tolist(), flush=True)
