"""A WordLevel tokenizer over the words of the offline lm-eval test tasks (tests/eval/data/*.jsonl).

No post-processor, so it adds no BOS of its own (what the BOS tests need); wrapped as a fast HF tokenizer."""
from __future__ import annotations

import glob
import json
import os

TASK_DATA = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "eval", "data"))
SPECIALS = ["<unk>", "<s>", "</s>", "<pad>"]


def task_words_tokenizer(data_dir: str = TASK_DATA):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = set()
    for path in glob.glob(os.path.join(data_dir, "*.jsonl")):
        for line in open(path, encoding="utf-8"):
            row = json.loads(line)
            words.update(" ".join([row.get("question", ""), " ".join(row.get("choices", [])),
                                   row.get("text", "")]).split())
    vocab = {tok: i for i, tok in enumerate(SPECIALS + sorted(words))}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<s>", eos_token="</s>",
                                   unk_token="<unk>", pad_token="<pad>")
