"""`actsparse export SRC OUT [--activation A] [--threshold T] [--dtype D]`: write a Hugging Face folder.

SRC is a training run directory (it holds `recipe.yaml` or `run_config.yaml`; its latest checkpoint is
consolidated by `actsparse.recipes.consolidate.load_run_model`) or a model folder / Hub id in any format
`actsparse.modeling.load_pretrained` reads (plain HF, our exports, ProSparse's `sparsellama`).
`--activation` / `--threshold` re-convert before export; `--threshold T` alone is ProSparse step 3
(ReLU -> FATReLU(T), no training). Errors: one line on stderr, exit code 2.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

RUN_CONFIGS = ("recipe.yaml", "run_config.yaml")  # what the recipe writes into a run directory
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="actsparse export", description=__doc__.split("\n\n")[0])
    parser.add_argument("src", help="training run directory (with recipe.yaml) or model folder / Hub id")
    parser.add_argument("out", help="output folder (created; existing files of the same names are replaced)")
    parser.add_argument("--activation", help="re-convert to this activation: silu, relu, drelu, relu2, fatrelu")
    parser.add_argument("--threshold", type=float, default=None,
                        help="FATReLU threshold t (implies --activation fatrelu; fatrelu without it uses t = 0)")
    parser.add_argument("--dtype", default=None, help="weights dtype of the export, e.g. bfloat16, float32")
    return parser


def load_source(src: str, dtype):
    """(model, tokenizer or None) from a run directory or a model folder."""
    from actsparse.modeling import load_pretrained

    run_config = next((os.path.join(src, f) for f in RUN_CONFIGS if os.path.isfile(os.path.join(src, f))), None)
    if run_config is not None:
        try:
            from actsparse.recipes.consolidate import load_run_model
        except ImportError as err:
            raise ValueError(f"{run_config}: a training run directory, but "
                             f"actsparse.recipes.consolidate.load_run_model is not available ({err})") from None
        model, tokenizer = load_run_model(src)
        return (model if dtype is None else model.to(dtype)), tokenizer
    model = load_pretrained(src, dtype=dtype)
    return model, _tokenizer_of(src)


def _tokenizer_of(src: str):
    """The folder's tokenizer when it ships one (exports of tokenizer-less folders stay tokenizer-less)."""
    if os.path.isdir(src) and not any(os.path.isfile(os.path.join(src, f)) for f in TOKENIZER_FILES):
        return None
    from transformers import AutoTokenizer
    try:
        return AutoTokenizer.from_pretrained(src)
    except (OSError, ValueError) as err:
        if os.path.isdir(src):
            raise ValueError(f"{src}: tokenizer files present but unreadable ({str(err).splitlines()[0]})") from None
        print(f"note: {src} has no readable tokenizer; exporting the model only", file=sys.stderr)
        return None


def reconvert(model, activation: str | None, threshold: float | None):
    """Apply `--activation` / `--threshold`, if given."""
    from actsparse.modeling import sparsify

    if activation is None and threshold is None:
        return model
    return sparsify(model, activation or "fatrelu", 0.0 if threshold is None else threshold)


def run(args: argparse.Namespace) -> Path:
    import torch

    from actsparse.modeling import export_hf, sparse_mlps
    from actsparse.modeling.activations import check_activation

    dtype = None
    if args.dtype is not None:
        dtype = getattr(torch, args.dtype.removeprefix("torch."), None)
        if not isinstance(dtype, torch.dtype):
            raise ValueError(f"--dtype {args.dtype!r} is not a torch dtype (e.g. float32, bfloat16, float16)")
    if os.path.exists(args.src) and Path(args.src).resolve() == Path(args.out).resolve():
        raise ValueError(f"{args.out}: the output folder is the source folder; export to a new folder")
    if args.activation is not None or args.threshold is not None:  # fail before a long load
        check_activation(args.activation or "fatrelu", 0.0 if args.threshold is None else args.threshold)
    model, tokenizer = load_source(args.src, dtype)
    model = reconvert(model, args.activation, args.threshold)
    out = export_hf(model, args.out, tokenizer=tokenizer)
    mlps = sparse_mlps(model)
    what = f"{len(mlps)} FFNs, activation {mlps[0].activation}" if mlps else "unconverted model"
    if mlps and mlps[0].activation == "fatrelu":
        what += f" (threshold {mlps[0].threshold})"
    print(f"exported {args.src} -> {out}: {what}")
    return out


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    except SystemExit as exit_:  # argparse: --help (0) or a usage error (2)
        return int(exit_.code or 0)
    try:
        run(args)
    except (ValueError, OSError, RuntimeError) as err:  # ConfigError is a ValueError
        print(f"actsparse export: {str(err).splitlines()[0] if str(err) else type(err).__name__}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
