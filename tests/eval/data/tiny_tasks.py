"""Loader for the offline test tasks: reads a JSONL file next to this module into a `test` split.

lm-eval resolves `!function tiny_tasks.load_jsonl` relative to the task YAML, so the tasks work from any
working directory and never touch the Hub or the datasets cache.
"""
import json
import os

import datasets

HERE = os.path.dirname(os.path.abspath(__file__))


def load_jsonl(data_file: str, **_metadata) -> datasets.DatasetDict:
    with open(os.path.join(HERE, data_file), encoding="utf-8") as f:
        rows = [json.loads(line) for line in f if line.strip()]
    return datasets.DatasetDict({"test": datasets.Dataset.from_list(rows)})
