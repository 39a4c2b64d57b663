"""What reaches the tools people compare runs with: offline W&B runs (decoded from their .wandb files), the Optuna
study, HF checkpoints through `transformers.pipeline`, seeds.csv as a data frame, Trainer settings from config."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import micro_cfg


# --------------------------------------------------------------------------------- offline W&B run files ---
def wandb_records(path: Path):
    """The protobuf records of a .wandb transaction log (LevelDB log format: 32 KiB blocks of chunks with a
    7-byte header crc32/length/type; full=1, first=2, middle=3, last=4), after the file's 7-byte header."""
    from wandb.proto import wandb_internal_pb2 as pb

    data, pos, block, buf = path.read_bytes(), 7, 32768, b""
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's trailer too short for a header is padding
            pos += block - pos % block
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        buf, pos = buf + data[pos + 7 : pos + 7 + length], pos + 7 + length
        if kind in (1, 4):
            record = pb.Record()
            record.ParseFromString(buf)
            buf = b""
            yield record


def read_offline_run(run_dir: Path) -> dict:
    """name, group, job_type, config, summary (last value per top-level key), history keys, media types."""
    out = {"config": {}, "summary": {}, "history": set(), "media": set(), "artifacts": set()}
    for r in wandb_records(next(run_dir.glob("run-*.wandb"))):
        kind = r.WhichOneof("record_type")
        if kind == "run":
            out.update(
                name=r.run.display_name, group=r.run.run_group, job_type=r.run.job_type, id=r.run.run_id
            )
            out["config"].update(
                {u.key: json.loads(u.value_json) for u in r.run.config.update if u.key != "_wandb"}
            )
        elif kind == "config":
            out["config"].update(
                {u.key: json.loads(u.value_json) for u in r.config.update if u.key != "_wandb"}
            )
        elif kind == "summary":
            for u in r.summary.update:
                key = u.key or u.nested_key[0]
                if not key.startswith("_") and (u.key or len(u.nested_key) == 1):
                    out["summary"][key] = json.loads(u.value_json)
        elif kind == "history":
            for item in r.history.item:
                key = item.key or item.nested_key[0]
                out["history"].add(key)
                if list(item.nested_key[1:]) == ["_type"]:
                    out["media"].add(json.loads(item.value_json))
        elif kind == "artifact":
            out["artifacts"].add(r.artifact.type)
    return out


def _cli(args: list[str], cwd: Path, timeout: int = 900) -> subprocess.CompletedProcess:
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true"}
    env.pop("WANDB_API_KEY", None)
    res = subprocess.run(
        [sys.executable, "-m", "mergemix.cli", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=timeout,
        check=False,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    return res


@pytest.mark.slow
def test_offline_wandb_runs_of_a_micro_pipeline_carry_everything(micro_run, micro_root, tmp_path):
    """Every stage served from the cache still logs its results: configs, alpha* and U of the search, U and
    scores of every trained mixture, the trials table, the report's figures; one group for the run."""
    run_dir = tmp_path / "wb"
    _cli(
        [
            "run",
            "experiment=micro",
            "logger=wandb",
            f"paths.root={micro_root}",
            f"paths.run_dir={run_dir}",
            "export.alpha_star_checkpoint=true",
        ],
        tmp_path,
    )
    runs = [read_offline_run(d) for d in sorted((run_dir / "wandb").glob("offline-run-*"))]
    by_type = {}
    for r in runs:
        by_type.setdefault(r["job_type"], []).append(r)
    assert {"base", "expert", "search", "mixture", "report"} <= set(by_type), sorted(by_type)
    assert len(by_type["expert"]) == 4 and len(by_type["mixture"]) == 2
    assert len({r["group"] for r in runs}) == 1 and runs[0]["group"].startswith("micro-")
    for r in runs:  # every run names its model, domains, seeds and strategy; no trial's alpha in a summary
        assert {k: r["config"][k] for k in ("model", "run_name", "strategy", "search_seed")} == {
            "model": "micro",
            "run_name": "micro",
            "strategy": "surrogate",
            "search_seed": 0,
        }, r["name"]
        assert r["config"]["domains"] == ["code", "math", "prose", "sft"]
        assert not [k for k in r["summary"] if k.startswith("alpha/")], r["name"]
    (search,) = by_type["search"]
    alpha_star = yaml_load(run_dir / "mixture.yaml")["alpha_star"]
    assert {k: search["summary"][f"alpha_star/{k}"] for k in alpha_star} == alpha_star
    assert search["summary"]["U"] == pytest.approx(
        yaml_load(run_dir / "mixture.yaml")["verified"]["U"], abs=1e-6
    )
    assert "table-file" in search["media"] and "mixture" in search["artifacts"]
    summary = json.loads((run_dir / "summary.json").read_text())
    caps = summary["rows"]["base"]["capabilities"]
    for mix in by_type["mixture"]:
        label = {"mix:uniform": "uniform (trained)", "mix:mergemix": "mergemix (trained)"}[mix["name"]]
        assert mix["summary"]["U"] == pytest.approx(summary["rows"][label]["U"])
        assert {c: mix["summary"][f"score/{c}"] for c in caps} == pytest.approx(
            summary["rows"][label]["capabilities"]
        )
        assert {k for k in mix["summary"] if k.startswith("mixture/")} == {f"mixture/{d}" for d in alpha_star}
    (report,) = by_type["report"]
    assert "image-file" in report["media"] and report["summary"]["alpha_star"] == summary["alpha_star"]
    # the run directory lists the trained mixtures' checkpoints and holds the merged alpha*
    assert set(summary["artifacts"]["mixtures"]) == {"uniform", "mergemix"}
    assert all(Path(p, "config.json").is_file() for p in summary["artifacts"]["mixtures"].values())
    assert Path(summary["artifacts"]["alpha_star_checkpoint"], "model.safetensors").is_file()


def yaml_load(path: Path) -> dict:
    import yaml

    return yaml.safe_load(path.read_text())


@pytest.mark.slow
def test_trained_mixture_logs_scores_learning_rate_and_throughput(micro_run, micro_root, tmp_path):
    """A mixture trained now (base cached): its run holds the learning rate and tokens/s per step, and its U,
    scores and mixture in the summary; cached stages still get their runs, linked to the run that built them."""

    def logged(run_dir):
        _cli(
            [
                "mix",
                "experiment=micro",
                "logger=wandb",
                "weights={code: 0.1, math: 0.2, prose: 0.3, sft: 0.4}",
                f"paths.root={micro_root}",
                f"paths.run_dir={run_dir}",
            ],
            tmp_path,
        )
        return {r["job_type"]: r for r in map(read_offline_run, (run_dir / "wandb").glob("offline-run-*"))}

    runs = logged(tmp_path / "wb")
    assert set(runs) == {"base", "mixture", "report"}
    mix = runs["mixture"]
    assert any(k.startswith("lr-") for k in mix["history"]), mix["history"]
    assert any("items_per_sec" in k for k in mix["history"]), mix["history"]
    assert mix["summary"]["mixture/sft"] == pytest.approx(0.4) and "U" in mix["summary"]
    assert mix["summary"]["tokens_per_s"] > 0 and mix["config"]["inputs"]["ratios"]["sft"] == pytest.approx(
        0.4
    )
    assert runs["base"]["summary"]["cache_key"] == runs["base"]["config"]["cache_key"]
    again = logged(tmp_path / "again")[
        "mixture"
    ]  # served from the cache: same results, linked to the first run
    assert again["summary"]["produced_by_run"] == mix_id(micro_root, mix) == mix["id"] != again["id"]
    assert again["summary"]["U"] == mix["summary"]["U"]


def mix_id(root: Path, run: dict) -> str:
    """The run id kept in the manifest of the mixture artifact that `run` trained."""
    (manifest,) = [
        m
        for m in (root / "cache" / "mixture").glob("*/manifest.json")
        if json.loads(m.read_text())["key"] == run["config"]["cache_key"]
    ]
    return json.loads(manifest.read_text())["run_id"]


IDENTITY = {
    "model": "micro",
    "domains": ["a", "b"],
    "benchmarks": ["x_mc", "y_mc"],
    "seed": 0,
    "search_seed": 1,
    "strategy": "tpe",
    "run_name": "micro",
}


def _offline_runs(tmp_path: Path) -> dict[str, dict]:
    """A search stage run, a trained-mixture stage run and a compare run, as a pipeline and `compare` open them,
    read back from their offline .wandb files: {job_type: run}."""
    import wandb
    import yaml

    from mergemix.analysis.compare import log_to_wandb
    from mergemix.loggers import Tracker, report_scores, report_search

    search = tmp_path / "search"
    search.mkdir()
    (search / "seeds.csv").write_text(
        "alpha/a,alpha/b,score/x,score/y,U,U_std\n0.2,0.8,0.1,0.2,0.15,0.01\n0.7,0.3,0.3,0.1,0.2,0.01\n"
    )
    (search / "mixture.yaml").write_text(yaml.safe_dump({"alpha_star": {"a": 0.6, "b": 0.4}}))
    verified = {"U": 0.21, "U_std": 0.01, "capabilities": {"x": 0.3, "y": 0.12}}
    (search / "search.json").write_text(
        json.dumps(
            {
                "alpha_star": {"a": 0.6, "b": 0.4},
                "verified_result": verified,
                "backend": "optuna",
                "objective": "U",
                "cost": {"flops": 1e9, "evaluations": 2},
            }
        )
    )
    tracker = Tracker({"kind": "wandb", "mode": "offline"}, tmp_path / "wb", "micro-job", IDENTITY)
    with tracker.stage("search", "search", {"cache_key": "k1", "inputs": {"search": {"budget": 2}}}) as run:
        report_search(run, search, ["a", "b"])
    with tracker.stage(
        "mix:mergemix", "mixture", {"cache_key": "k2", "inputs": {"ratios": {"a": 0.6}}}
    ) as run:
        report_scores(run, verified, {"a": 0.6, "b": 0.4})
    curve = [
        {
            "evaluations": i + 1,
            "flops": 1e9 * (i + 1),
            "utility": u,
            "best_so_far": u,
            "alpha/a": 0.5,
            "alpha/b": 0.5,
            "capability/x": u,
        }
        for i, u in enumerate([0.1, 0.3])
    ]
    result = {
        "strategy": "tpe",
        "seed": 1,
        "alpha": {"a": 0.5, "b": 0.5},
        "U": 0.25,
        "U_std": 0.01,
        "capabilities": {"x": 0.2, "y": 0.3},
        "cost": {"train_tokens": 1000, "flops": 3e9},
        "curve": curve,
    }
    log_to_wandb({"project": "mergemix", "mode": "offline"}, result, "micro-job", tmp_path / "cmp", IDENTITY)
    wandb.teardown()  # the service writes the runs' files out when it stops
    dirs = [
        *(tmp_path / "wb" / "wandb").glob("offline-run-*"),
        *(tmp_path / "cmp" / "wandb").glob("offline-run-*"),
    ]
    return {r["job_type"]: r for r in map(read_offline_run, dirs)}


def test_stage_mixture_and_compare_runs_share_one_vocabulary(tmp_path, monkeypatch):
    """Stage, mixture and compare runs: the same identifying config, the job type the stage (`compare`), results
    under the same names (U, score/*, mixture/*, cost/*), no trial's alpha left in a summary, all in one group."""
    monkeypatch.setenv("WANDB_MODE", "offline")
    runs = _offline_runs(tmp_path)
    assert set(runs) == {"search", "mixture", "compare"}
    for r in runs.values():
        assert {k: r["config"][k] for k in IDENTITY} == IDENTITY and r["group"] == "micro-job"
        assert not [k for k in r["summary"] if k.startswith("alpha/")], r[
            "summary"
        ]  # per trial: history only
        assert not [k for k in r["summary"] if k.startswith(("trained/", "capability/"))]
    mix, cmp, search = runs["mixture"], runs["compare"], runs["search"]
    assert mix["config"]["cache_key"] == "k2" and mix["config"]["inputs"] == {"ratios": {"a": 0.6}}
    assert cmp["config"]["strategy"] == "tpe" and cmp["name"] == "tpe-seed1"
    results = {"U", "U_std", "score/x", "score/y", "mixture/a", "mixture/b"}
    assert results <= set(mix["summary"]) and results <= set(cmp["summary"])
    assert {"U", "U_std", "score/x", "score/y", "cost/flops"} <= set(search["summary"]) & set(cmp["summary"])
    assert (
        cmp["summary"]["U"] == 0.25
        and cmp["summary"]["score/y"] == 0.3
        and cmp["summary"]["cost/flops"] == 3e9
    )
    assert search["summary"]["alpha_star/a"] == 0.6 and search["summary"]["U"] == 0.21
    assert {"U", "alpha/a", "score/x"} <= search["history"] & cmp["history"]
    assert {"cost/flops", "best_U"} <= cmp["history"]


def test_wandb_stays_off_the_console(tmp_path, monkeypatch, capfd):
    """An offline run writes no banner (`wandb: ...` lines) to the terminal: the results stay in view."""
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.delenv("WANDB_SILENT", raising=False)
    from mergemix.loggers import Tracker, report_scores

    capfd.readouterr()
    with Tracker({"kind": "wandb", "mode": "offline"}, tmp_path, "g", IDENTITY).stage(
        "m", "mixture", {}
    ) as run:
        report_scores(run, {"U": 0.2, "U_std": 0.01, "capabilities": {"x": 0.2}}, {"a": 1.0})
    out = capfd.readouterr()
    assert "wandb:" not in out.out + out.err, (out.out + out.err)[-2000:]


# ------------------------------------------------------------------------------------------------- Optuna ---
def test_optuna_trials_record_alpha_and_scores(micro_run, micro_root, tmp_path):
    """A TPE search on the micro experts: every trial holds alpha (on the simplex) and every capability's score
    as user attributes, and the study names its metric U."""
    import optuna

    from mergemix.pipeline import Pipeline

    cfg = micro_cfg(
        micro_root,
        "search=tpe",
        "search.budget=6",
        f"paths.run_dir={tmp_path}/run",
        f"search.storage=sqlite:///{tmp_path}/study.db",
        "search_seed=7",
    )
    pipe = Pipeline(cfg, cfg["paths"]["run_dir"])
    _ = pipe.search_dir
    name = json.loads((pipe.search_dir / "search.json").read_text())["info"]["study_name"]
    assert name.startswith(f"{cfg['search']['study_name']}-")  # the user's prefix, then the search's key
    study = optuna.load_study(study_name=name, storage=f"sqlite:///{tmp_path}/study.db")
    assert study.metric_names == ["U"]
    trials = study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    assert len(trials) == 6
    caps = set(cfg["benchmarks"]["capabilities"])
    for t in trials:
        alpha = {k.removeprefix("alpha/"): v for k, v in t.user_attrs.items() if k.startswith("alpha/")}
        assert set(alpha) == set(pipe.domain_names) and sum(alpha.values()) == pytest.approx(1, abs=1e-5)
        assert all(isinstance(v, float) for v in alpha.values())  # numbers optuna-dashboard plots
        assert {k.removeprefix("score/") for k in t.user_attrs if k.startswith("score/")} == caps
        assert t.user_attrs["U"] == pytest.approx(t.value)


# ----------------------------------------------------------------------------------------------- HF outputs ---
def test_exported_checkpoint_generates_and_stops_at_eos(micro_run, tmp_path):
    """The merged export loads in pipeline("text-generation"), its ids match the tokenizer's, inputs are cut at
    the model's positions; with every logit equal, greedy decoding picks id 0 (EOS) and must stop there."""
    import torch
    from safetensors.torch import load_file, save_file
    from transformers import AutoTokenizer, pipeline

    from mergemix.merging import export_merge

    pipe, _ = micro_run
    names = pipe.domain_names
    out = export_merge(pipe.base_dir, [pipe.expert_dirs[n] for n in names], [0.25] * 4, tmp_path / "merged")
    tok = AutoTokenizer.from_pretrained(out)
    config, gen = (json.loads((out / f).read_text()) for f in ("config.json", "generation_config.json"))
    assert config["eos_token_id"] == gen["eos_token_id"] == tok.eos_token_id == 0
    assert config["pad_token_id"] == gen["pad_token_id"] == tok.pad_token_id
    assert config["bos_token_id"] == tok.bos_token_id
    assert tok.model_max_length == config["max_position_embeddings"]
    text = pipeline("text-generation", model=str(out), device="cpu")(
        "def add(a, b):", max_new_tokens=8, do_sample=False
    )[0]["generated_text"]
    assert text.startswith("def add(a, b):")

    weights = load_file(out / "model.safetensors")
    save_file(
        {
            k: torch.zeros_like(v) if k in ("lm_head.weight", "model.embed_tokens.weight") else v
            for k, v in weights.items()
        },
        out / "model.safetensors",
        metadata={"format": "pt"},
    )
    gen_pipe = pipeline("text-generation", model=str(out), device="cpu")
    prompt = tok("def add(a, b):")["input_ids"]
    ids = gen_pipe("def add(a, b):", max_new_tokens=20, do_sample=False, return_tensors=True)[0][
        "generated_token_ids"
    ]
    assert ids[len(prompt) :] == [tok.eos_token_id]  # one token, EOS, then stop (without the id: 20 tokens)


def test_seeds_csv_reads_as_a_data_frame(micro_run):
    import pandas as pd

    pipe, summary = micro_run
    df = pd.read_csv(pipe.run_dir / "seeds.csv")
    domains, caps = pipe.domain_names, sorted(summary["rows"]["base"]["capabilities"])
    assert list(df.columns) == [*(f"alpha/{d}" for d in domains), *(f"score/{c}" for c in caps), "U", "U_std"]
    assert df[[f"alpha/{d}" for d in domains]].sum(axis=1).round(4).eq(1).all()


# ------------------------------------------------------------------------------------------------ Lightning ---
def test_any_trainer_argument_passes_through(monkeypatch, micro_root):
    from mergemix import training
    from mergemix.errors import MergeMixError
    from mergemix.training import trainer_passthrough

    cfg = micro_cfg(micro_root, "+trainer.limit_train_batches=1.0", "+trainer.deterministic=true")
    assert trainer_passthrough(cfg["trainer"]) == {"limit_train_batches": 1.0, "deterministic": True}
    with pytest.raises(MergeMixError, match="trainer.nope is not an argument of pytorch_lightning.Trainer"):
        trainer_passthrough({**cfg["trainer"], "nope": 1})
    with pytest.raises(MergeMixError, match="trainer.max_steps is set by MergeMix itself"):
        trainer_passthrough({**cfg["trainer"], "max_steps": 3})
    seen = {}

    class Spy(training.pl.Trainer):
        def __init__(self, **kwargs):
            seen.update(kwargs)
            raise SystemExit(0)

    monkeypatch.setattr(training.pl, "Trainer", Spy)
    from mergemix.pipeline import Pipeline

    with pytest.raises(SystemExit):
        Pipeline(
            micro_cfg(micro_root, "+trainer.deterministic=true", "search_seed=11"), micro_root / "r"
        ).train_mixture({"code": 1, "math": 0, "prose": 0, "sft": 0}, "spy")
    assert seen["deterministic"] is True


def test_unknown_trainer_argument_is_one_error_line(micro_root, monkeypatch, capsys):
    from conftest import assert_cli_error

    assert_cli_error(
        "run",
        "+trainer.nope=1",
        "trainer.nope is not an argument of pytorch_lightning.Trainer",
        micro_root,
        monkeypatch,
        capsys,
    )


# ------------------------------------------------------------------------------------------------- figures ---
def _figures(monkeypatch) -> list:
    """The figures a plot function closes (captured instead of inspecting PNG pixels)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    closed, real = [], plt.close
    monkeypatch.setattr(plt, "close", lambda fig=None: (closed.append(fig), real(fig))[1])
    return closed


def test_cost_curves_separate_merge_and_proxy_objectives_and_seeds(tmp_path, monkeypatch):
    """One line per strategy (the mean over its seeds) and a band from the lowest to the highest seed, instead of
    every seed drawn on top of the others."""
    import numpy as np

    from mergemix.analysis.compare import _plot_curves

    closed = _figures(monkeypatch)
    curve = [{"flops": 10.0 ** (9 + i), "best_so_far": 0.1 * i} for i in range(4)]
    later = [{"flops": 3 * c["flops"], "best_so_far": c["best_so_far"] + 0.05} for c in curve]
    by = {
        s: [{"seed": 0, "curve": curve}, {"seed": 1, "curve": later}] for s in ("tpe", "surrogate", "proxy")
    }
    by["regmix"] = [{"seed": 0, "curve": curve}]
    by["uniform"] = [{"seed": 0, "curve": []}]
    _plot_curves(tmp_path / "c.png", by)
    (fig,) = closed
    assert fig.get_suptitle() and len(fig.axes) == 2
    merged, proxy = fig.axes
    assert "merged U" in merged.get_title() and "proxy" in proxy.get_title()
    for ax in fig.axes:
        assert "FLOPs" in ax.get_xlabel() and "x100" in ax.get_ylabel()
    legend = [t.get_text() for t in merged.get_legend().get_texts()]
    assert legend == [f"{s} (mean of 2 seeds, band: min–max)" for s in ("surrogate", "tpe")]
    assert [t.get_text() for t in proxy.get_legend().get_texts()] == [
        "proxy (mean of 2 seeds, band: min–max)",
        "regmix (1 seed)",
    ]
    assert len(merged.collections) == 2 and len(proxy.collections) == 1  # a band for each strategy of 2 seeds
    x, y = merged.get_lines()[0].get_data()
    assert y[np.searchsorted(x, 3e9)] == pytest.approx(
        100 * (0.0 + 0.05) / 2
    )  # seed 1's first point: the mean
    assert (tmp_path / "c.png").is_file()


def test_landscape_has_a_title_and_labelled_colour_bars(tmp_path, monkeypatch):
    import numpy as np

    from mergemix.analysis import landscape_plot
    from mergemix.simplex import grid as simplex_grid

    closed = _figures(monkeypatch)
    for k in (3, 4):
        grid = np.asarray(simplex_grid(k, 4))
        values = {"U": grid[:, 0], "code": grid[:, 1]}
        landscape_plot.plot(
            tmp_path / "l.png", grid, values, ["code", "math", "prose", "sft"][:k], 4, grid[0], {}
        )
    three, four = closed
    assert three.get_suptitle() and four.get_suptitle()
    bars = [[ax.get_ylabel() for ax in fig.axes if ax.get_label() == "<colorbar>"] for fig in closed]
    assert bars == [
        ["U (x100 above chance)", "code score (x100 above chance)"],
        ["best U at these two weights (x100 above chance)"],
    ]
    profiles = [ax.get_ylabel() for ax in four.axes if ax.get_title().endswith("profile along each domain")]
    assert profiles == ["best U (x100 above chance)", "best code score (x100 above chance)"]
    assert (
        len(four.axes) == 6 + 2 + 1
    )  # U over the six pairs, one profile panel per objective, one colour bar


def test_python_api_reads_alpha_star_and_scores(micro_run, micro_root):
    from mergemix import api

    pipe, summary = micro_run
    cfg = api.compose("experiment=micro", "logger=none", f"paths.root={micro_root}")
    found = api.search(cfg)
    assert found["alpha_star"] == summary["alpha_star"]
    assert found["verified"]["U"] == pytest.approx(summary["rows"]["mergemix (merge)"]["U"], abs=1e-6)
    assert api.evaluate(cfg, pipe.base_dir)["U"] == summary["rows"]["base"]["U"]
    assert (Path(api.__file__).parent / "py.typed").is_file()


def test_tracking_groups_are_unique_per_sweep_and_job(monkeypatch, tmp_path):
    from types import SimpleNamespace

    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    from mergemix.commands import tracking_group as _group

    cfg = {"run_name": "micro"}

    def sweep(stamp, num):
        hc = SimpleNamespace(
            mode=RunMode.MULTIRUN,
            sweep=SimpleNamespace(dir=f"/o/multirun/micro/{stamp}"),
            job=SimpleNamespace(num=num),
        )
        monkeypatch.setattr(HydraConfig, "get", staticmethod(lambda: hc))
        return _group(cfg, tmp_path / str(num))

    groups = {sweep(stamp, num) for stamp in ("2026-01-01_00-00-00", "2026-01-01_00-05-00") for num in (0, 1)}
    assert len(groups) == 4 and "micro-2026-01-01_00-05-00-1" in groups
    monkeypatch.setattr(HydraConfig, "get", staticmethod(lambda: SimpleNamespace(mode=RunMode.RUN)))
    assert _group(cfg, tmp_path / "2026-01-01_00-00-00") == "micro-2026-01-01_00-00-00"


def test_tpe_search_shows_progress_and_records_trials(tmp_path, capsys):
    """A synthetic objective (no model): the bar counts the complete trials; every trial holds its mixture."""
    import optuna

    from mergemix.search.optuna_backend import optuna_search

    def evaluate(alpha):
        return {"U": float(alpha[0]), "capabilities": {"x": float(alpha[0]), "y": float(alpha[1])}}

    storage = f"sqlite:///{tmp_path}/s.db"
    cfg = {"budget": 6, "storage": storage, "study_name": "t", "sampler": "tpe"}
    optuna_search(evaluate, ["a", "b"], cfg, 0, [], lambda r: r["U"])
    err = capsys.readouterr().err
    assert "search (tpe)" in err and "6/6" in err
    for t in optuna.load_study(study_name="t", storage=storage).trials:
        assert t.user_attrs["score/x"] == t.value == t.user_attrs["U"]
        assert t.user_attrs["alpha/a"] == pytest.approx(t.value, abs=1e-6)
        assert t.user_attrs["alpha/a"] + t.user_attrs["alpha/b"] == pytest.approx(1, abs=1e-5)


def test_a_lightning_logger_is_a_yaml_file(tmp_path):
    """logger=csv is Lightning's CSVLogger by `_target_`: one per stage, config as hyperparameters, metrics and
    summary as rows; a logger whose package is missing, or an unknown target, is one error line."""
    import importlib.util

    import yaml

    from mergemix.cli import compose, to_plain
    from mergemix.errors import MergeMixError
    from mergemix.loggers import Tracker

    cfg = to_plain(compose(["experiment=micro", "logger=csv"]))["logger"]
    tracker = Tracker(cfg, tmp_path, "g")
    with tracker.stage("mix:uniform", "mixture", {"tokens": 123}) as run:
        run.log({"train/loss": 2.5}, step=0)
        run.summary({"U": 0.25, "note": "text is not a metric"})
    stage = tmp_path / "logs" / "mix-uniform" / "version_0"
    assert yaml.safe_load((stage / "hparams.yaml").read_text()) == {"job_type": "mixture", "tokens": 123}
    metrics = (stage / "metrics.csv").read_text()
    assert "train/loss" in metrics and "2.5" in metrics and "0.25" in metrics
    tb = to_plain(compose(["experiment=micro", "logger=tensorboard"]))["logger"]
    if not (importlib.util.find_spec("tensorboard") or importlib.util.find_spec("tensorboardX")):
        with pytest.raises(
            MergeMixError, match=r"^cannot create the logger pytorch_lightning.loggers.TensorBoard"
        ):
            Tracker(tb, tmp_path, "g")._open("base", "base", {})
    with pytest.raises(MergeMixError, match="cannot create the logger no.such.Logger"):
        Tracker({"_target_": "no.such.Logger"}, tmp_path, "g")._open("base", "base", {})
