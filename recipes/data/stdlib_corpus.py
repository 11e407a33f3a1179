"""The bundled demo corpus: the Python standard library's own documentation text (its docstrings).

Every machine with Python has it, so the demo and the tests need no download. The text is read with
`inspect.getdoc` from a fixed, ordered module list (`corpus/stdlib_modules.txt`); members are taken in
sorted order and no object reprs, signatures or file paths go in, so the output is byte-identical on any
machine running the same Python version (a CPython patch release may edit a docstring; the
minor version is in each document's `python` field and in the file name the cache uses).

License: the docstrings are part of CPython's source, Copyright (c) 2001 Python Software Foundation,
distributed under the PSF License Agreement version 2 (https://docs.python.org/3/license.html).
"""
from __future__ import annotations

import importlib
import inspect
import json
import logging
import os
import platform
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

log = logging.getLogger(__name__)

MODULE_LIST = Path(__file__).parent / "corpus" / "stdlib_modules.txt"
LICENSE = "PSF-2.0"
LICENSE_NOTE = ("Python standard library docstrings, Copyright (c) 2001 Python Software Foundation; "
                "PSF License Agreement version 2, https://docs.python.org/3/license.html")
# Enough for a few hundred 256-token training sequences plus a held-out split (~130k SmolLM2 tokens).
DEMO_MAX_CHARS = 500_000


@dataclass(frozen=True)
class StdlibCorpusInfo:
    """What `write_stdlib_corpus` wrote: counts, and the modules the running Python did not have."""

    path: Path
    documents: int
    chars: int
    modules: list[str]
    missing_modules: list[str]


def stdlib_module_names() -> list[str]:
    lines = MODULE_LIST.read_text(encoding="utf-8").splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def _own_members(module) -> list[tuple[str, object]]:
    """Public classes and functions that belong to `module` (defined there or listed in `__all__`)."""
    exported = getattr(module, "__all__", None)
    names = sorted(exported) if exported is not None else sorted(n for n in vars(module) if not n.startswith("_"))
    members = []
    for name in names:
        obj = getattr(module, name, None)
        if not (inspect.isclass(obj) or inspect.isroutine(obj)):
            continue
        if exported is None and getattr(obj, "__module__", None) != module.__name__:
            continue  # re-exported from elsewhere: documented under its own module
        members.append((name, obj))
    return members


def _class_text(qualified: str, cls: type, class_doc: str) -> str:
    """Class docstring, then the docs of the public methods the class itself defines (for an undocumented
    override, `inspect.getdoc` supplies the base class's docstring)."""
    parts = [f"class {qualified}", class_doc]
    for name in sorted(vars(cls)):
        if name.startswith("_"):
            continue
        method_doc = inspect.getdoc(getattr(cls, name, None))
        if method_doc and callable(getattr(cls, name, None)):
            parts.append(f"{qualified}.{name}: {method_doc}")
    return "\n\n".join(parts)


def module_documents(module_name: str) -> list[str]:
    """One document for the module docstring, one per public class (with its methods) and function."""
    module = importlib.import_module(module_name)
    documents = []
    module_doc = inspect.getdoc(module)
    if module_doc:
        documents.append(f"Module {module_name}\n\n{module_doc}")
    seen = set()
    for name, obj in _own_members(module):
        doc = inspect.getdoc(obj)
        key = f"{getattr(obj, '__module__', '')}.{getattr(obj, '__qualname__', name)}"
        if not doc or key in seen:
            continue
        seen.add(key)
        qualified = f"{module_name}.{name}"
        documents.append(_class_text(qualified, obj, doc) if inspect.isclass(obj) else f"{qualified}\n\n{doc}")
    return documents


def python_minor() -> str:
    major, minor, _ = platform.python_version_tuple()
    return f"{major}.{minor}"


def write_stdlib_corpus(out_path: str | Path, max_chars: int | None = DEMO_MAX_CHARS) -> StdlibCorpusInfo:
    """Write the stdlib docstrings as jsonl (`{"text", "module", "python"}` per line) to `out_path`.

    Documents are appended in module-list order until the next one would pass `max_chars` characters
    of text (None: all of them). Modules this Python lacks are skipped and reported in the result.
    The text is read in a fresh interpreter (`-I -S`: no site-packages): libraries imported in this one
    patch the stdlib (transformers adds `logging.Logger` methods, torch replaces `inspect.getfile`),
    which would make the corpus depend on what the caller imported.
    """
    command = [sys.executable, "-I", "-S", str(Path(__file__).resolve()), str(out_path), str(max_chars)]
    env = {"PYTHONHASHSEED": "0", "PATH": os.environ.get("PATH", "")}
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise RuntimeError(f"stdlib corpus: {' '.join(command)} failed: {done.stderr.strip().splitlines()[-1:]}")
    info = json.loads(done.stdout)
    if info["missing_modules"]:
        log.warning("stdlib corpus: this Python lacks %d listed modules, skipped: %s",
                    len(info["missing_modules"]), ", ".join(info["missing_modules"]))
    return StdlibCorpusInfo(**{**info, "path": Path(info["path"])})


def _write_in_this_interpreter(out_path: str | Path, max_chars: int | None) -> StdlibCorpusInfo:
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    python = python_minor()
    documents = chars = 0
    used, missing = [], []
    tmp_path = out_path.with_name(f"{out_path.name}.{os.getpid()}.tmp")
    with tmp_path.open("w", encoding="utf-8") as out:
        for module_name in stdlib_module_names():
            try:
                texts = module_documents(module_name)
            except ImportError:
                missing.append(module_name)
                continue
            used.append(module_name)
            for text in texts:
                if max_chars is not None and chars + len(text) > max_chars:
                    break
                out.write(json.dumps({"text": text, "module": module_name, "python": python}, ensure_ascii=False) + "\n")
                documents += 1
                chars += len(text)
            else:
                continue
            break  # the budget is spent
    tmp_path.replace(out_path)  # atomic: concurrent ranks never read a half-written corpus
    return StdlibCorpusInfo(out_path, documents, chars, used, missing)


if __name__ == "__main__":   # run by write_stdlib_corpus as `python -I -S stdlib_corpus.py OUT MAX_CHARS`
    written = _write_in_this_interpreter(sys.argv[1], None if sys.argv[2] == "None" else int(sys.argv[2]))
    print(json.dumps({**asdict(written), "path": str(written.path)}))
