import pytest

from mergemix.cli import CONF_DIR, compose, to_plain
from mergemix.errors import MergeMixError

GROUPS = sorted(p.name for p in CONF_DIR.iterdir() if p.is_dir() and p.name != "hydra")


@pytest.mark.parametrize(
    "group, option", [(g, f.stem) for g in GROUPS for f in sorted((CONF_DIR / g).glob("*.yaml"))]
)
def test_every_config_group_option_composes(group, option, tmp_path):
    cfg = compose([f"{group}={option}", f"paths.root={tmp_path}"])
    if "???" in (CONF_DIR / group / f"{option}.yaml").read_text():  # a value the user must give
        with pytest.raises(MergeMixError, match="bad config: Missing mandatory value"):
            to_plain(cfg)
        return
    plain = to_plain(cfg)
    assert plain["domains"]["sources"] and plain["benchmarks"]["capabilities"]


def test_hf_model_requires_a_path(tmp_path):
    with pytest.raises(MergeMixError, match="bad config"):
        to_plain(compose(["model=hf", f"paths.root={tmp_path}"]))


@pytest.mark.parametrize(
    "override, message",
    [
        ("no_such_key=1", "Could not override 'no_such_key'"),
        ("model=nope", "Could not find 'model/nope'"),
        ("base.nope=3", "Could not override 'base.nope'"),
    ],
)
def test_unknown_config_key_is_one_clear_error(override, message):
    with pytest.raises(MergeMixError, match=message):
        compose([override])


def test_user_config_dir_adds_a_domains_option(tmp_path):
    (tmp_path / "domains").mkdir()
    (tmp_path / "domains" / "mine.yaml").write_text(
        "heldout_fraction: 0.1\nsources:\n  web: {source: files, paths: [web.txt]}\n"
    )
    cfg = to_plain(compose(["domains=mine"], config_dir=str(tmp_path)))
    assert list(cfg["domains"]["sources"]) == ["web"]
    with pytest.raises(
        MergeMixError, match="Could not find 'domains/mine'"
    ):  # the option is the user's alone
        compose(["domains=mine"])
