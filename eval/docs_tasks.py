"""lm-eval tasks built from a local text file, for machines that cannot download benchmark data.

    python -m actsparse.eval.docs_tasks heldout.txt --out tasks/   # then, in an eval config:
    quality: {task_groups: [docs], task_groups_file: tasks/task_groups.yaml, include_path: [tasks]}

From the prose paragraphs of the file (blank-line separated; code, tables and headings are skipped), two tasks:
- `actsparse_docs_lastword` (LAMBADA-style): the paragraph without its last word is the context; accuracy is
  the share of paragraphs whose last word is the model's greedy continuation (loglikelihood, `acc`).
- `actsparse_docs_next` (HellaSwag-style): the paragraph's opening sentences are the context; four choices are
  the real next sentence and three sentences drawn from other paragraphs (`acc_norm`: per-byte likelihood).
Both are deterministic for a given file, seed and --max-docs. The data goes in as JSONL files read with
`datasets`' packaged `json` builder, so nothing is downloaded. These tasks measure fit to the held-out domain.
They are not the papers' benchmarks: the leaderboard labels them with the file's name.
"""
from __future__ import annotations

import argparse
import json
import random
import re
import sys
from pathlib import Path

import yaml

MIN_WORDS = 25
SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z])")
CODE_HINTS = ("::", ">>>", "$ ", "{", "}", "==", "--", "|", "http", "()", "_")


def prose_paragraphs(text: str) -> list[str]:
    """Blank-line separated blocks that read as prose: unindented, mostly alphabetic words, >= MIN_WORDS."""
    out = []
    for block in re.split(r"\n\s*\n", text):
        lines = [ln for ln in block.splitlines() if ln.strip()]
        if not lines or any(ln.startswith((" ", "\t")) for ln in lines):
            continue
        para = " ".join(ln.strip() for ln in lines)
        words = para.split()
        if len(words) < MIN_WORDS or any(h in para for h in CODE_HINTS):
            continue
        if sum(w.strip(".,;:!?()\"'").isalpha() for w in words) < 0.85 * len(words):
            continue
        out.append(para)
    return out


def lastword_docs(paragraphs: list[str]) -> list[dict]:
    """{"context", "target"}: context + " " + target is the paragraph up to its last word (punctuation after it
    dropped); only paragraphs whose last word is alphabetic and at least 3 letters."""
    docs = []
    for para in paragraphs:
        head, _, last = para.rstrip().rpartition(" ")
        word = last.rstrip(".,;:!?\"')")
        if head and len(word) >= 3 and word.isalpha():
            docs.append({"context": head, "target": word})
    return docs


def next_sentence_docs(paragraphs: list[str], seed: int) -> list[dict]:
    """{"context", "choices" (4), "answer"}: the real next sentence among three from other paragraphs."""
    rng = random.Random(seed)
    split = [SENTENCE_END.split(p) for p in paragraphs]
    pool = [(i, s) for i, sents in enumerate(split) for s in sents if len(s.split()) >= 5]
    docs = []
    for i, sents in enumerate(split):
        if len(sents) < 2 or len(sents[1].split()) < 5:
            continue
        others = [s for j, s in pool if j != i]
        if len(others) < 3:
            continue
        choices = rng.sample(others, 3)
        answer = rng.randrange(4)
        choices.insert(answer, sents[1])
        docs.append({"context": sents[0], "choices": choices, "answer": answer})
    return docs


def _task_yaml(name: str, data_file: Path, output_type: str, extra: dict) -> dict:
    return {"task": name, "dataset_path": "json", "dataset_kwargs": {"data_files": {"test": str(data_file)}},
            "test_split": "test", "output_type": output_type, **extra, "metadata": {"version": 1.0}}


def write_tasks(text_file: str | Path, out_dir: str | Path, max_docs: int = 500, seed: int = 0) -> dict:
    """Write both tasks' JSONL and YAML files and task_groups.yaml into `out_dir`; returns the doc counts."""
    src, out = Path(text_file), Path(out_dir)
    try:
        text = src.read_text(encoding="utf-8", errors="replace")
    except OSError as err:
        raise ValueError(f"{src}: cannot read ({err.strerror})") from None
    paragraphs = prose_paragraphs(text)
    rng = random.Random(seed)
    rng.shuffle(paragraphs)
    sets = {"lastword": lastword_docs(paragraphs)[:max_docs], "next": next_sentence_docs(paragraphs, seed)[:max_docs]}
    if not all(sets.values()):
        raise ValueError(f"{src}: too little prose for the docs tasks ({len(paragraphs)} prose paragraphs of >= "
                         f"{MIN_WORDS} words; lastword {len(sets['lastword'])}, next {len(sets['next'])} documents)")
    out.mkdir(parents=True, exist_ok=True)
    for key, docs in sets.items():
        with open(out / f"docs_{key}.jsonl", "w", encoding="utf-8") as f:
            f.writelines(json.dumps(d) + "\n" for d in docs)
    tasks = {
        "actsparse_docs_lastword": _task_yaml(
            "actsparse_docs_lastword", (out / "docs_lastword.jsonl").resolve(), "loglikelihood",
            {"doc_to_text": "{{context}}", "doc_to_target": "{{' ' + target}}", "target_delimiter": "",
             "metric_list": [{"metric": "acc", "aggregation": "mean", "higher_is_better": True},
                             {"metric": "perplexity", "aggregation": "perplexity", "higher_is_better": False}]}),
        "actsparse_docs_next": _task_yaml(
            "actsparse_docs_next", (out / "docs_next.jsonl").resolve(), "multiple_choice",
            {"doc_to_text": "{{context}}", "doc_to_choice": "{{choices}}", "doc_to_target": "{{answer}}",
             "target_delimiter": " ",
             "metric_list": [{"metric": "acc", "aggregation": "mean", "higher_is_better": True},
                             {"metric": "acc_norm", "aggregation": "mean", "higher_is_better": True}]}),
    }
    for name, spec in tasks.items():
        (out / f"{name}.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    groups = {"suites": {"docs": {"source": f"held-out documents ({src.name})", "groups": ["docs_lastword", "docs_next"]}},
              "groups": {"docs_lastword": {"tasks": [{"task": "actsparse_docs_lastword", "num_fewshot": 0,
                                                      "metric": "acc,none"}]},
                         "docs_next": {"tasks": [{"task": "actsparse_docs_next", "num_fewshot": 0,
                                                  "metric": "acc_norm,none"}]}}}
    (out / "task_groups.yaml").write_text(yaml.safe_dump(groups, sort_keys=False))
    return {k: len(v) for k, v in sets.items()}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="docs_tasks", description=__doc__.split("\n")[0])
    p.add_argument("text_file")
    p.add_argument("--out", required=True)
    p.add_argument("--max-docs", type=int, default=500)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    try:
        counts = write_tasks(args.text_file, args.out, args.max_docs, args.seed)
    except ValueError as err:
        print(f"docs_tasks: {err}", file=sys.stderr)
        return 2
    print(f"wrote {args.out}: lastword {counts['lastword']}, next {counts['next']} documents")
    return 0


if __name__ == "__main__":
    sys.exit(main())
