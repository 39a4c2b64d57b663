"""User data at scale: shard directories, saved datasets, parallel packing into memory maps, token caps and the
repetition limit."""

import json
import random
import sys

import numpy as np
import pytest
from conftest import load_domain

from mergemix.data import domains, tokens
from mergemix.data.tokenizer import train_tokenizer
from mergemix.errors import MergeMixError

WORDS = [
    "alpha",
    "beta",
    "gamma",
    "delta",
    "river",
    "stone",
    "light",
    "shadow",
    "code",
    "math",
    "proof",
    "number",
    "seven",
    "eleven",
]


def _docs(n, seed):
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(5, 60))) + "." for _ in range(n)]


def _write_jsonl(path, docs):
    path.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("tok") / "tok"
    train_tokenizer(_docs(300, 0), 300, d)
    return d


@pytest.fixture
def shard_dir(tmp_path):
    """A directory of shards in every format, nested, with files a reader must skip."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    root = tmp_path / "web"
    (root / "part2").mkdir(parents=True)
    for i in range(6):
        _write_jsonl(root / f"{i:02d}.jsonl", _docs(40, 10 + i))
    pq.write_table(pa.table({"text": _docs(50, 30)}), root / "part2" / "a.parquet")
    (root / "part2" / "b.txt").write_text(_docs(1, 31)[0])
    (root / "_SUCCESS").write_text("")
    (root / ".00.jsonl.crc").write_text("x")
    (root / "notes.md").write_text("not data")
    return root


def test_shard_directory_expands_to_its_readable_files(shard_dir):
    files = domains.resolve_files("web", {"paths": [str(shard_dir)]})
    assert [f.relative_to(shard_dir).as_posix() for f in files] == [
        *(f"{i:02d}.jsonl" for i in range(6)),
        "part2/a.parquet",
        "part2/b.txt",
    ]
    train, held = load_domain("web", {"source": "files", "paths": [str(shard_dir)]}, 0, 0.2)
    assert len(train) + len(held) == 6 * 40 + 50 + 1 and held and len(train) > len(held)


def test_shard_directory_without_readable_files_is_one_clear_error(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "README.md").write_text("no data here")
    with pytest.raises(MergeMixError, match="holds no readable shards"):
        domains.resolve_files("web", {"paths": [str(tmp_path / "empty")]})


def test_parallel_packing_equals_serial_and_is_memory_mapped(shard_dir, tok_dir, tmp_path):
    from mergemix.data.tokenizer import load_tokenizer

    spec = {"source": "files", "paths": [str(shard_dir)]}
    parts = domains.shards("web", spec, tmp_path, 0.1, shard_bytes=3000)
    assert len(parts) >= 4  # small files grouped into several units
    out = {}
    for workers in (1, 2):
        d = tmp_path / f"w{workers}"
        d.mkdir()
        meta = tokens.pack_shards(parts, tok_dir, d, num_workers=workers)
        assert meta["workers"] == workers
        out[workers] = {s: tokens.load_split(d, s) for s in ("train", "heldout")}
    train = out[1]["train"]
    assert isinstance(train, np.memmap) and train.dtype == np.uint16
    for s in ("train", "heldout"):
        assert np.array_equal(out[1][s], out[2][s])
    ref_train, ref_held = load_domain("web", spec, 0, 0.1)  # the in-memory reference
    tok = load_tokenizer(tok_dir)
    assert np.array_equal(train, tokens.pack(tok, ref_train))
    assert np.array_equal(out[1]["heldout"], tokens.pack(tok, ref_held))
    index = json.loads((tmp_path / "w1" / "index.json").read_text())["index"]
    assert [e["train"][0] for e in index] == list(np.cumsum([0] + [e["train"][1] for e in index[:-1]]))


def test_max_tokens_cuts_exactly_and_stops_reading(shard_dir, tok_dir, tmp_path):
    parts = domains.shards("web", {"source": "files", "paths": [str(shard_dir)]}, tmp_path, 0.0, 3000)
    (tmp_path / "full").mkdir()
    (tmp_path / "cap").mkdir()
    tokens.pack_shards(parts, tok_dir, tmp_path / "full", 1)
    meta = tokens.pack_shards(parts, tok_dir, tmp_path / "cap", 1, max_tokens=1000)
    full, cap = tokens.load_split(tmp_path / "full"), tokens.load_split(tmp_path / "cap")
    assert len(cap) == 1000 and np.array_equal(cap, full[:1000])
    assert meta["shards_read"] < meta["shards"]


def test_saved_hf_dataset_is_a_domain(tok_dir, tmp_path):
    datasets = pytest.importorskip("datasets")
    docs = _docs(120, 5)
    datasets.Dataset.from_dict({"body": docs, "n": list(range(120))}).save_to_disk(str(tmp_path / "ds"))
    datasets.DatasetDict({"train": datasets.Dataset.from_dict({"body": docs[:30]})}).save_to_disk(
        str(tmp_path / "dd")
    )
    spec = {"source": "files", "paths": [str(tmp_path / "ds")], "text_field": "body"}
    assert domains.resolve_files("hf", spec) == [tmp_path / "ds"]
    train, held = load_domain("hf", spec, 0, 0.0)
    assert train == docs and held == []
    parts = domains.shards("hf", spec, tmp_path, 0.0, shard_bytes=2000)
    assert len(parts) > 1 and parts[0].rows[0] == 0 and parts[-1].rows[1] == 120
    (tmp_path / "packed").mkdir()
    tokens.pack_shards(parts, tok_dir, tmp_path / "packed", 1)
    from mergemix.data.tokenizer import load_tokenizer

    assert np.array_equal(tokens.load_split(tmp_path / "packed"), tokens.pack(load_tokenizer(tok_dir), docs))
    dd = {"source": "files", "paths": [str(tmp_path / "dd")], "text_field": "body"}
    assert load_domain("hf", dd, 0, 0.0)[0] == docs[:30]
    with pytest.raises(MergeMixError, match="no split 'test'"):
        load_domain("hf", {**dd, "split": "test"}, 0, 0.0)
    with pytest.raises(MergeMixError, match="no column 'text'"):
        load_domain("hf", {"source": "files", "paths": [str(tmp_path / "ds")]}, 0, 0.0)


def test_saved_dataset_without_the_datasets_package_is_a_clear_error(tmp_path, monkeypatch):
    (tmp_path / "ds").mkdir()
    (tmp_path / "ds" / "dataset_info.json").write_text("{}")
    monkeypatch.setitem(sys.modules, "datasets", None)  # makes `import datasets` fail
    with pytest.raises(MergeMixError, match="needs the `datasets` package"):
        domains.resolve_files("hf", {"paths": [str(tmp_path / "ds")]})


def test_unreadable_shard_is_one_clear_error(tmp_path, tok_dir):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "bad.parquet").write_bytes(b"not parquet at all")
    with pytest.raises(MergeMixError, match="bad.parquet: not a readable parquet file"):
        load_domain("web", {"source": "files", "paths": [str(tmp_path / "d")]}, 0, 0.0)


def test_stored_npy_tokens_still_load(tmp_path):
    np.save(tmp_path / "train.npy", np.arange(10, dtype=np.uint16))
    assert np.array_equal(tokens.load_split(tmp_path), np.arange(10))


# ------------------------------------------------------------------------------------ pipeline level ---
def _shard_pipeline(tmp_path, *overrides):
    from mergemix.cli import compose, to_plain
    from mergemix.pipeline import Pipeline

    big, small = tmp_path / "big", tmp_path / "small"
    big.mkdir(exist_ok=True)
    small.mkdir(exist_ok=True)
    for i in range(4):
        _write_jsonl(big / f"{i}.jsonl", _docs(150, i))
    _write_jsonl(small / "0.jsonl", _docs(40, 99))
    conf = tmp_path / "conf"
    (conf / "domains").mkdir(parents=True, exist_ok=True)
    (conf / "benchmarks").mkdir(exist_ok=True)
    (conf / "domains" / "two.yaml").write_text(
        f"heldout_fraction: 0.05\nbase_mixture: token\nsources:\n"
        f"  big: {{source: files, paths: [{big}]}}\n  small: {{source: files, paths: [{small}/*.jsonl]}}\n"
    )
    (tmp_path / "bench.jsonl").write_text(
        '{"context": "river", "choices": [" stone", " seven"], "label": 0}\n'
    )
    (conf / "benchmarks" / "mine.yaml").write_text(
        f"metric: prob\nbatch_size: 8\nmax_length: 64\nbootstrap: 10\ncapabilities:\n"
        f"  words: {{domain: big, tasks: [w]}}\ntasks:\n  w: {{source: jsonl, path: {tmp_path}/bench.jsonl}}\n"
    )
    cfg = to_plain(
        compose(
            [
                "domains=two",
                "benchmarks=mine",
                "model=micro",
                "logger=none",
                "tokenizer.vocab_size=300",
                "tokenizer.train_chars=20000",
                "data.shard_mb=0.005",
                "data.num_workers=1",
                "base.tokens=4096",
                "base.warmup_steps=1",  # within its 2 steps
                f"paths.root={tmp_path}/out",
                *overrides,
            ],
            str(conf),
        )
    )
    return Pipeline(cfg, tmp_path / "run")


def test_pipeline_packs_shard_domains_and_trains_from_memory_maps(tmp_path):
    from mergemix.training import MixtureDataModule, WindowDataset

    pipe = _shard_pipeline(tmp_path, "+domains.sources.big.max_tokens=5000")
    assert pipe.token_counts["big"] == 5000 and pipe.token_counts["small"] > 1000
    assert all(isinstance(a, np.memmap) for a in pipe.arrays.values())
    data = MixtureDataModule(pipe.arrays, {"big": 0.5, "small": 0.5}, 4096, 128, 16, seed=0)
    ds = WindowDataset(pipe.arrays, data.plan)
    d, s = data.plan.domain[0], data.plan.start[0]
    assert np.array_equal(ds[0].numpy(), pipe.arrays[data.plan.domains[d]][s : s + 128])


def test_repetition_beyond_max_epochs_is_refused_before_any_training(tmp_path):
    pipe = _shard_pipeline(tmp_path, "experts.tokens=20480")
    small = pipe.token_counts["small"]
    with pytest.raises(
        MergeMixError, match=r"expert:small would repeat domain 'small' [\d.]+ times .* max_epochs 4"
    ):
        _ = pipe.expert_dirs
    assert not any((tmp_path / "out" / "cache" / stage).exists() for stage in ("base", "expert"))
    assert 20480 / small > 4
    relaxed = _shard_pipeline(
        tmp_path, "experts.tokens=20480", f"+domains.sources.small.max_epochs={20480 / small + 1}"
    )
    relaxed.check_epochs({"big": 0.0, "small": 1.0}, 20480, "expert:small")  # the per-domain limit allows it
    with pytest.raises(MergeMixError, match="mix:custom would repeat domain 'big'"):
        relaxed.check_epochs({"big": 1.0, "small": 0.0}, 10 * pipe.token_counts["big"], "mix:custom")
