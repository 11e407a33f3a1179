"""fatrelu_sweep against references computed without it: gate outputs below t counted by hooks, and the
perplexity of a model converted to FATReLU(t) directly."""
import math

import pytest
import torch
import torch.nn.functional as F

from actsparse.eval import fatrelu_sweep
from actsparse.modeling import sparse_mlps, sparsify


def _model(activation="relu", threshold=0.0):
    from transformers import LlamaConfig, LlamaForCausalLM
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(hidden_size=32, intermediate_size=64, num_attention_heads=4,
                                         num_key_value_heads=2, num_hidden_layers=2, vocab_size=61)).eval()
    return sparsify(model, activation, threshold)


def _reference(threshold, batches):
    """Fresh model converted to FATReLU(t) (ReLU at 0): share of gate outputs < t (ties kept, as g >= t) per
    layer, mean over layers; perplexity from the logits in float64."""
    model = _model("relu" if threshold == 0 else "fatrelu", threshold)
    below = {i: [0, 0] for i in range(2)}
    hooks = [m.gate_proj.register_forward_hook(
        lambda _m, _a, out, i=i: below[i].__setitem__(slice(0, 2), [below[i][0] + int((out < threshold).sum()
                                                                    if threshold > 0 else (out <= 0).sum()),
                                                                    below[i][1] + out.numel()]))
        for i, m in enumerate(sparse_mlps(model))]
    nll, n = 0.0, 0
    with torch.no_grad():
        for ids in batches:
            logits = model(input_ids=ids).logits.double()
            nll += F.cross_entropy(logits[:, :-1].reshape(-1, 61), ids[:, 1:].reshape(-1), reduction="sum").item()
            n += ids[:, 1:].numel()
    for h in hooks:
        h.remove()
    return sum(z / e for z, e in below.values()) / 2, math.exp(nll / n)


def test_sweep_matches_models_converted_at_each_threshold_and_restores_the_model():
    batches = list(torch.randint(0, 61, (3, 2, 16)))
    model = _model("fatrelu", 0.02)
    thresholds = [0.05, 0.01, 0.2]
    result = fatrelu_sweep.sweep(model, batches, thresholds, max_ppl_increase=0.02)
    assert [r["threshold"] for r in result["rows"]] == [0.0, 0.01, 0.05, 0.2]   # sorted, t = 0 added
    for row in result["rows"]:
        sparsity, ppl = _reference(row["threshold"], batches)
        assert row["sparsity"] == pytest.approx(sparsity, abs=1e-9)
        assert row["ppl"] == pytest.approx(ppl, rel=1e-5)
    sp = [r["sparsity"] for r in result["rows"]]
    assert sp == sorted(sp) and sp[-1] > sp[0]
    ok = [r["threshold"] for r in result["rows"] if r["ppl"] / result["rows"][0]["ppl"] <= 1.02]
    assert result["chosen_threshold"] == max(ok)
    assert all(m.activation == "fatrelu" and m.threshold == 0.02 for m in sparse_mlps(model))


def test_sweep_refuses_a_model_without_a_gate_only_activation():
    with pytest.raises(ValueError, match="ReLU or FATReLU model; found drelu"):
        fatrelu_sweep.sweep(_model("drelu"), [torch.randint(0, 61, (1, 8))], [0.01])


def test_cli_writes_the_table_json_and_plot(tmp_path, capsys):
    from actsparse.modeling import export_hf
    export_hf(_model(), tmp_path / "m")
    from transformers import PreTrainedTokenizerFast
    from tokenizers import Tokenizer, models, pre_tokenizers
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(["[UNK]", "</s>", *"abcdefghij"])}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="</s>", unk_token="[UNK]").save_pretrained(tmp_path / "m")
    (tmp_path / "text.txt").write_text("\n\n".join(" ".join("abcdefghij"[(i * j) % 10] for j in range(40))
                                                   for i in range(1, 8)))
    (tmp_path / "e.yaml").write_text(f"model: {tmp_path / 'm'}\ndevice: cpu\n"
                                     f"data: {{source: txt, path: {tmp_path / 'text.txt'}, seq_len: 16, batch_size: 2, num_batches: 2}}\n"
                                     "quality: {add_bos_token: false}\n")
    assert fatrelu_sweep.main([str(tmp_path / "e.yaml"), "--thresholds", "0.01,0.1", "--out", str(tmp_path / "s.json"),
                               "--png", str(tmp_path / "s.png")]) == 0
    out = capsys.readouterr().out
    assert "largest t within +1% perplexity" in out and (tmp_path / "s.png").stat().st_size > 0
    import json
    assert len(json.loads((tmp_path / "s.json").read_text())["rows"]) == 3
    assert fatrelu_sweep.main([str(tmp_path / "e.yaml"), "--thresholds", "-1"]) == 2
