"""docs_tasks: lm-eval tasks from a local text file. Parsing against the text written here; then both tasks run
through lm-eval (offline, `datasets`' json builder) on a tiny model, the last-word accuracy against a greedy
check computed by hand from float64 logits."""
import json
import math

import pytest
import torch
import yaml

pytest.importorskip("lm_eval")

from actsparse.eval import docs_tasks  # noqa: E402
from actsparse.eval.lm_eval_adapter import run_task_groups, wrap_model  # noqa: E402
from actsparse.eval.task_groups import load_task_groups  # noqa: E402
from task_tokenizer import task_words_tokenizer  # noqa: E402
from tiny_models import tiny_llama  # noqa: E402

WORDS = ("the worker sends each task result to the broker and the client reads it back when the result is ready "
         "so that nothing waits longer than the timeout which the user configured for the queue").split()


def paragraph(i: int, n_sentences: int = 3) -> str:
    sents = [" ".join(WORDS[(i + 3 * k) % 20:(i + 3 * k) % 20 + 8]).capitalize() + "." for k in range(n_sentences)]
    return " ".join(sents) + f" Paragraph {'abcdefghij'[i % 10] * 3}word."


def source_text(n: int = 12) -> str:
    blocks = []
    for i in range(n):
        blocks.append(paragraph(i))
        blocks.append("    indented code block that looks like prose but is code " * 3)   # skipped: indented
        blocks.append("Short heading")                                                      # skipped: short
        blocks.append("See :: the_function() for " + " ".join(WORDS[:30]))                  # skipped: code hints
    return "\n\n".join(blocks) + "\n"


def test_parsing_keeps_prose_and_builds_both_tasks(tmp_path):
    src = tmp_path / "heldout.txt"
    src.write_text(source_text())
    paras = docs_tasks.prose_paragraphs(src.read_text())
    assert paras == [paragraph(i) for i in range(12)]
    counts = docs_tasks.write_tasks(src, tmp_path / "tasks", max_docs=100, seed=1)
    assert counts == {"lastword": 12, "next": 12}
    last = [json.loads(line) for line in open(tmp_path / "tasks" / "docs_lastword.jsonl")]
    assert {d["context"] + " " + d["target"] + "." for d in last} == set(paras)
    for d in (json.loads(line) for line in open(tmp_path / "tasks" / "docs_next.jsonl")):
        para = next(p for p in paras if p.startswith(d["context"]))
        assert len(d["choices"]) == 4 and para.startswith(d["context"] + " " + d["choices"][d["answer"]])
    again = docs_tasks.write_tasks(src, tmp_path / "again", max_docs=100, seed=1)
    assert again == counts and (tmp_path / "again" / "docs_next.jsonl").read_text() == \
        (tmp_path / "tasks" / "docs_next.jsonl").read_text()


def test_too_little_prose_is_one_line_error(tmp_path, capsys):
    src = tmp_path / "code.txt"
    src.write_text("    x = 1\n\nshort\n")
    assert docs_tasks.main([str(src), "--out", str(tmp_path / "t")]) == 2
    err = capsys.readouterr().err
    assert str(src) in err and "too little prose" in err and err.count("\n") == 1


def lastword_reference(model, tok, docs) -> tuple[float, float]:
    """(greedy accuracy, perplexity = exp(-mean log-likelihood of the last word)) from float64 logits."""
    hits, lls = 0, []
    for d in docs:
        ctx = [tok.bos_token_id] + tok(d["context"], add_special_tokens=False)["input_ids"]
        cont = tok(" " + d["target"], add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            logp = torch.log_softmax(model.double()(torch.tensor([ctx + cont])).logits[0], -1)
        model.float()
        hits += all(int(logp[len(ctx) - 1 + i].argmax()) == t for i, t in enumerate(cont))
        lls.append(sum(float(logp[len(ctx) - 1 + i, t]) for i, t in enumerate(cont)))
    return hits / len(docs), math.exp(-sum(lls) / len(lls))


def test_tasks_run_offline_through_lm_eval(tmp_path, monkeypatch):
    import lm_eval.evaluator
    monkeypatch.setattr(lm_eval.evaluator, "add_env_info", lambda results: None)
    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        monkeypatch.setenv(var, "1")
    src = tmp_path / "heldout.txt"
    src.write_text(source_text())
    tasks = tmp_path / "tasks"
    docs_tasks.write_tasks(src, tasks, max_docs=6)
    vocab_dir = tmp_path / "vocab"
    vocab_dir.mkdir()
    (vocab_dir / "words.jsonl").write_text(json.dumps({"text": src.read_text()}) + "\n")
    tok = task_words_tokenizer(str(vocab_dir))
    torch.manual_seed(0)
    model = tiny_llama(vocab_size=len(tok), bos_token_id=1, eos_token_id=2, pad_token_id=3)
    # The shipped groups, plus the last-word task's perplexity (a continuous check of the same log-likelihoods).
    spec = yaml.safe_load((tasks / "task_groups.yaml").read_text())
    spec["groups"]["docs_lastword_ppl"] = {"tasks": [{"task": "actsparse_docs_lastword", "num_fewshot": 0,
                                                      "metric": "perplexity,none", "scale": 1,
                                                      "higher_is_better": False}]}
    (tmp_path / "groups.yaml").write_text(yaml.safe_dump(spec))
    lm = wrap_model(model, tok, batch_size=2, add_bos_token=True)
    table = load_task_groups(str(tmp_path / "groups.yaml"))
    out = run_task_groups(lm, *table.select(["docs"]), include_paths=[str(tasks)])
    assert out.suites["docs"]["complete"]
    acc, nxt = out.tasks["actsparse_docs_lastword:0shot"], out.tasks["actsparse_docs_next:0shot"]
    assert (acc["metric"], nxt["metric"]) == ("acc,none", "acc_norm,none")
    ppl = run_task_groups(lm, *table.select(["docs_lastword_ppl"]),
                          include_paths=[str(tasks)]).tasks["actsparse_docs_lastword:0shot"]
    assert acc["samples"] == 6 and nxt["samples"] == 6
    docs = [json.loads(line) for line in open(tasks / "docs_lastword.jsonl")]
    ref_acc, ref_ppl = lastword_reference(model, tok, docs)
    assert acc["value"] == pytest.approx(ref_acc) and ppl["value"] == pytest.approx(ref_ppl, rel=1e-4)
    assert 0.0 <= nxt["value"] <= 1.0
