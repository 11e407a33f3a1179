import inspect, torch, triton
from triton.runtime import autotuner
src = inspect.getsource(autotuner.Autotuner.run)
print("\n".join(l for l in src.splitlines() if "hook" in l or "reset" in l or "restore" in l))
from actsparse.kernels import SparseFFN
from actsparse.kernels.dispatch import DispatchConfig
from actsparse.kernels.bench_data import make_weight_sets, set_gate_bias, neuron_probabilities, make_inputs
from actsparse.kernels import triton_stream_rows as tsr
d, f = 4096, 11008
ws = make_weight_sets(d, f, torch.float16, "cuda", 1)[0]
set_gate_bias(ws, neuron_probabilities(f, 0.9, torch.Generator().manual_seed(0)))
x = make_inputs(1, d, torch.float16, "cuda", torch.Generator(device="cuda").manual_seed(0))
rows = SparseFFN(ws.w_gate, ws.w_up, ws.w_down_t, dispatch=DispatchConfig(exact_kernel="rows"))
ref = rows(x).float()
print("active", int((torch.relu(x.float() @ ws.w_gate.float().t()) > 0).sum()))
for mode in ["gate_first", "consumer_first", "consumer_first_p1"]:
    ffn = SparseFFN(ws.w_gate, ws.w_up, ws.w_down_t, dispatch=DispatchConfig(exact_kernel="stream", stream_programs=(1/132 if mode.endswith("p1") else 0.5)))
    for i in range(6):
        if mode == "gate_first":
            ffn._stream_tuned = -5
        out = ffn(x).float()
        torch.cuda.synchronize()
        ent, sync = ffn._stream_state
        print(mode, i, "err %.3e" % (out - ref).abs().max().item(), "nonempty", int((ent != -1).sum()), "sync", sync.tolist(),
              "counts", int(ffn._list_state[0]), "acc", float(ffn._rows_acc.abs().max()), flush=True)
