"""`actsparse prepare-data`: a local corpus, pre-tokenized into one file small enough to carry to a GPU machine.

    actsparse prepare-data --tokenizer runs/smollm2-tokenizer --out corpora/local \
        --include /usr/share/doc/python3=PSF-2.0 --include ~/notes=CC-BY-4.0

Sources: the Python standard library's docstrings (all of stdlib_modules.txt, no character cap) and every
`.txt` / `.md` / `.rst` file under each `--include PATH[=LICENSE]` (one file = one document). Nothing is
downloaded. Writes `OUT/corpus.tokens.npz` (uint16 token ids when the vocabulary fits; numpy reads it) and
`OUT/SOURCES.json` (each source, its files, counts and license). Use it in a recipe as
`data.sources: [{path: OUT/corpus.tokens.npz}]`, with the same tokenizer.
"""
from __future__ import annotations

import argparse
import json
import logging
import platform
import sys
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tqdm import tqdm

from .config import SUFFIX_FORMATS
from .sources import first_invalid_utf8_byte
from .stdlib_corpus import LICENSE, LICENSE_NOTE, write_stdlib_corpus
from .token_files import token_dtype, write_token_file
from .tokenizing import doc_key, tokenizer_fingerprint

log = logging.getLogger(__name__)

TEXT_SUFFIXES = sorted(s for s, fmt in SUFFIX_FORMATS.items() if fmt == "txt")
TOKEN_FILE = "corpus.tokens.npz"
TOKENIZE_BATCH = 256


@dataclass
class SourceRecord:
    """One entry of SOURCES.json."""

    name: str
    kind: str
    license: str
    license_note: str = ""
    files: int = 0
    documents: int = 0
    chars: int = 0
    tokens: int = 0
    skipped_files: list[str] = field(default_factory=list)   # not UTF-8 or empty, with the reason
    details: dict = field(default_factory=dict)


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="actsparse prepare-data", description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokenizer", required=True, help="tokenizer folder (AutoTokenizer.from_pretrained)")
    parser.add_argument("--gguf-file", help="GGUF file inside --tokenizer to read the tokenizer from")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--include", action="append", default=[], metavar="PATH[=LICENSE]",
                        help=f"a file or folder of {'/'.join(TEXT_SUFFIXES)} text; repeatable")
    parser.add_argument("--no-stdlib", action="store_true", help="leave out the stdlib docstrings")
    parser.add_argument("--max-mib", type=float, default=64.0, help="cap on the token ids' size (default 64)")
    return parser.parse_args(argv)


def stdlib_documents(workdir: Path) -> tuple[SourceRecord, list[str]]:
    info = write_stdlib_corpus(workdir / "stdlib_docs.jsonl", max_chars=None)
    lines = info.path.read_text(encoding="utf-8").splitlines()
    texts = [json.loads(line)["text"] for line in lines]
    record = SourceRecord("stdlib_docs", "python-stdlib-docstrings", LICENSE, LICENSE_NOTE, files=0,
                          documents=len(texts), chars=info.chars,
                          details={"python": platform.python_version(), "modules": info.modules,
                                   "missing_modules": info.missing_modules})
    return record, texts


def parse_include(spec: str) -> tuple[Path, str]:
    """`PATH[=LICENSE]` -> (existing path, license or "")."""
    path_text, _, license_id = spec.rpartition("=") if "=" in spec else (spec, "", "")
    path = Path(path_text).expanduser()
    if not path.exists():
        raise SystemExit(f"actsparse prepare-data: --include {spec}: not found: {path}")
    return path, license_id


def include_documents(path: Path, license_id: str) -> tuple[SourceRecord, list[str]]:
    """A file or folder's text files, one document each (skipped files are recorded, not dropped silently)."""
    files = sorted(p for p in path.rglob("*") if p.suffix.lower() in TEXT_SUFFIXES and p.is_file()) \
        if path.is_dir() else [path]
    if not license_id:
        log.warning("--include %s: no license given (PATH=LICENSE); SOURCES.json records it as unknown", path)
    record = SourceRecord(str(path), "local-files", license_id or "unknown", files=len(files))
    texts = []
    for file in tqdm(files, desc=f"read {path.name}", unit="file"):
        bad = first_invalid_utf8_byte(file)
        text = file.read_bytes().decode("utf-8") if bad is None else ""   # as read, no newline translation
        if bad is not None or not text.strip():
            record.skipped_files.append(f"{file}: " + (f"not UTF-8 (byte {bad})" if bad is not None else "empty"))
            continue
        texts.append(text)
        record.chars += len(text)
    record.documents = len(texts)
    if record.skipped_files:
        log.warning("--include %s: skipped %d files (listed in SOURCES.json)", path, len(record.skipped_files))
    return record, texts


def tokenize_texts(texts: list[str], tokenizer, label: str) -> list[list[int]]:
    ids = []
    for start in tqdm(range(0, len(texts), TOKENIZE_BATCH), desc=f"tokenize {label}", unit="batch"):
        ids.extend(tokenizer(texts[start: start + TOKENIZE_BATCH], add_special_tokens=False)["input_ids"])
    return ids


def load_tokenizer(args: argparse.Namespace):
    from transformers import AutoTokenizer

    kwargs = {"gguf_file": args.gguf_file} if args.gguf_file else {}
    return AutoTokenizer.from_pretrained(args.tokenizer, **kwargs)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(list(sys.argv[1:] if argv is None else argv))
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    out_dir = Path(args.out)
    includes = [parse_include(spec) for spec in args.include]   # fail on a bad path before any work
    tokenizer = load_tokenizer(args)
    dtype = token_dtype(len(tokenizer))
    budget_tokens = int(args.max_mib * 2**20) // dtype.itemsize
    with tempfile.TemporaryDirectory() as workdir:
        sources = [] if args.no_stdlib else [stdlib_documents(Path(workdir))]
    sources += [include_documents(path, license_id) for path, license_id in includes]
    if not sources:
        raise SystemExit("actsparse prepare-data: nothing to prepare (--no-stdlib and no --include)")
    documents, keys, used, full = [], [], 0, False
    for record, texts in sources:
        for text, ids in zip(texts, tokenize_texts(texts, tokenizer, Path(record.name).name)):
            full = full or used + len(ids) > budget_tokens   # from the first overflow on, every document is cut
            if full:
                record.details["documents_cut_by_size_cap"] = record.details.get("documents_cut_by_size_cap", 0) + 1
                continue
            documents.append(ids)
            keys.append(doc_key(text))
            record.tokens += len(ids)
            used += len(ids)
    fingerprint = tokenizer_fingerprint(tokenizer)
    size = write_token_file(out_dir / TOKEN_FILE, documents, keys, len(tokenizer),
                            {"tokenizer_fingerprint": fingerprint, "tokenizer": args.tokenizer})
    manifest = {
        "output": TOKEN_FILE, "bytes": size, "documents": len(documents), "tokens": sum(r.tokens for r, _ in sources),
        "token_dtype": dtype.name, "max_mib": args.max_mib,
        "tokenizer": {"path": args.tokenizer, "gguf_file": args.gguf_file, "fingerprint": fingerprint,
                      "vocab_size": len(tokenizer), "eos_token": tokenizer.eos_token},
        "sources": [asdict(record) for record, _ in sources],
        "command": "actsparse prepare-data " + " ".join(argv if argv is not None else sys.argv[1:]),
    }
    (out_dir / "SOURCES.json").write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    log.info("wrote %s: %d documents, %d tokens, %.1f MiB; sources and licenses in %s", out_dir / TOKEN_FILE,
             len(documents), manifest["tokens"], size / 2**20, out_dir / "SOURCES.json")
    return 0
