"""Trustworthy results: nothing non-finite is scored or cached, a damaged or unreadable cache entry is rebuilt
(never used, never a traceback), concurrent merges and runs cannot overwrite each other, and random bad input
(override values, benchmark items) ends in one `error:` line with nothing cached changed."""

from __future__ import annotations

import json
import math
import os
import re
import string
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from mergemix import artifacts
from mergemix.artifacts import ArtifactStore
from mergemix.errors import MergeMixError
from mergemix.schema import MIN_BUDGET, leaves
from mergemix.search.evalcache import EvalCache, record_line


def _result(u: float = 0.5, prob: float = 0.5) -> dict:
    return {
        "tasks": {"math_mc": {"prob": prob}},
        "capabilities": {"math": u},
        "capabilities_std": {"math": 0.1},
        "U": u,
        "U_std": 0.1,
        "items": {"math_mc": [u]},
    }


# ------------------------------------------------------------------------------------ non-finite scores ---
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_a_non_finite_score_is_an_error_naming_the_merge_and_task_and_is_not_cached(bad, tmp_path):
    cache = EvalCache(tmp_path / "evals.jsonl")
    with pytest.raises(
        MergeMixError, match=r"merge alpha=\(0\.250000,0\.750000\) scores .* on tasks\.math_mc\.prob:"
    ):
        cache.get_or_eval([0.25, 0.75], lambda: _result(prob=bad))
    assert not (tmp_path / "evals.jsonl").exists() and not cache.entries
    cache.get_or_eval([0.25, 0.75], lambda: _result())  # a finite score is cached as before
    assert EvalCache(tmp_path / "evals.jsonl").entries == {"0.250000,0.750000": _result()}


@pytest.mark.parametrize(
    "line",
    [
        '{"key": "0.500000,0.500000", "alpha": [0.5, 0.5], "result": {"U": NaN, "capabilities": {}}}',  # old NaN
        '{"key": "0.500000,0.500000", "result": {"U": 0.5, "capabilities": {"math": Infinity}}}',
        '{"key": "0.500000,0.500000"}',
        "5",
        "[1, 2]",
        '{"key": 3, "result": {"U": 0.5}}',
        '{"key": "0.500000,0.500000", "result": "x"}',
        '{"key": "0.5',
        "\ufffd\ufffd",
    ],
    ids=["nan", "inf", "no-result", "number", "list", "key-type", "result-type", "cut", "binary"],
)
def test_an_unreadable_or_non_finite_evaluation_cache_line_is_evaluated_again(line, tmp_path):
    path = tmp_path / "evals.jsonl"
    good = record_line("evals", [0.1, 0.9], _result(0.3))  # with its digest (a line of this cache)
    path.write_text(f"{good}{line}\n")
    cache = EvalCache(path)
    assert set(cache.entries) == {"0.100000,0.900000"}
    calls = []
    cache.get_or_eval([0.5, 0.5], lambda: calls.append(1) or _result())
    assert calls == [1] and cache.get_or_eval([0.1, 0.9], lambda: pytest.fail("re-evaluated")) == _result(0.3)


def test_checkpoint_scores_that_are_not_finite_are_an_error_and_nothing_is_stored(tmp_path, monkeypatch):
    from mergemix.pipeline import Pipeline

    pipe = Pipeline.__new__(Pipeline)  # only what eval_dir reads
    pipe.cfg, pipe.store = {"trainer": {}}, ArtifactStore(tmp_path / "cache")
    monkeypatch.setattr(Pipeline, "suite_key", "suite0")
    monkeypatch.setattr(Pipeline, "suite", type("S", (), {"evaluate": lambda self, m: _result(u=math.nan)})())
    monkeypatch.setattr("mergemix.models.load_checkpoint", lambda p: None)
    (tmp_path / "ckpt").mkdir()
    with pytest.raises(MergeMixError, match=r"checkpoint .*ckpt scores nan on capabilities\.math:"):
        pipe.eval_dir(tmp_path / "ckpt")
    assert not [p for p in (tmp_path / "cache" / "eval").iterdir()]


# ------------------------------------------------------------------------------ artifacts and digests ---
def _build(store: ArtifactStore, calls: list, payload: bytes = b"weights"):
    def build(tmp: Path):
        calls.append(1)
        (tmp / "model.safetensors").write_bytes(payload)
        (tmp / "scores.json").write_text('{"U": 0.5}')

    return store.get_or_build("expert", {"domain": "code"}, build)


@pytest.mark.parametrize(
    "damage",
    ["flip", "truncate", "remove", "manifest-cut", "manifest-binary", "manifest-not-object", "scores-cut"],
)
def test_a_damaged_artifact_is_rebuilt_not_used(damage, tmp_path, monkeypatch):
    monkeypatch.setattr(artifacts, "_VERIFIED", set())  # a new process
    store, calls = ArtifactStore(tmp_path / "cache"), []
    path = _build(store, calls)
    manifest = json.loads((path / "manifest.json").read_text())
    assert set(manifest["digest"]) == {"model.safetensors", "scores.json"}
    target = {
        "flip": "model.safetensors",
        "truncate": "model.safetensors",
        "remove": "model.safetensors",
        "scores-cut": "scores.json",
    }.get(damage, "manifest.json")
    data = (path / target).read_bytes()
    if damage == "flip":
        (path / target).write_bytes(bytes([data[0] ^ 0x40]) + data[1:])  # same size, one bit
    elif damage == "remove":
        (path / target).unlink()
    elif damage == "manifest-binary":
        (path / target).write_bytes(b"\xff\xfe\x00")
    elif damage == "manifest-not-object":
        (path / target).write_text("5")
    else:
        (path / target).write_bytes(data[: len(data) // 2])
    monkeypatch.setattr(artifacts, "_VERIFIED", set())  # the next run
    assert _build(store, calls) == path and calls == [1, 1]
    assert (path / "model.safetensors").read_bytes() == b"weights" and json.loads(
        (path / "scores.json").read_text()
    )


def test_an_intact_artifact_is_hashed_once_per_process(tmp_path, monkeypatch):
    monkeypatch.setattr(artifacts, "_VERIFIED", set())
    store, calls, hashed = ArtifactStore(tmp_path / "cache"), [], []
    _build(store, calls)
    digest = artifacts.content_digest
    monkeypatch.setattr(artifacts, "content_digest", lambda p: hashed.append(p) or digest(p))
    monkeypatch.setattr(artifacts, "_VERIFIED", set())
    for _ in range(3):
        _build(store, calls)
    assert calls == [1] and len(hashed) == 1


def test_a_manifest_without_digest_from_an_older_version_is_used(tmp_path, monkeypatch):
    monkeypatch.setattr(artifacts, "_VERIFIED", set())
    store, calls = ArtifactStore(tmp_path / "cache"), []
    path = _build(store, calls)
    manifest = json.loads((path / "manifest.json").read_text())
    del manifest["digest"]
    (path / "manifest.json").write_text(json.dumps(manifest))
    monkeypatch.setattr(artifacts, "_VERIFIED", set())
    assert _build(store, calls) == path and calls == [1]


def test_a_tampered_cached_evaluation_of_a_real_run_is_recomputed_not_read(micro_run, monkeypatch):
    """Scores edited in place (well-formed, one number changed) no longer match the manifest: evaluated again."""
    pipe, _ = micro_run
    path = pipe.eval_dir(pipe.base_dir)
    good = json.loads((path / "scores.json").read_text())
    (path / "scores.json").write_text(json.dumps({**good, "U": 0.99}, indent=2))
    monkeypatch.setattr(artifacts, "_VERIFIED", set())  # the next process
    again = pipe.evaluate_checkpoint(pipe.base_dir)  # recomputed (to float noise: another thread count)
    assert again["U"] == pytest.approx(good["U"], abs=1e-9) and again["capabilities"] == pytest.approx(
        good["capabilities"], abs=1e-9
    )
    assert artifacts.content_digest(path) == json.loads((path / "manifest.json").read_text())["digest"]


@pytest.mark.parametrize("text", ["", "{", "\x00\x01", "[1]", '"x"'])
def test_an_unreadable_digest_memo_counts_as_empty(text, tmp_path):
    (tmp_path / "digests.json").write_text(text)
    assert artifacts.read_json(tmp_path / "digests.json", {}) == {}


@pytest.mark.parametrize("content", [b"", b"not a checkpoint", b"PK\x03\x04 cut zip"])
def test_an_unreadable_partial_checkpoint_is_dropped_and_training_starts_over(content, tmp_path, capsys):
    from mergemix.resume import latest_checkpoint

    (tmp_path / "step-00000004.ckpt").write_bytes(content)
    assert latest_checkpoint(tmp_path) is None
    assert not list(tmp_path.iterdir()) and "cannot be read" in capsys.readouterr().err


def test_a_readable_partial_checkpoint_is_resumed_from(tmp_path):
    import torch

    from mergemix.resume import latest_checkpoint

    torch.save({"state_dict": {"w": torch.ones(2)}, "global_step": 4}, tmp_path / "step-00000004.ckpt")
    assert latest_checkpoint(tmp_path) == (tmp_path / "step-00000004.ckpt", 4)


# -------------------------------------------------------------------------------- merges and run dirs ---
@pytest.fixture(scope="module")
def tiny_ckpts(tmp_path_factory):
    """A tiny base and two experts (the base's weights shifted), as user checkpoints."""
    import torch

    from mergemix.models import build_model

    d = tmp_path_factory.mktemp("ckpts")
    spec = {
        "name": "t",
        "hidden_size": 16,
        "num_layers": 1,
        "num_heads": 2,
        "num_kv_heads": 1,
        "intermediate_size": 32,
        "seq_len": 16,
        "batch_size": 2,
        "max_position_embeddings": 16,
    }
    model = build_model(spec, 64, 0)
    model.save_pretrained(d / "base")
    for i, name in enumerate(("a", "b"), 1):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.01 * i)
        model.save_pretrained(d / name)
    return d


def test_a_merge_never_touches_a_users_temporary_looking_folder(tiny_ckpts, tmp_path):
    from mergemix.merging import export_merge

    precious = tmp_path / ".precious.tmp"
    precious.mkdir()
    (precious / "notes.txt").write_text("mine")
    export_merge(tiny_ckpts / "base", [tiny_ckpts / "a"], [1.0], tmp_path / "precious")
    assert (precious / "notes.txt").read_text() == "mine"
    assert (tmp_path / "precious" / "config.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == [".precious.tmp", "precious"]  # no temporary left


@pytest.mark.parametrize("stream", [False, True])
def test_of_two_merges_to_one_out_only_one_reports_success(stream, tiny_ckpts, tmp_path, monkeypatch):
    """The second merge finishes while the first is writing its result: it must fail, and the first's files stay."""
    from mergemix import merging

    out = tmp_path / "merged"
    real_copy = merging.shutil.copy2

    def copy_then_race(src, dst):  # the other merge completes while this one finishes its files
        if not out.exists():
            monkeypatch.setattr(merging.shutil, "copy2", real_copy)
            merging.export_merge(tiny_ckpts / "base", [tiny_ckpts / "b"], [1.0], out, stream=stream)
        return real_copy(src, dst)

    monkeypatch.setattr(merging.shutil, "copy2", copy_then_race)
    with pytest.raises(MergeMixError, match="exists and is not empty"):
        merging.export_merge(tiny_ckpts / "base", [tiny_ckpts / "a"], [1.0], out, stream=True)
    winner = (out / "model.safetensors").read_bytes()
    again = tmp_path / "b_only"
    merging.export_merge(tiny_ckpts / "base", [tiny_ckpts / "b"], [1.0], again, stream=stream)
    assert winner == (again / "model.safetensors").read_bytes()  # the first finisher's merge, whole
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b_only", "merged"]


def test_run_directories_carry_the_microsecond_and_the_process_id(tmp_path):
    import yaml
    from hydra.core.utils import setup_globals
    from omegaconf import OmegaConf

    from mergemix.cli import CONF_DIR, _register_resolvers
    from mergemix.commands import run_dir as _run_dir

    setup_globals()  # Hydra's `now` resolver
    _register_resolvers()
    run_dir = yaml.safe_load((CONF_DIR / "hydra" / "default.yaml").read_text())["run"]["dir"]
    hydra_dir = OmegaConf.create({"d": run_dir.replace("${paths.root}", "r").replace("${run_name}", "n")}).d
    plain_dir = _run_dir(
        {"paths": {"root": str(tmp_path), "run_dir": None}, "run_name": "n"}
    )  # outside Hydra
    for name in (Path(hydra_dir).name, plain_dir.name):  # another process: another id; this one: a later time
        assert re.fullmatch(rf"\d{{4}}-\d\d-\d\d_\d\d-\d\d-\d\d\.\d{{6}}-{os.getpid()}", name), name


@pytest.mark.slow
def test_two_runs_started_at_once_get_their_own_directories(tmp_path):
    import subprocess

    code = f"from mergemix.cli import main; main(['info', 'experiment=micro', 'paths.root={tmp_path}'])"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
        )
        for _ in range(2)
    ]
    outs = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), [e[-1000:] for _, e in outs]
    runs = list((tmp_path / "runs" / "micro").iterdir())
    assert {r.name.rsplit("-", 1)[1] for r in runs} == {str(p.pid) for p in procs}


# ------------------------------------------------------------------------- random bad input (hypothesis) ---
# Each example is one bad input run through the CLI: exit 2, exactly one `error:` line, no traceback, nothing cached
# changed. The fast properties run `execute` (what the Hydra entry point runs) on a config composed once; the slow
# ones run `mergemix.cli.main` whole, Hydra's override parser included.
RULES = leaves()  # every setting the typed schema checks
CHECKED = sorted(RULES)
TEXT = st.text(alphabet=string.ascii_letters + string.digits + " _-.:/", max_size=10)
VALUES = st.one_of(
    st.integers(-(10**12), 10**12), st.floats(allow_nan=True, allow_infinity=True), st.booleans(), TEXT
)
FAST = settings(max_examples=120, deadline=None, suppress_health_check=list(HealthCheck), database=None)
SLOW = settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck), database=None)


def rejected(cfg: dict, key: str, value) -> bool:
    """Whether the config's rules refuse `value` at `key` (the property is about how the refusal reaches the user)."""
    if key == "search.budget" and isinstance(value, int) and not isinstance(value, bool):
        return value < MIN_BUDGET.get(cfg["search"]["backend"], 1)
    return not RULES[key].accepts(value)


def hydra_text(value) -> str:
    """The override text Hydra parses back into `value`."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    return repr(value) if isinstance(value, (int, float)) else f"'{value}'"


def with_value(cfg: dict, dotted: str, value) -> dict:
    import copy

    new = copy.deepcopy(cfg)
    *parents, leaf = dotted.split(".")
    node = new
    for part in parents:
        node = node.setdefault(part, {})
    node[leaf] = value
    return new


@pytest.fixture(scope="module")
def guarded_home(tmp_path_factory):
    """A home with a small cached artifact, whose files each example must leave as they are."""
    from test_bad_input import _snapshot

    home = tmp_path_factory.mktemp("home")
    _build(ArtifactStore(home / "cache"), [])
    return home, _snapshot(home / "cache")


def run_execute(cfg: dict, capsys) -> tuple[int, list[str]]:
    """`execute` as the Hydra entry point runs it: an input error is one `error:` line and exit 2."""
    from mergemix.cli import _fail, execute

    capsys.readouterr()
    try:
        execute("run", cfg)
        code = 0
    except MergeMixError as exc:
        try:
            _fail(str(exc))
        except SystemExit as stop:
            code = stop.code
    out = capsys.readouterr()
    assert "Traceback" not in out.out + out.err
    return code, [ln for ln in out.err.splitlines() if ln.strip()]


def assert_refused(code: int, lines: list[str], guarded_home, *, contains: str = "") -> None:
    from test_bad_input import _snapshot

    home, before = guarded_home
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: ") and contains in lines[0], lines
    assert _snapshot(home / "cache") == before


@pytest.fixture(scope="module")
def micro_plain(guarded_home, tmp_path_factory):
    from conftest import micro_cfg

    return micro_cfg(guarded_home[0], f"paths.run_dir={tmp_path_factory.mktemp('run')}")


@pytest.fixture
def no_training(monkeypatch):
    from mergemix import training

    monkeypatch.setattr(training, "train_causal_lm", lambda *a, **k: pytest.fail("trained despite bad input"))


@FAST
@given(key=st.sampled_from(CHECKED), value=VALUES)
def test_random_bad_setting_is_one_error_line(key, value, micro_plain, guarded_home, no_training, capsys):
    assume(rejected(micro_plain, key, value))
    code, lines = run_execute(with_value(micro_plain, key, value), capsys)
    assert_refused(code, lines, guarded_home, contains=key)


SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-5, 5), st.floats(allow_nan=False, width=16), TEXT)
JSON = st.one_of(SCALARS, st.lists(SCALARS, max_size=3))
CHOICE_LISTS = st.one_of(
    JSON, st.lists(st.one_of(st.sampled_from(["", " ", " four", " five"]), TEXT, SCALARS), max_size=4)
)


def mc_ok(item) -> bool:
    """A well-formed multiple-choice item (the oracle the random items are judged by)."""
    if not isinstance(item, dict) or not {"context", "choices", "label"} <= set(item):
        return False
    c, label = item["choices"], item["label"]
    ok = isinstance(c, list) and len(c) >= 2 and all(isinstance(x, str) and x.strip() for x in c)
    ok = ok and len(set(c)) == len(c)
    return ok and isinstance(label, int) and not isinstance(label, bool) and 0 <= label < len(c)


BAD_LINES = st.one_of(
    JSON.map(json.dumps),  # not an object
    st.fixed_dictionaries({}, optional={"context": JSON, "choices": CHOICE_LISTS, "label": JSON})
    .filter(lambda item: not mc_ok(item))
    .map(json.dumps),
    st.text(max_size=20).map(
        lambda t: json.dumps({"context": t, "choices": ["a", "b"], "label": 0})[:-1]
    ),  # cut
    st.binary(min_size=1, max_size=8).map(  # not UTF-8, on the one line
        lambda b: b'{"context": "' + b.replace(b"\n", b"") + b'\xff", "choices": ["a", "b"]}'
    ),
)


def bad_file(tmp_path: Path, line) -> Path:
    path = tmp_path / f"items-{abs(hash(line))}.jsonl"
    first = json.dumps({"context": "2+2=", "choices": [" four", " five"], "label": 0}) + "\n"
    path.write_bytes(first.encode() + (line if isinstance(line, bytes) else line.encode()) + b"\n")
    return path


@FAST
@given(line=BAD_LINES)
def test_random_malformed_benchmark_item_is_one_error_line_naming_file_and_line(
    line, micro_plain, guarded_home, no_training, tmp_path, capsys
):
    assume(line.strip() if isinstance(line, str) else True)
    path = bad_file(tmp_path, line)
    cfg = with_value(micro_plain, "benchmarks.tasks.mine", {"source": "jsonl", "path": str(path)})
    code, lines = run_execute(cfg, capsys)
    assert_refused(code, lines, guarded_home, contains=f"benchmark 'mine': {path}:2")


@pytest.mark.slow
@SLOW
@given(key=st.sampled_from(CHECKED), value=VALUES, line=BAD_LINES)
def test_random_bad_command_line_is_one_error_line(
    key, value, line, micro_plain, guarded_home, no_training, tmp_path, capsys, monkeypatch
):
    """The whole CLI: a bad setting typed on the command line, or a bad item in a benchmark file it names."""
    from conftest import run_cli

    assume(rejected(micro_plain, key, value) and (line.strip() if isinstance(line, str) else True))
    home = guarded_home[0]
    args = ["run", "experiment=micro", "logger=none", f"paths.root={home}", f"hydra.run.dir={tmp_path}/hydra"]
    code, _, lines = run_cli([*args, f"++{key}={hydra_text(value)}"], capsys, monkeypatch)
    assert_refused(code, lines, guarded_home)
    path = bad_file(tmp_path, line)
    code, _, lines = run_cli(
        [*args, f"+benchmarks.tasks.mine={{source: jsonl, path: '{path}'}}"], capsys, monkeypatch
    )
    assert_refused(code, lines, guarded_home, contains=f"{path}:2")
