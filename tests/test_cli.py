"""`mergemix` takes Hydra's own flags and sweep syntax (it runs commands under `@hydra.main`), in any order with
the overrides; flags that only show something do no work and write nothing."""

from __future__ import annotations

import yaml
from conftest import run_cli

import mergemix
from mergemix.commands import COMMANDS
from mergemix.compose import compose

MICRO = ["experiment=micro", "logger=none"]


def test_version_is_the_projects(capsys, monkeypatch):
    code, out, _ = run_cli(["--version"], capsys, monkeypatch)
    assert code == 0 and out.strip() == f"mergemix {mergemix.__version__}"


def test_help_lists_commands_and_config_groups(capsys, monkeypatch):
    code, out, _ = run_cli(["run", "--help"], capsys, monkeypatch)
    assert code == 0
    for name in (*COMMANDS, "merge"):
        assert f"\n  {name} " in out
    groups = dict(ln.split(": ", 1) for ln in out.splitlines() if ln.startswith(("strategy: ", "model: ")))
    assert "tpe" in groups["strategy"].split(", ") and "micro" in groups["model"].split(", ")
    assert "--multirun,-m" in out


def test_merge_help_is_the_usage(capsys, monkeypatch):
    code, out, _ = run_cli(["merge", "--help"], capsys, monkeypatch)
    assert code == 0 and out.startswith("usage: mergemix") and "  merge " in out


def test_cfg_job_prints_the_config_and_writes_nothing(tmp_path, capsys, monkeypatch):
    code, out, _ = run_cli(
        ["run", *MICRO, f"paths.root={tmp_path}/home", "--cfg", "job"], capsys, monkeypatch
    )
    cfg = yaml.safe_load(out)
    assert code == 0 and cfg["run_name"] == "micro" and cfg["model"]["name"] == "micro"
    assert not (tmp_path / "home").exists()


def test_cfg_with_a_package_prints_that_package(capsys, monkeypatch):
    code, out, _ = run_cli(
        ["search", "-p", "search", "--cfg", "job", *MICRO, "search.budget=7"], capsys, monkeypatch
    )
    assert code == 0 and out.startswith("# @package search") and yaml.safe_load(out)["budget"] == 7


def test_info_defaults_shows_the_defaults_list(capsys, monkeypatch):
    code, out, _ = run_cli(["run", *MICRO, "--info", "defaults"], capsys, monkeypatch)
    assert code == 0 and "Defaults List" in out and "model/micro" in out and "experiment/micro" in out


def test_shell_completion_install(capsys, monkeypatch):
    code, out, _ = run_cli(["-sc", "install=bash"], capsys, monkeypatch)
    assert code == 0 and "hydra_bash_completion()" in out and "complete -o nospace" in out


def test_multirun_range_and_choice_sweeps_launch_every_job(tmp_path, capsys, monkeypatch):
    code, out, _ = run_cli(
        ["info", "-m", *MICRO, f"paths.root={tmp_path}", "search_seed=range(0,3)", "seed=choice(0,1)"],
        capsys,
        monkeypatch,
    )
    sweep = next((tmp_path / "multirun" / "micro").iterdir())
    jobs = sorted(int(p.name) for p in sweep.iterdir() if p.is_dir())
    assert code == 0 and jobs == list(range(6)) and out.count('"total_params"') == 6
    overrides = {
        tuple(yaml.safe_load((sweep / str(j) / ".hydra" / "overrides.yaml").read_text())[-2:]) for j in jobs
    }
    assert overrides == {(f"search_seed={s}", f"seed={t}") for s in range(3) for t in range(2)}


def test_a_bad_value_in_one_swept_job_stops_before_any_job(tmp_path, capsys, monkeypatch):
    code, _, err = run_cli(
        ["info", "-m", *MICRO, f"paths.root={tmp_path}", "model=micro,nope"], capsys, monkeypatch
    )
    assert code == 2 and len(err) == 1 and err[0].startswith("error: bad config: ") and "model/nope" in err[0]
    assert not (tmp_path / "multirun").exists()


def test_bad_sweep_syntax_and_bad_flags_are_one_line(capsys, monkeypatch):
    for argv, message in (
        (["-m", "seed=range(0,"], "error: bad config: "),
        (["--cfg", "jobb"], "error: bad arguments: argument --cfg/-c: invalid choice: 'jobb'"),
    ):
        code, _, err = run_cli(argv, capsys, monkeypatch)
        assert code == 2 and len(err) == 1 and err[0].startswith(message), err


def test_strategy_label_is_what_runs():
    assert compose([]).strategy == "surrogate"
    assert compose(["search=cmaes"]).strategy == "cmaes"
    tpe = compose(["strategy=tpe"])
    assert (tpe.strategy, tpe.search.sampler, tpe.baseline.kind) == ("tpe", "tpe", "none")
    assert compose(["strategy=proxy"]).strategy == "proxy" == compose(["baseline=proxy"]).baseline.kind


def test_each_swept_job_gets_the_label_of_what_it_runs(tmp_path, capsys, monkeypatch):
    from mergemix import cli

    seen = []
    monkeypatch.setattr(
        cli,
        "execute",
        lambda command, cfg, args: seen.append(
            (command, cfg["strategy"], cfg["search"].get("sampler"), cfg["baseline"]["kind"])
        ),
    )
    code, _, err = run_cli(
        ["compare", "-m", *MICRO, f"paths.root={tmp_path}", "strategy=tpe,proxy"], capsys, monkeypatch
    )
    assert code == 0, err
    assert sorted(seen) == [("compare", "proxy", None, "proxy"), ("compare", "tpe", "tpe", "none")]


def test_conflicting_strategy_and_search_are_refused(tmp_path, capsys, monkeypatch):
    code, _, err = run_cli(
        ["compare", *MICRO, f"paths.root={tmp_path}", "strategy=tpe", "search=cmaes"], capsys, monkeypatch
    )
    assert code == 2 and err == [
        (
            "error: bad config: strategy=tpe conflicts with search=cmaes baseline=none: "
            "choose with strategy= alone, or with search= and baseline="
        )
    ]
    assert not tmp_path.joinpath("cache").exists()


def test_gpu_trainer_inherits_cpu():
    cpu, gpu = compose(["trainer=cpu"]).trainer, compose(["trainer=gpu"]).trainer
    speed = {"accelerator": "gpu", "chunked_loss": 2048, "fused_adamw": True}  # what a GPU changes (speed.py)
    assert {**cpu, **speed} == dict(gpu) and not cpu.chunked_loss and not cpu.fused_adamw


def test_run_prints_its_report_as_plain_lines_on_stdout(micro_run, micro_root, tmp_path, capsys, monkeypatch):
    """The stages log through the "mergemix" logger; the CLI shows each message alone on stdout, as print did,
    and not again through the handlers Hydra gives the root logger."""
    _, summary = micro_run
    code, out, _ = run_cli(
        ["run", *MICRO, f"paths.root={micro_root}", f"paths.run_dir={tmp_path}/run"], capsys, monkeypatch
    )
    assert code == 0
    alpha = ", ".join(f"{d}={w:.3f}" for d, w in summary["alpha_star"].items())
    lines = out.splitlines()
    assert f"alpha* (MergeMix): {alpha}" in lines and "calibration:" in lines
    assert sum(ln.startswith("alpha* (MergeMix)") for ln in lines) == 1 and "[mergemix]" not in out
    assert any(ln.startswith("verdict: ") for ln in lines) and lines[-1] == f"run directory: {tmp_path}/run"


def test_a_command_leaves_the_callers_warning_filters_as_they_were(capsys):
    import json
    import warnings

    from mergemix.commands import execute
    from mergemix.compose import to_plain

    before = list(warnings.filters)
    execute("info", to_plain(compose(["experiment=micro"])))
    assert warnings.filters == before
    assert json.loads(capsys.readouterr().out)["name"] == "micro"  # the command ran


def test_the_commands_log_file_holds_what_the_terminal_showed(
    micro_run, micro_root, tmp_path, capsys, monkeypatch
):
    code, out, _ = run_cli(
        ["search", *MICRO, f"paths.root={micro_root}", f"hydra.run.dir={tmp_path}/job"], capsys, monkeypatch
    )
    assert code == 0
    logged = (tmp_path / "job" / "search.log").read_text()
    shown = [ln for ln in out.splitlines() if ln.strip()]
    assert shown and all(ln in logged for ln in shown[-3:])  # the results, as the terminal showed them
