import torch
from actsparse.kernels import SparseFFN
from actsparse.kernels.dispatch import DispatchConfig
from actsparse.kernels.bench_data import make_weight_sets, set_gate_bias, neuron_probabilities, make_inputs
from actsparse.kernels import triton_stream_rows as tsr
from actsparse.kernels.triton_stream_rows import launch_stream_exact, stream_state
d, f = 4096, 11008
ws = make_weight_sets(d, f, torch.float16, "cuda", 1)[0]
set_gate_bias(ws, neuron_probabilities(f, 0.9, torch.Generator().manual_seed(0)))
x = make_inputs(1, d, torch.float16, "cuda", torch.Generator(device="cuda").manual_seed(0))
rows = SparseFFN(ws.w_gate, ws.w_up, ws.w_down_t, dispatch=DispatchConfig(exact_kernel="rows"))
ref = rows(x).float()
g = (x.float() @ ws.w_gate.float().t())[0]
act_ids = set(torch.nonzero(g > 0).flatten().tolist())
print("active", len(act_ids))
counts = torch.zeros(65, dtype=torch.int32, device="cuda")
entries, sync = stream_state(f, "cuda")
acc = torch.zeros(d, dtype=torch.float32, device="cuda")
P = 66
for i in range(12):
    dbg = torch.full((P * 64 * 8,), -7, dtype=torch.int64, device="cuda")
    out = torch.empty(1, d, dtype=torch.float16, device="cuda")
    launch_stream_exact(x, ws.w_gate, None, ws.w_up, None, ws.w_down_t, None, "relu", 0.0, counts, entries, sync, acc, out, P, 2, 4, gate_first=(i == 0), debug=dbg)
    torch.cuda.synchronize()
    r = dbg.view(P, 64, 8).cpu()
    seen, bad, acts = [], [], {}
    for p in range(P):
        for k in range(64):
            rec = r[p, k].tolist()
            if rec[0] == -7: break
            for lane in range(2):
                e, pos = rec[lane], rec[2 + lane]
                if e == -1: continue
                nid = e & 0xFFFFFFFF
                import struct
                acts[nid] = struct.unpack("f", struct.pack("I", (e >> 32) & 0xFFFFFFFF))[0]
                seen.append(nid)
                if nid not in act_ids: bad.append((p, k, lane, pos, hex(e), rec[4]))
    dup = len(seen) - len(set(seen))
    ids = torch.tensor(sorted(acts), device="cuda")
    av = torch.tensor([acts[k] for k in sorted(acts)], device="cuda", dtype=torch.float64)
    act_err = (av - torch.relu(g.double())[ids]).abs().max().item()
    host = ((av * (x.double() @ ws.w_up.double()[ids].t())[0])[None] @ ws.w_down_t.double()[ids]).float()
    print("   act_err %.3e host-vs-ref %.3e host-vs-out %.3e acc-left %.3e" % (act_err, (host - ref).abs().max().item(), (host - out.float()).abs().max().item(), acc.abs().max().item()))
    print(i, "err %.3e" % (out.float() - ref).abs().max().item(), "seen", len(seen), "unique", len(set(seen)), "missing", len(act_ids - set(seen)), "dup", dup, "bad", len(bad), bad[:5],
          "state", int((entries != -1).sum()), sync.tolist(), int(counts[0]), flush=True)
