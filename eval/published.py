"""The papers' published numbers, as rows the leaderboard prints beside ours (marked `published`).

Copied from ../shared/PAPERS.md, which cites the papers; nothing here is measured by us. Averages are
percent; `sparsity` is the published zero fraction of x1 in percent (None where not published).
Caveats the table repeats: ProSparse's average covers 7 task groups (UltraEval, Code included); ours
covers 6 through lm-eval, so the two are not directly comparable. Open LLM rows are stock baselines,
not token-matched (PAPERS.md (d)).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

PROSPARSE_T1 = "ProSparse (arXiv 2402.13516) Table 1"
PROSPARSE_T4 = "ProSparse (arXiv 2402.13516) Table 4 (same-data 7B controls)"
TURBOSPARSE = "TurboSparse (arXiv 2406.05955), Open LLM Leaderboard average"
RELULLAMA = "ReluLLaMA (SparseLLM/ReluLLaMA-7B), Open LLM Leaderboard average"


@dataclass(frozen=True)
class PublishedRow:
    model: str
    suite: str                     # "prosparse" (UltraEval 7-group average) or "open_llm_leaderboard"
    average: float | None          # percent
    sparsity: float | None         # percent zero fraction of x1
    source: str
    note: str = ""
    published: bool = True

    def as_dict(self) -> dict:
        return asdict(self)


PUBLISHED_ROWS: tuple[PublishedRow, ...] = (
    PublishedRow("LLaMA-2-7B", "prosparse", 37.96, None, PROSPARSE_T1, "original dense (SiLU)"),
    PublishedRow("ReluLLaMA-7B", "prosparse", 37.62, 66.98, PROSPARSE_T1),
    PublishedRow("ProSparse-7B*", "prosparse", 38.31, 88.11, PROSPARSE_T1, "* = ReLU, no FATReLU (t=0)"),
    PublishedRow("ProSparse-7B", "prosparse", 38.46, 89.32, PROSPARSE_T1, "FATReLU t=0.01"),
    PublishedRow("LLaMA-2-13B", "prosparse", 44.06, None, PROSPARSE_T1, "original dense (SiLU)"),
    PublishedRow("ReluLLaMA-13B", "prosparse", 42.74, 71.56, PROSPARSE_T1),
    PublishedRow("ProSparse-13B*", "prosparse", 45.07, 87.97, PROSPARSE_T1, "* = ReLU, no FATReLU (t=0)"),
    PublishedRow("ProSparse-13B", "prosparse", 44.90, 88.80, PROSPARSE_T1, "FATReLU t=0.01"),
    PublishedRow("MiniCPM-1B", "prosparse", 44.44, None, PROSPARSE_T1, "original dense (SiLU)"),
    PublishedRow("ProSparse-1B* (MiniCPM-S-1B)", "prosparse", 44.72, 86.25, PROSPARSE_T1, "* = no FATReLU"),
    PublishedRow("ProSparse-1B (MiniCPM-S-1B)", "prosparse", 44.72, 87.89, PROSPARSE_T1, "FATReLU; t unconfirmed"),
    PublishedRow("7B vanilla ReLU, 34.60B tok", "prosparse", 41.40, 66.04, PROSPARSE_T4),
    PublishedRow("7B shifted ReLU, 34.60B tok", "prosparse", 41.33, 69.59, PROSPARSE_T4, "b=0.1"),
    PublishedRow("7B vanilla ReLU, 89.13B tok", "prosparse", 41.52, 64.93, PROSPARSE_T4),
    PublishedRow("7B shifted ReLU, 89.13B tok", "prosparse", 41.40, 68.35, PROSPARSE_T4, "b=0.1"),
    PublishedRow("7B ProSparse, 89.13B tok", "prosparse", 40.67, 88.29, PROSPARSE_T4),
    PublishedRow("LLaMA-2-7B", "open_llm_leaderboard", 50.97, None, RELULLAMA, "dense baseline"),
    PublishedRow("ReluLLaMA-7B", "open_llm_leaderboard", 48.00, 66.98, RELULLAMA,
                 "sparsity from ProSparse Table 1"),
    PublishedRow("Mistral-7B", "open_llm_leaderboard", 61.57, None, TURBOSPARSE, "dense baseline"),
    PublishedRow("TurboSparse-Mistral", "open_llm_leaderboard", 63.65, 90.0, TURBOSPARSE,
                 "dReLU; ~90% per layer on fineweb; not token-matched"),
    PublishedRow("Mixtral-47B", "open_llm_leaderboard", 69.34, None, TURBOSPARSE, "dense baseline"),
    PublishedRow("TurboSparse-Mixtral", "open_llm_leaderboard", 71.76, 85.0, TURBOSPARSE,
                 "dReLU; ~85% per expert; not token-matched"),
)


def published_rows(suites: list[str] | None = None) -> list[dict]:
    """Published rows as dicts, optionally only those of the given suites."""
    return [r.as_dict() for r in PUBLISHED_ROWS if suites is None or r.suite in suites]
