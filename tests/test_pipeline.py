import json
import subprocess
import sys

import yaml
from conftest import micro_cfg

from mergemix.pipeline import Pipeline


def _artifacts(root):
    return {p.relative_to(root).as_posix() for p in (root / "cache").glob("*/*") if (p / "manifest.json").is_file()}


def test_micro_end_to_end_outputs(micro_run):
    pipe, _summary = micro_run
    run = pipe.run_dir
    for f in ("table.md", "table.csv", "table.png", "summary.json", "mixture.yaml", "seeds.csv"):
        assert (run / f).is_file(), f
    s = json.loads((run / "summary.json").read_text())
    assert set(s["alpha_star"]) == {"code", "math", "prose", "sft"}
    assert abs(sum(s["alpha_star"].values()) - 1) < 1e-5
    rows = s["rows"]
    assert {"base", "expert:code", "expert:math", "expert:prose", "expert:sft", "uniform (trained)",
            "mergemix (trained)", "mergemix (merge)"} <= set(rows)
    assert all("U" in r and set(r["capabilities"]) == {"code", "instruct", "language", "math"} for r in rows.values())
    mix = yaml.safe_load((run / "mixture.yaml").read_text())
    assert mix["domains"] == ["code", "math", "prose", "sft"]
    assert list(mix["alpha_star"]) == mix["domains"]
    assert "U" in mix["predicted"] and "U" in mix["verified"]
    assert "calibration" in s and "expert_gains" in s["calibration"]


def test_second_run_reuses_every_artifact(micro_run, micro_root, tmp_path):
    before = _artifacts(micro_root)
    cfg = micro_cfg(micro_root, f"paths.run_dir={tmp_path}/again")
    summary = Pipeline(cfg, cfg["paths"]["run_dir"]).run()
    assert _artifacts(micro_root) == before
    assert summary["alpha_star"] == micro_run[1]["alpha_star"]


def test_changed_input_recomputes_only_its_dependents(micro_run, micro_root, tmp_path):
    pipe, _ = micro_run
    cfg = micro_cfg(micro_root, "experts.lr=0.002", f"paths.run_dir={tmp_path}/lr")
    other = Pipeline(cfg, cfg["paths"]["run_dir"])
    assert other.tokenizer_dir == pipe.tokenizer_dir
    assert other.token_dirs == pipe.token_dirs
    assert other.base_dir == pipe.base_dir
    assert all(other.expert_dirs[n] != pipe.expert_dirs[n] for n in pipe.domain_names)


def test_changed_domain_file_invalidates_that_domain(tmp_path):
    from mergemix.cli import compose, to_plain

    (tmp_path / "a.txt").write_text("alpha " * 50)
    (tmp_path / "b.txt").write_text("beta " * 50)
    (tmp_path / "conf" / "domains").mkdir(parents=True)
    (tmp_path / "conf" / "domains" / "two.yaml").write_text(
        f"heldout_fraction: 0.0\nbase_mixture: token\nsources:\n"
        f"  a: {{source: files, paths: [{tmp_path}/a.txt]}}\n  b: {{source: files, paths: [{tmp_path}/b.txt]}}\n")
    (tmp_path / "conf" / "benchmarks").mkdir()
    (tmp_path / "bench.jsonl").write_text('{"prompt": "1+1=", "answer": "2"}\n')
    (tmp_path / "conf" / "benchmarks" / "mine.yaml").write_text(
        f"metric: prob\nbatch_size: 8\nmax_length: 64\nbootstrap: 10\ncapabilities:\n"
        f"  math: {{domain: a, tasks: [sums]}}\ntasks:\n  sums: {{source: jsonl, path: {tmp_path}/bench.jsonl}}\n")
    cfg = to_plain(compose(["domains=two", "benchmarks=mine", "logger=none", f"paths.root={tmp_path}"],
                           str(tmp_path / "conf")))
    first = Pipeline(cfg, tmp_path / "r1").corpus
    (tmp_path / "b.txt").write_text("gamma " * 50)
    second = Pipeline(cfg, tmp_path / "r2").corpus
    assert first["a"] == second["a"] and first["b"] != second["b"]


def _mergemix(*args, cwd):
    return subprocess.run([sys.executable, "-m", "mergemix.cli", *args], capture_output=True, text=True, check=False,
                          cwd=cwd, timeout=300)


def test_run_bad_inputs_one_line_nonzero(tmp_path):
    cases = [
        (["run", "no_such_key=1"], "Could not override 'no_such_key'"),
        (["run", "domains=example_files"], "no file matches data/code/*.parquet"),
        (["run", "experiment=micro", "base.mixture={code: 0.5, math: 0.6, prose: 0, sft: 0}"], "sum to 1"),
        (["mix", "experiment=micro", "weights={code: 1.0}"], "miss domains"),
    ]
    for args, message in cases:
        res = _mergemix(*args, f"paths.root={tmp_path}/out", cwd=tmp_path)
        lines = [ln for ln in res.stderr.strip().splitlines() if ln.strip()]
        assert res.returncode != 0 and len(lines) == 1, res.stderr
        assert lines[0].startswith("error:") and message in lines[0], res.stderr
        assert not any("Traceback" in ln for ln in lines), res.stderr


def test_wandb_logger_offline_one_run_per_stage(micro_run, micro_root, tmp_path):
    import os

    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true"}
    env.pop("WANDB_API_KEY", None)
    res = subprocess.run([sys.executable, "-m", "mergemix.cli", "mix", "experiment=micro", "logger=wandb",
                          "weights={code: 0.1, math: 0.2, prose: 0.3, sft: 0.4}", f"paths.root={micro_root}",
                          f"paths.run_dir={tmp_path}/wb"], capture_output=True, text=True, check=False, env=env,
                         cwd=tmp_path, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    runs = list((tmp_path / "wb" / "wandb").glob("offline-run-*"))
    assert len(runs) == 1, runs  # base and experts were cached: only the mixture stage trained
    assert any(runs[0].rglob("*.wandb"))
