"""Embedded offline corpora built from what ships with Python (prose, code) and from generators (math, sft).

Each builder returns (train_docs, heldout_docs), deterministically from its arguments."""

from __future__ import annotations

import ast
import hashlib
import random
import sysconfig
from pathlib import Path

from mergemix.data import synthetic

_SKIP_DIRS = {
    "test",
    "tests",
    "idlelib",
    "site-packages",
    "lib2to3",
    "turtledemo",
    "__pycache__",
    "ensurepip",
}


def _stdlib_files() -> list[Path]:
    root = Path(sysconfig.get_paths()["stdlib"])
    return sorted(p for p in root.rglob("*.py") if not _SKIP_DIRS & set(p.relative_to(root).parts))


def _doc_heldout(doc: str, fraction: float) -> bool:
    return int(hashlib.md5(doc.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF < fraction


def split_docs(docs: list[str], fraction: float) -> tuple[list[str], list[str]]:
    train = [d for d in docs if not _doc_heldout(d, fraction)]
    held = [d for d in docs if _doc_heldout(d, fraction)]
    return train, held


def _chunks(text: str, size: int) -> list[str]:
    """Split on paragraph boundaries into documents of about `size` characters."""
    out, cur = [], ""
    for para in text.split("\n\n"):
        if cur and len(cur) + len(para) > size:
            out.append(cur)
            cur = ""
        cur = f"{cur}\n\n{para}" if cur else para
    if cur.strip():
        out.append(cur)
    return out


def _capped(docs: list[str], max_chars: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    docs = docs[:]
    rng.shuffle(docs)
    out, total = [], 0
    for d in docs:
        if total >= max_chars:
            break
        out.append(d)
        total += len(d)
    return out


def prose_docs(max_chars: int, seed: int) -> list[str]:
    from pydoc_data import topics

    docs = [c for name in sorted(topics.topics) for c in _chunks(topics.topics[name].strip(), 2000)]
    for path in _stdlib_files():
        try:
            tree = ast.parse(path.read_text(encoding="utf-8", errors="ignore"))
        except (SyntaxError, ValueError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                doc = ast.get_docstring(node)
                if doc and len(doc) > 200:
                    docs.extend(_chunks(doc, 2000))
    return _capped(list(dict.fromkeys(docs)), max_chars, seed)


def code_docs(max_chars: int, seed: int) -> list[str]:
    docs = []
    for path in _stdlib_files():
        text = path.read_text(encoding="utf-8", errors="ignore")
        docs.extend(_chunks(text, 3000))
    return _capped(docs, max_chars, seed)


def synthetic_docs(kind: str, n_items: int, seed: int, heldout: bool, per_doc: int) -> list[str]:
    items = synthetic.generate(kind, n_items, seed, heldout)
    fmt = synthetic.math_worked if kind == "math" else synthetic.sft_text
    return ["\n".join(fmt(it) for it in items[i : i + per_doc]) for i in range(0, len(items), per_doc)]


def build(
    name: str,
    seed: int,
    heldout_fraction: float,
    max_chars: int = 2_000_000,
    n_items: int = 50_000,
    per_doc: int = 8,
) -> tuple[list[str], list[str]]:
    if name in ("prose", "code"):
        docs = prose_docs(max_chars, seed) if name == "prose" else code_docs(max_chars, seed)
        return split_docs(docs, heldout_fraction)
    if name in synthetic.GENERATORS:
        n_held = max(per_doc, int(n_items * heldout_fraction))
        return (
            synthetic_docs(name, n_items, seed, False, per_doc),
            synthetic_docs(name, n_held, seed, True, per_doc),
        )
    raise KeyError(name)


NAMES = ("prose", "code", "math", "sft")
