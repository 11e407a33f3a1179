"""Leaderboard table: our result JSONs beside the papers' published rows, as CSV and markdown.

One row per results file (kind `ours`) and one per published number (kind `published`). Suite
averages and group scores are percent; sparsities are percent of x1 entries that are zero (zero
fraction), or zeroed by the CETT-0.2 / PPL-1% thresholds; perplexities are on each file's own data.
"""
from __future__ import annotations

import csv
import os

from .published import published_rows

BASE_COLUMNS = ("model", "kind")
TAIL_COLUMNS = ("zero_fraction_sparsity", "cett_sparsity", "ppl_p_sparsity", "ppl_dense", "ppl_cett", "ppl_ppl_p",
                "throughput", "source", "note")
PUBLISHED_SUITES = ("prosparse", "open_llm_leaderboard")
HEADERS = {"zero_fraction_sparsity": "zero-frac sp%", "cett_sparsity": "CETT sp%", "ppl_p_sparsity": "PPL-p sp%",
           "ppl_dense": "PPL dense", "ppl_cett": "PPL @CETT", "ppl_ppl_p": "PPL @PPL-p"}


def _percent(value):
    return None if value is None else 100.0 * value


def _get(mapping, *keys):
    for key in keys:
        if not isinstance(mapping, dict):
            return None
        mapping = mapping.get(key)
    return mapping


def ours_row(results: dict) -> dict:
    """A table row from one results JSON (see results.py)."""
    quality = results.get("quality") or {}
    sparsity, ppl = results.get("sparsity") or {}, results.get("perplexity") or {}
    row = {"model": results["name"], "kind": "ours", "source": os.path.basename(results.get("file", "")),
           "note": _note(results),
           "zero_fraction_sparsity": _percent(_get(sparsity, "zero_fraction", "sparsity")),
           "cett_sparsity": _percent(_get(sparsity, "cett", "sparsity")),
           "ppl_p_sparsity": _percent(_get(sparsity, "ppl_p", "sparsity")),
           "ppl_dense": ppl.get("dense"), "ppl_cett": ppl.get("cett"), "ppl_ppl_p": ppl.get("ppl_p"),
           "throughput": throughput_cell(results.get("throughput"))}
    for suite, body in (quality.get("suites") or {}).items():
        row[f"{suite} avg"] = body.get("average")
    for group, body in (quality.get("groups") or {}).items():
        row[group] = body.get("score")
    return row


def throughput_cell(throughput: dict | None) -> str | None:
    """The `throughput` cell: from a bench_decode JSON (`records` with `sparse_tok_s`) the exact path's batch-1 decode,
    e.g. "260 tok/s, 1.50x dense (exact, bench_decode.json)"; from any other benchmark JSON its file name."""
    if not throughput:
        return None
    name = os.path.basename(throughput.get("source") or "")
    records = (throughput.get("bench") or {}).get("records") or []
    exact = [r for r in records if isinstance(r, dict) and r.get("path") == "exact" and r.get("batch") == 1
             and "sparse_tok_s" in r and "speedup" in r]
    if not exact:
        return name or None
    r = exact[-1]
    return f"{r['sparse_tok_s']:.0f} tok/s, {r['speedup']:.2f}x dense (exact, {name})"


def _note(results: dict) -> str:
    model = results.get("model") or {}
    parts = [str(model.get("hidden_act") or "")]
    if model.get("hidden_act_param"):
        parts[0] += f"(t={model['hidden_act_param']:g})"
    quality = results.get("quality") or {}
    if quality.get("thresholds") not in (None, "none"):
        parts.append(f"tasks with {quality['thresholds']} thresholds")
    if quality.get("limit") is not None:
        parts.append(f"limit={quality['limit']:g}")
    if quality.get("missing"):
        parts.append(f"{len(quality['missing'])} task(s) missing")
    data = results.get("data") or {}
    if data.get("name"):
        parts.append(f"data {data['name']}")
    return "; ".join(p for p in parts if p)


def published_row(row: dict) -> dict:
    return {"model": row["model"], "kind": "published", f"{row['suite']} avg": row["average"],
            "zero_fraction_sparsity": row["sparsity"], "source": row["source"], "note": row["note"]}


def build_table(all_results: list[dict], include_published: bool = True) -> tuple[list[str], list[dict]]:
    """(columns, rows): suite averages first, then our groups, then sparsity / perplexity columns."""
    rows = [ours_row(r) for r in all_results]
    if include_published:
        rows += [published_row(r) for r in published_rows()]
    suites = [f"{s} avg" for s in PUBLISHED_SUITES] if include_published else []
    groups: list[str] = []
    for results in all_results:
        quality = results.get("quality") or {}
        suites += [f"{s} avg" for s in quality.get("suites") or {} if f"{s} avg" not in suites]
        groups += [g for g in quality.get("groups") or {} if g not in groups]
    columns = [*BASE_COLUMNS, *dict.fromkeys(suites), *groups, *TAIL_COLUMNS]
    return columns, rows


def _cell(value, markdown: bool) -> str:
    if value is None:
        return "" if not markdown else "–"
    if isinstance(value, float):
        return f"{value:.2f}" if markdown else f"{value:.6g}"
    text = str(value)
    return text.replace("|", "/") if markdown else text


def to_markdown(columns: list[str], rows: list[dict]) -> str:
    head = [HEADERS.get(c, c) for c in columns]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    lines += ["| " + " | ".join(_cell(row.get(c), True) for c in columns) + " |" for row in rows]
    notes = [
        "",
        "`published` rows are the papers' numbers (../shared/PAPERS.md), not measured here. ProSparse's",
        "average covers 7 UltraEval task groups (Code included); `prosparse avg` of our rows covers the 6",
        "lm-eval groups in eval/task_groups.yaml, so the two are not directly comparable. Published",
        "sparsity is ProSparse's zero fraction on its mixed training data (TurboSparse: fineweb);",
        "ours is measured on the data named in `note`.",
    ]
    return "\n".join(lines + notes) + "\n"


def write_csv(columns: list[str], rows: list[dict], path: str) -> str:
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(columns)
        for row in rows:
            writer.writerow([_cell(row.get(c), False) for c in columns])
    return path
