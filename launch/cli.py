"""The `actsparse` console command: a table of subcommands, each a `main(argv) -> int` in its own module.

Subcommand modules are imported only when called, so `actsparse --help` stays fast and a subcommand
whose optional dependency is missing fails alone, with its own message.
"""
from __future__ import annotations

import importlib
import importlib.util
import sys

# name -> (module, one-line help). Each module defines `main(argv: list[str]) -> int`.
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("actsparse.recipes.demo", "SmolLM2-135M: ReLU swap + short progressive-L1 run on CPU, before/after report"),
    "train": ("actsparse.recipes.train_cli", "run a continue-pretraining recipe (YAML config, key=value overrides)"),
    "export": ("actsparse.recipes.export_cli", "export a run directory or model folder as a Hugging Face folder"),
    "prepare-data": ("actsparse.recipes.data.prepare_cli", "assemble a local text corpus for GPU runs"),
    "submit": ("actsparse.launch.submit", "render and submit an sbatch script for a training recipe"),
    "submit-eval": ("actsparse.launch.submit_eval", "submit evaluation over checkpoints as a SLURM job array"),
    "eval": ("actsparse.eval.cli", "sparsity metrics, perplexity and lm-eval tasks for one model -> results JSON"),
    "leaderboard": ("actsparse.eval.leaderboard_cli", "render result JSONs as a table and PNG plots"),
    "bench-kernels": ("actsparse.kernels.bench", "benchmark sparse-FFN Triton kernels against cuBLAS (GPU)"),
    "predictors": ("actsparse.modeling.predictors.cli", "collect | train | eval activation predictors"),
    "predictor-decode": ("actsparse.eval.predictor_decode", "decode tokens/s and perplexity: exact vs predictor-driven FFNs"),
}


def _available() -> dict[str, tuple[str, str]]:
    """Subcommands whose module is present in this install (later features add theirs)."""
    found = {}
    for name, (module, text) in SUBCOMMANDS.items():
        try:
            if importlib.util.find_spec(module) is not None:
                found[name] = (module, text)
        except ModuleNotFoundError:
            pass
    return found


def _usage(commands: dict[str, tuple[str, str]]) -> str:
    width = max((len(n) for n in commands), default=0)
    rows = "\n".join(f"  {n.ljust(width)}  {t}" for n, (_, t) in commands.items())
    return (
        "usage: actsparse <command> [args...]\n\n"
        "Activation-sparse LLaMA-family models: ProSparse / TurboSparse recipes, metrics and kernels.\n\n"
        f"commands:\n{rows}\n\n"
        "`actsparse <command> --help` describes one command."
    )


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    commands = _available()
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_usage(commands))
        return 0
    name, rest = argv[0], argv[1:]
    if name not in commands:
        print(f"actsparse: unknown command {name!r}; choose from: {', '.join(commands)}", file=sys.stderr)
        return 2
    module = importlib.import_module(commands[name][0])
    return int(module.main(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
