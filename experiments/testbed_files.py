"""A second testbed, declared the way a user declares data: four domains of plain-text files and four JSONL
cloze benchmarks, built from text that ships with the machine (not the embedded generators), plus a config
directory for `mergemix --config-dir`.

    python experiments/testbed_files.py OUT        # writes OUT/data/<domain>/*.txt, OUT/bench/<domain>.jsonl,
                                                   # OUT/conf/{domains,benchmarks}/files4.yaml, OUT/testbed.json
    mergemix run --config-dir OUT/conf domains=files4 benchmarks=files4

Domains: `c` (C headers, /usr/include), `perl` (Perl modules with their POD, /usr/share/perl), `legal` (Debian
copyright files, /usr/share/doc/*/copyright, deduplicated), `manual` (section 1 and 8 man pages rendered to text).
Files are picked deterministically (by a hash of their path) up to a character budget per domain; one file in ten
(also by hash) is held out of the domain and only feeds its benchmark, so no benchmark item is training text."""

from __future__ import annotations

import argparse
import glob
import hashlib
import json
import subprocess
from pathlib import Path

CHARS = 3_000_000  # per domain (~0.8-1M tokens with the 2,048-token BPE)
ITEMS = 800  # cloze items per benchmark
SOURCES = {
    "c": ["/usr/include/**/*.h"],
    "perl": ["/usr/share/perl/**/*.pm", "/usr/share/perl5/**/*.pm"],
    "legal": ["/usr/share/doc/*/copyright"],
    "manual": ["/usr/share/man/man1/*.gz", "/usr/share/man/man8/*.gz"],
}
CAPABILITIES = {"c": "c_code", "perl": "perl", "legal": "legal_prose", "manual": "manuals"}


def _rank(path: str) -> str:
    return hashlib.sha1(path.encode()).hexdigest()


def read_text(domain: str, path: str) -> str | None:
    if domain == "manual":
        out = subprocess.run(
            ["man", "-l", path],
            capture_output=True,
            check=False,
            env={"MANWIDTH": "80", "PATH": "/usr/bin:/bin"},
            timeout=30,
        )
        raw = subprocess.run(["col", "-b"], input=out.stdout, capture_output=True, check=False).stdout
    else:
        raw = Path(path).read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return None
    return text if len(text) >= 500 and "\x00" not in text else None


def collect(domain: str) -> tuple[list[str], list[str]]:
    """(training documents, held-out documents) of one domain, in a fixed order."""
    paths = sorted({p for pat in SOURCES[domain] for p in glob.glob(pat, recursive=True)}, key=_rank)
    train, held, seen, used = [], [], set(), 0
    for p in paths:
        if used >= CHARS:
            break
        text = read_text(domain, p)
        digest = text and hashlib.sha1(text.encode()).hexdigest()
        if not text or digest in seen:
            continue
        seen.add(digest)
        if int(_rank("heldout:" + p)[:2], 16) < 26:  # ~10% of the files, by another hash than the order
            held.append(text)
        else:
            train.append(text)
            used += len(text)
    return train, held


def write(out: Path) -> dict:
    from mergemix.benchmarks.embedded import cloze

    summary = {}
    for domain in SOURCES:
        train, held = collect(domain)
        ddir = out / "data" / domain
        ddir.mkdir(parents=True, exist_ok=True)
        for i, doc in enumerate(train):
            (ddir / f"{i:05d}.txt").write_text(doc)
        task = cloze(f"{domain}_cloze", held, ITEMS, seed=0, context_chars=150)
        (out / "bench").mkdir(exist_ok=True)
        with open(out / "bench" / f"{domain}.jsonl", "w") as fh:
            fh.writelines(json.dumps(it) + "\n" for it in task.items)
        summary[domain] = {
            "train_docs": len(train),
            "train_chars": sum(map(len, train)),
            "heldout_docs": len(held),
            "items": len(task.items),
        }
    write_conf(out)
    (out / "testbed.json").write_text(json.dumps(summary, indent=1))
    return summary


def write_conf(out: Path) -> Path:
    """The config directory declaring the testbed; paths relative to the working directory when the testbed lies
    under it (so that a copy of the project with its testbed runs anywhere), absolute otherwise."""
    out = out.resolve()
    root = out.relative_to(Path.cwd()) if out.is_relative_to(Path.cwd()) else out
    conf = out / "conf"
    (conf / "domains").mkdir(parents=True, exist_ok=True)
    (conf / "benchmarks").mkdir(parents=True, exist_ok=True)
    domains = {
        "heldout_fraction": 0.05,
        "base_mixture": "token",
        "sources": {d: {"source": "files", "paths": [str(root / "data" / d)]} for d in SOURCES},
    }
    bench = {
        "metric": "prob",
        "batch_size": 64,
        "max_length": 256,
        "bootstrap": 200,
        "capabilities": {CAPABILITIES[d]: {"domain": d, "tasks": [f"{d}_cloze"]} for d in SOURCES},
        "tasks": {
            f"{d}_cloze": {"source": "jsonl", "path": str(root / "bench" / f"{d}.jsonl"), "kind": "mc"}
            for d in SOURCES
        },
    }
    (conf / "domains" / "files4.yaml").write_text(json.dumps(domains, indent=1) + "\n")  # JSON is valid YAML
    (conf / "benchmarks" / "files4.yaml").write_text(json.dumps(bench, indent=1) + "\n")
    return conf


def ensure(out: Path) -> Path:
    """Build the testbed under `out` once; returns its config directory."""
    if not (out / "testbed.json").is_file():
        print(f"[testbed] building the file testbed in {out}", flush=True)
        print(json.dumps(write(out), indent=1), flush=True)
    return write_conf(out)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out", type=Path)
    print(json.dumps(write(ap.parse_args().out), indent=1))
