"""Composing the Hydra config outside `@hydra.main` (pre-flight checks, tests, studies), with Hydra's own
composition, override parser and basic sweeper, and any error as one line."""

from __future__ import annotations

import contextlib
import itertools
from importlib.resources import files
from pathlib import Path

from mergemix.errors import MergeMixError

CONF_DIR = Path(str(files("mergemix.conf")))  # the repository's conf/, shipped in the wheel as mergemix.conf


def _group_options(message: str) -> list[str]:
    """The options Hydra lists under 'Available options in ...:' (one per tab-indented line)."""
    lines = message.split("\n")
    start = next((i + 1 for i, ln in enumerate(lines) if ln.startswith("Available options")), len(lines))
    return [ln.strip() for ln in itertools.takewhile(lambda ln: ln.startswith("\t"), lines[start:])]


def _one_line(exc: Exception) -> MergeMixError:
    first = " ".join(str(exc).split("\n")[:1]).strip()
    detail = [ln.strip() for ln in str(exc).split("\n")[1:] if ln.strip().startswith("Key")]
    hint = " (install the launcher: pip install -e .[slurm])" if "submitit" in first else ""
    options = _group_options(str(exc))
    hint += f" (options: {', '.join(options)})" if options else ""
    return MergeMixError(f"bad config: {first}{' ' + detail[0] if detail else ''}{hint}")


@contextlib.contextmanager
def _hydra(config_dir: str | None):
    """Hydra initialised on the package's configs, plus a user's --config-dir on the search path."""
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    if config_dir and not Path(config_dir).is_dir():
        raise MergeMixError(f"--config-dir not found: {config_dir}")
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            yield [f"hydra.searchpath=[file://{Path(config_dir).resolve()}]"] if config_dir else []
    except MergeMixError:
        raise
    except Exception as exc:
        raise _one_line(exc) from exc
    finally:
        GlobalHydra.instance().clear()


def label_strategy(cfg, choices) -> None:
    """Set `cfg.strategy`, the label of a run (compare's rows), from what runs: the baseline if one is chosen, else
    the search preset. A `strategy=` shorthand (it selects search or baseline) contradicted by an explicit
    `search=`/`baseline=` is refused, so a label never names something that did not run."""
    from omegaconf import open_dict

    ran = choices.get("baseline") if choices.get("baseline") not in (None, "none") else choices.get("search")
    chosen = choices.get("strategy")
    if chosen and chosen != ran:
        raise MergeMixError(
            f"bad config: strategy={chosen} conflicts with search={choices.get('search')} "
            f"baseline={choices.get('baseline')}: choose with strategy= alone, or with search= "
            "and baseline="
        )
    with open_dict(cfg):
        cfg.strategy = ran


def compose(overrides: list[str], config_dir: str | None = None):
    """The config for these overrides, as `mergemix` composes it (without the `hydra` node)."""
    from hydra import compose as hydra_compose
    from omegaconf import open_dict

    with _hydra(config_dir) as extra:
        cfg = hydra_compose("config", overrides=[*overrides, *extra], return_hydra_config=True)
        label_strategy(cfg, cfg.hydra.runtime.choices)
        with open_dict(cfg):
            del cfg["hydra"]
        return cfg


def sweep_jobs(overrides: list[str], config_dir: str | None = None) -> list[list[str]]:
    """Each job's overrides as Hydra's basic sweeper launches a multirun (a,b,c, range(), choice(), glob())."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.override_parser.overrides_parser import OverridesParser

    with _hydra(config_dir):
        parser = OverridesParser.create(config_loader=GlobalHydra.instance().config_loader())
        return BasicSweeper.split_arguments(parser.parse_overrides(overrides), None)[0]


def to_plain(cfg) -> dict:
    from omegaconf import OmegaConf

    try:
        return OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    except Exception as exc:
        key = getattr(exc, "full_key", None)  # OmegaConf's errors name the key on a later line
        raise MergeMixError(
            f"bad config: {str(exc).splitlines()[0]}{f' (key {key})' if key else ''}"
        ) from exc
