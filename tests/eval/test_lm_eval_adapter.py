"""lm-eval adapter on a tiny random LLaMA with a tiny WordLevel tokenizer and the offline tasks in data/.

References are computed by hand from the model's float64 logits: choice log-likelihoods for the
multiple-choice task and the summed token log-probabilities for the rolling perplexity task.
"""
import json
import math
import os

import pytest
import torch

pytest.importorskip("lm_eval")

from actsparse.eval.lm_eval_adapter import (MissingTaskData, run_task_groups, summarize, task_key,  # noqa: E402
                                            wrap_model)
from actsparse.eval.task_groups import Suite, TaskGroup, TaskSpec, load_task_groups  # noqa: E402
from task_tokenizer import task_words_tokenizer  # noqa: E402
from tiny_models import tiny_llama  # noqa: E402

DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data")


@pytest.fixture(autouse=True, scope="module")
def fast_cpu():
    """One torch thread: on the shared 2-core test machine two threads contend (8 ms -> 200 ms a forward)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def no_env_report(monkeypatch):
    """lm-eval's per-call environment report runs `collect_env` subprocesses (~2 s); tests do not read it."""
    import lm_eval.evaluator
    monkeypatch.setattr(lm_eval.evaluator, "add_env_info", lambda results: None)


tiny_tokenizer = task_words_tokenizer


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


@pytest.fixture(scope="module")
def model(tok):
    return tiny_llama(vocab_size=len(tok), bos_token_id=1, eos_token_id=2, pad_token_id=3)


@pytest.fixture
def offline(monkeypatch):
    import datasets.config
    import huggingface_hub.constants
    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        monkeypatch.setenv(var, "1")
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_OFFLINE", True, raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)


def record_inputs(model):
    seen = []

    def hook(module, args, kwargs):
        ids = kwargs.get("input_ids", args[0] if args else None)
        seen.append(ids.detach().clone())
    return seen, model.register_forward_pre_hook(hook, with_kwargs=True)


def groups(names):
    return load_task_groups(os.path.join(DATA, "task_groups.yaml")).select(names)


def test_first_token_the_model_sees_is_bos(offline, model, tok):
    seen, handle = record_inputs(model)
    try:
        lm = wrap_model(model, tok, batch_size=4, add_bos_token=True)
        gs, suites = groups(["tiny_mc", "tiny_ppl"])
        run_task_groups(lm, gs, suites, include_paths=[DATA])
    finally:
        handle.remove()
    assert seen
    for ids in seen:
        assert (ids[:, 0] == tok.bos_token_id).all(), ids
        assert (ids[:, 1] != tok.bos_token_id).all(), ids    # exactly one BOS, also in rolling windows
    assert tok("the cat")["input_ids"][0] != tok.bos_token_id   # the caller's tokenizer is untouched


def test_add_bos_token_false_feeds_text_first(offline, model, tok):
    seen, handle = record_inputs(model)
    try:
        lm = wrap_model(model, tok, batch_size=4, add_bos_token=False)
        run_task_groups(lm, *groups(["tiny_mc"]), include_paths=[DATA])
    finally:
        handle.remove()
    assert all((ids[:, 0] != tok.bos_token_id).all() for ids in seen)


def logprobs_float64(model, ids):
    with torch.no_grad():
        logits = model.double()(torch.tensor([ids])).logits[0]
    model.float()
    return torch.log_softmax(logits, -1)


def reference_mc_accuracy(model, tok):
    correct = 0
    rows = [json.loads(line) for line in open(os.path.join(DATA, "tiny_mc.jsonl"))]
    for row in rows:
        ctx = [tok.bos_token_id] + tok(row["question"], add_special_tokens=False)["input_ids"]
        scores = []
        for choice in row["choices"]:
            cont = tok(choice, add_special_tokens=False)["input_ids"]
            lp = logprobs_float64(model, ctx + cont)
            scores.append(sum(float(lp[len(ctx) - 1 + i, t]) for i, t in enumerate(cont)))
        correct += int(max(range(len(scores)), key=scores.__getitem__) == row["answer"])
    return correct / len(rows)


def reference_word_perplexity(model, tok):
    total_logprob, words = 0.0, 0
    for line in open(os.path.join(DATA, "tiny_ppl.jsonl")):
        text = json.loads(line)["text"]
        ids = [tok.bos_token_id] + tok(text, add_special_tokens=False)["input_ids"]
        lp = logprobs_float64(model, ids)
        total_logprob += sum(float(lp[i - 1, ids[i]]) for i in range(1, len(ids)))
        words += len(text.split())
    return math.exp(-total_logprob / words)


def test_scores_match_hand_computed_references(offline, model, tok):
    lm = wrap_model(model, tok, batch_size=2, add_bos_token=True)
    gs, suites = groups(["tiny", "tiny_ppl"])
    out = run_task_groups(lm, gs, suites, include_paths=[DATA])
    mc = out.tasks["actsparse_tiny_mc:0shot"]
    assert mc["value"] == pytest.approx(reference_mc_accuracy(model, tok))
    assert mc["score"] == pytest.approx(100 * mc["value"]) and mc["samples"] == 8
    ppl = out.tasks["actsparse_tiny_ppl:0shot"]
    assert ppl["value"] == pytest.approx(reference_word_perplexity(model, tok), rel=1e-4)
    assert ppl["score"] == ppl["value"] and ppl["higher_is_better"] is False
    two_shot = out.tasks["actsparse_tiny_mc:2shot"]
    assert out.groups["tiny_mc"]["score"] == pytest.approx((mc["score"] + two_shot["score"]) / 2)
    assert out.suites["tiny"]["average"] == pytest.approx(out.groups["tiny_mc"]["score"])


def test_group_and_suite_means_and_incomplete_suites():
    a, b, c = TaskSpec("a", 0, "acc,none"), TaskSpec("b", 5, "acc,none"), TaskSpec("c", 0, "acc,none")
    tasks = {task_key(a): {"score": 40.0}, task_key(b): {"score": 60.0}, task_key(c): {"score": 90.0}}
    gs = [TaskGroup("ab", (a, b)), TaskGroup("c", (c,)), TaskGroup("d", (TaskSpec("d", 0, "acc,none"),))]
    group_rows, suite_rows = summarize(tasks, gs, [Suite("s", ("ab", "c")), Suite("t", ("ab", "d"))])
    assert group_rows["ab"]["score"] == 50.0 and group_rows["c"]["score"] == 90.0
    assert group_rows["d"]["score"] is None and not group_rows["d"]["complete"]
    assert suite_rows["s"]["average"] == 70.0 and suite_rows["s"]["complete"]
    assert suite_rows["t"]["average"] is None and not suite_rows["t"]["complete"]


def test_missing_dataset_is_one_line_naming_task_and_dataset(offline, model, tok):
    lm = wrap_model(model, tok, batch_size=2)
    spec = TaskSpec("actsparse_tiny_missing", 0, "acc,none")
    with pytest.raises(MissingTaskData) as info:
        run_task_groups(lm, [TaskGroup("m", (spec,))], [], include_paths=[DATA])
    message = str(info.value)
    assert "\n" not in message
    assert "actsparse_tiny_missing" in message and "actsparse-tests/no-such-dataset" in message
    skipped = run_task_groups(lm, [TaskGroup("m", (spec,))], [], include_paths=[DATA], skip_missing=True)
    assert skipped.tasks == {} and "actsparse_tiny_missing" in skipped.missing[0]
