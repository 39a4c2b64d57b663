import json
import re
from pathlib import Path

import pytest
import yaml
from conftest import micro_cfg

from mergemix.errors import MergeMixError

# a second micro-sized model (one layer): the target the micro model's alpha* is transferred to
TARGET = (
    "{name: micro_1layer, path: null, hidden_size: 64, num_layers: 1, num_heads: 4, num_kv_heads: 2, "
    "intermediate_size: 176, seq_len: 128, batch_size: 16}"
)
LABELS = ["token-proportional", "transferred alpha*", "own alpha*"]


def transfer_cfg(root, run_dir, *overrides):
    return micro_cfg(
        root,
        f"paths.run_dir={run_dir}",
        "transfer.source_model=micro",
        f"transfer.target_model={TARGET}",
        *overrides,
    )


@pytest.fixture(scope="module")
def transferred(micro_root, tmp_path_factory):
    from mergemix.cli import _quiet, execute

    _quiet()
    run = tmp_path_factory.mktemp("transfer")
    cfg = transfer_cfg(micro_root, run)
    execute("transfer", cfg)
    return cfg, json.loads((run / "transfer.json").read_text()), run


def test_transfer_end_to_end(transferred, micro_root):
    from mergemix.pipeline import Pipeline

    cfg, r, run = transferred
    for f in ("transfer.json", "transfer.md", "transfer.png"):
        assert (run / f).is_file(), f
    assert list(r["rows"]) == LABELS and r["mix_tokens"] == cfg["mix"]["tokens"]
    for row in r["rows"].values():
        assert set(row["capabilities"]) == {"code", "instruct", "language", "math"} and "U" in row
    source = Pipeline(micro_cfg(micro_root), run)  # the micro model's own search: what was transferred
    total = sum(source.alpha_star.values())
    assert r["mixtures"]["transferred alpha*"] == pytest.approx(
        {d: w / total for d, w in source.alpha_star.items()}
    )
    assert r["source"]["search"] == str(source.search_dir)
    for label, path in r["checkpoints"].items():  # every mixture was trained on the target model
        assert json.loads((Path(path) / "config.json").read_text())["num_hidden_layers"] == 1, label
    assert r["l1"]["transferred alpha* vs own alpha*"] == pytest.approx(
        sum(
            abs(r["mixtures"]["transferred alpha*"][d] - r["mixtures"]["own alpha*"][d])
            for d in source.domain_names
        )
    )
    md = (run / "transfer.md").read_text()
    assert "trained on model micro_1layer" in md and "transferred alpha* vs token-proportional" in md


def test_alpha_file_reuses_the_target_runs(transferred, tmp_path):
    from mergemix.analysis.transfer import run
    from mergemix.pipeline import Pipeline

    cfg, first, _ = transferred
    source_mixture = yaml.safe_load((Path(first["source"]["search"]) / "mixture.yaml").read_text())
    (tmp_path / "mixture.yaml").write_text(yaml.safe_dump(source_mixture))
    cfg = transfer_cfg(cfg["paths"]["root"], tmp_path / "run", f"transfer.alpha_file={tmp_path}/mixture.yaml")
    r = run(Pipeline(cfg, tmp_path / "run"))
    assert r["source"] == {"alpha_file": str(tmp_path / "mixture.yaml")}
    assert r["mixtures"]["transferred alpha*"] == pytest.approx(first["mixtures"]["transferred alpha*"])
    assert r["checkpoints"] == first["checkpoints"]  # the same trained runs, from the cache


def test_bad_transfer_input_is_refused(micro_root, tmp_path):
    from mergemix.analysis.transfer import check_config

    (tmp_path / "two.yaml").write_text(yaml.safe_dump({"alpha_star": {"code": 0.5, "math": 0.5}}))
    (tmp_path / "none.yaml").write_text(yaml.safe_dump({"domains": ["code"]}))
    cases = [
        (["transfer.target_model=micro"], "same model (micro)"),
        (
            [f"transfer.alpha_file={tmp_path}/two.yaml"],
            (
                "alpha* is over domains ['code', 'math'], the target's "
                "domains are ['code', 'math', 'prose', 'sft']"
            ),
        ),
        ([f"transfer.alpha_file={tmp_path}/none.yaml"], "no alpha_star mapping"),
        ([f"transfer.alpha_file={tmp_path}/missing.yaml"], "file not found"),
        (["transfer.source_model=no_such_model"], "transfer.source_model=no_such_model"),
        (["base.checkpoint=/some/ckpt"], "trains a base per model"),
    ]
    for overrides, message in cases:
        with pytest.raises(MergeMixError, match=re.escape(message)):
            check_config(transfer_cfg(micro_root, tmp_path / "run", *overrides))


def test_cli_same_model_error_is_one_line(tmp_path, capsys, monkeypatch):
    from mergemix.cli import main

    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exc:
        main(
            [
                "transfer",
                "experiment=micro",
                "logger=none",
                f"paths.root={tmp_path}",
                "transfer.source_model=tiny",
                "transfer.target_model=tiny",
            ]
        )
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert exc.value.code == 2 and len(err) == 1
    assert err[0].startswith(
        "error: transfer.source_model and transfer.target_model are the same model (tiny)"
    )
