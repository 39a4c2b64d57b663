"""`mergemix` console script: Hydra-configured stages, one-line errors for bad input.

    mergemix run [overrides]            all stages (= make demo); last line names the run directory
    mergemix experts|search [overrides] the pipeline up to that stage (experts: expert_domain=NAME trains one)
    mergemix search-worker [overrides]  more workers for a running search's study on a shared database
    mergemix mix weights='{code: 0.5, ...}' [overrides]   train and evaluate one mixture from the base
    mergemix merge base=DIR experts=[DIR,...] weights=[w,...] out=DIR [stream=true|false]
    mergemix info [overrides]           the composed config's model size and domains as JSON
    mergemix validate [overrides]       merged vs really trained mixtures: rank consistency (validate.*)
    mergemix theory [overrides]         gradients, curvature and the merge-vs-mix gap at the base (theory.*)
    mergemix curves curves.domains=[a,b] [overrides]   merged vs trained along the a-b edge (curves.*)
    mergemix landscape [overrides]      U and capabilities over the simplex, specialist mixtures (landscape.*)
    mergemix transfer [overrides]       alpha* searched on one model, trained on another (transfer.*)
    mergemix dynamic [overrides]        alpha* re-optimised mid-way through the mixture run (dynamic.*)
    mergemix hierarchical [overrides]   top-down search: coarse groups, then inside each (hierarchical.*)
    mergemix compare -m experiment=compare search_seed=0,1,2 strategy=surrogate,tpe,proxy,regmix,uniform
"""

from __future__ import annotations

import importlib
import itertools
import json
import os
import sys
from pathlib import Path

from mergemix.errors import MergeMixError
from mergemix.loggers import report_run_dir

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"
STUDIES = ("transfer", "dynamic", "hierarchical")  # mergemix.analysis.<name>: check_config(cfg), run(pipe)
COMMANDS = ("run", "experts", "search", "search-worker", "mix", "merge", "info", "compare", "validate", "theory",
            "curves", "landscape", *STUDIES)
_HYDRA_FLAGS_WITH_VALUE = ("--config-dir", "-cd", "--config-name", "-cn", "--config-path", "-cp")


def _register_resolvers() -> None:
    """`${mergemix_pid:}` in hydra.run.dir: with the microsecond, two runs started at once get their own directory."""
    from omegaconf import OmegaConf

    OmegaConf.register_new_resolver("mergemix_pid", os.getpid, replace=True)


def _fail(msg: str) -> None:
    print(f"error: {msg}", file=sys.stderr)
    raise SystemExit(2)


def _overrides_and_config_dir(args: list[str]) -> tuple[list[str], str | None]:
    overrides, config_dir, i = [], None, 0
    while i < len(args):
        a = args[i]
        if a in _HYDRA_FLAGS_WITH_VALUE:
            if a in ("--config-dir", "-cd") and i + 1 < len(args):
                config_dir = args[i + 1]
            i += 2
            continue
        if a.startswith("--config-dir="):
            config_dir = a.split("=", 1)[1]
        elif not a.startswith("-"):
            overrides.append(a)
        i += 1
    return overrides, config_dir


def _sweep_values(overrides: list[str]) -> list[list[str]]:
    """One override list per value of each `key=a,b,c` sweep (others at their first value)."""
    plain, sweeps = [], []
    for o in overrides:
        key, _, value = o.partition("=")
        if "," in value and not value.lstrip().startswith(("[", "{", "'", '"')):
            sweeps.append((key, value.split(",")))
        else:
            plain.append(o)
    combos = [[*plain, *(f"{k}={v[0]}" for k, v in sweeps)]]
    for i, (key, values) in enumerate(sweeps):
        for v in values[1:]:
            combos.append([*plain, *(f"{k}={vs[0]}" for j, (k, vs) in enumerate(sweeps) if j != i), f"{key}={v}"])
    return combos


def _group_options(message: str) -> list[str]:
    """The options Hydra lists under 'Available options in ...:' (one per tab-indented line)."""
    lines = message.split("\n")
    start = next((i + 1 for i, ln in enumerate(lines) if ln.startswith("Available options")), len(lines))
    return [ln.strip() for ln in itertools.takewhile(lambda ln: ln.startswith("\t"), lines[start:])]


def compose(overrides: list[str], config_dir: str | None = None, extra_known: tuple[str, ...] = ()):
    """Compose the config with Hydra's compose API, turning any composition error into one line."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    ours = [o for o in overrides if o.split("=", 1)[0].lstrip("+~") not in extra_known]
    if config_dir:
        if not Path(config_dir).is_dir():
            raise MergeMixError(f"--config-dir not found: {config_dir}")
        ours = [*ours, f"hydra.searchpath=[file://{Path(config_dir).resolve()}]"]
    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            return hydra_compose("config", overrides=ours, return_hydra_config=False)
    except Exception as exc:
        first = " ".join(str(exc).split("\n")[:1]).strip()
        detail = [ln.strip() for ln in str(exc).split("\n")[1:] if ln.strip().startswith("Key")]
        hint = " (install the launcher: pip install -e .[slurm])" if "submitit" in first else ""
        options = _group_options(str(exc))
        hint += f" (options: {', '.join(options)})" if options else ""
        raise MergeMixError(f"bad config: {first}{' ' + detail[0] if detail else ''}{hint}") from exc
    finally:
        GlobalHydra.instance().clear()


def to_plain(cfg) -> dict:
    from omegaconf import OmegaConf

    try:
        return OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    except Exception as exc:
        key = getattr(exc, "full_key", None)  # OmegaConf's errors name the key on a later line
        raise MergeMixError(f"bad config: {str(exc).splitlines()[0]}{f' (key {key})' if key else ''}") from exc


def _run_dir(cfg: dict) -> Path:
    if cfg["paths"].get("run_dir"):
        return Path(cfg["paths"]["run_dir"])
    try:
        from hydra.core.hydra_config import HydraConfig

        return Path(HydraConfig.get().runtime.output_dir)
    except Exception:  # noqa: BLE001 - not under @hydra.main
        from datetime import datetime

        stamp = f"{datetime.now():%Y-%m-%d_%H-%M-%S.%f}-{os.getpid()}"
        return Path(cfg["paths"]["root"]) / "runs" / cfg["run_name"] / stamp


def _quiet() -> None:
    """Offline by default; keep the console to progress bars and results."""
    import logging
    import warnings

    os.environ.setdefault("WANDB_MODE", "offline")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    warnings.filterwarnings("ignore", category=UserWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", module="optuna")
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    for name in ("pytorch_lightning", "pytorch_lightning.utilities.rank_zero", "lightning_fabric",
                 "lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
        logging.getLogger(name).setLevel(logging.WARNING)


def execute(command: str, cfg: dict, mix_weights=None) -> dict | None:
    """Run one command on a composed, resolved config (used by the Hydra entry point and by tests)."""
    from mergemix.loggers import Tracker
    from mergemix.pipeline import Pipeline
    from mergemix.simplex import check_weights

    _quiet()
    if command == "info":
        from mergemix.models import describe

        print(json.dumps(describe(cfg["model"], cfg["tokenizer"]["vocab_size"]), indent=2))
        return None
    if command in ("validate", "curves", "landscape"):
        from mergemix.analysis import curves, landscape, validate

        checks = {"validate": validate, "curves": curves, "landscape": landscape}
        checks[command].check_config(cfg)  # before anything is built or trained
    study = importlib.import_module(f"mergemix.analysis.{command}") if command in STUDIES else None
    if study:
        study.check_config(cfg)  # before anything is built or trained
    from mergemix.checks import writable_dir

    run_dir = writable_dir(_run_dir(cfg), "run directory")
    tracker = Tracker(cfg["logger"], run_dir, _group(cfg, run_dir))
    pipe = Pipeline(cfg, run_dir, tracker)
    if command == "experts":
        from mergemix.analysis.report import print_gains

        names = [cfg["expert_domain"]] if cfg.get("expert_domain") else pipe.domain_names
        out = {n: str(pipe.expert_dir(n)) for n in names}
        print(json.dumps({"base": str(pipe.base_dir), "experts": out}, indent=2))
        print("expert gains on their own capability:")
        print_gains(pipe.expert_report())
    elif command == "search-worker":
        from mergemix.search.join import join_search

        print(json.dumps(join_search(pipe), indent=2))
    elif command == "search":
        print((pipe.search_dir / "mixture.yaml").read_text())
        print(f"mixture file: {pipe.search_dir / 'mixture.yaml'}")
        print(f"exports: {', '.join(str(p) for p in pipe.write_exports().values())}")
    elif command == "mix":
        path = pipe.train_mixture(check_weights(mix_weights, pipe.domain_names, "mix weights"), "custom")
        result = pipe.evaluate_checkpoint(path)
        print(json.dumps({"checkpoint": str(path), "U": result["U"], "capabilities": result["capabilities"]},
                         indent=2))
    elif command == "compare":
        from mergemix.analysis.compare import aggregate, run_strategy

        result = run_strategy(pipe)
        aggregate(run_dir.parent)
        print(f"strategy {result['strategy']} (seed {result['seed']}): trained U {100 * result['U']:.2f}, "
              f"training tokens {result['cost']['train_tokens']:.3g}; comparison: {run_dir.parent / 'comparison.md'}")
    elif command == "validate":
        from mergemix.analysis.validate import run_validation

        run_validation(pipe)
        print(f"\n{(run_dir / 'validation.md').read_text()}")
    elif command == "theory":
        from mergemix.analysis.theory import resolve_mixtures, theory_report

        t = cfg["theory"]
        theory_report(pipe, run_dir, resolve_mixtures(pipe, t["mixtures"]), int(t["n_seqs"]))
        print(f"\n{(run_dir / 'theory.md').read_text()}")
    elif command == "curves":
        from mergemix.analysis.curves import run_curves

        run_curves(pipe)
        print(f"\n{(run_dir / 'curves.md').read_text()}")
    elif command == "landscape":
        from mergemix.analysis.landscape import run_landscape

        run_landscape(pipe)
        print(f"\n{(run_dir / 'landscape.md').read_text()}")
    elif study:
        study.run(pipe)
        print(f"\n{(run_dir / f'{command}.md').read_text()}")
    else:
        pipe.run()
    with tracker.stage(command, "report", cfg) as run:
        report_run_dir(run, run_dir, cfg["logger"].get("log_checkpoint", False))
    print(f"run directory: {run_dir}")
    return None


def _group(cfg: dict, run_dir: Path) -> str:
    """The tracking group of this job's stage runs: unique per run, and per sweep and job in a multirun."""
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        hc = HydraConfig.get()
        if hc.mode == RunMode.MULTIRUN:
            return f"{cfg['run_name']}-{Path(hc.sweep.dir).name}-{hc.job.num}"
    except ValueError:  # not under @hydra.main
        pass
    return f"{cfg['run_name']}-{run_dir.name}"


def _parse_dotlist(args: list[str], what: str) -> dict:
    from omegaconf import OmegaConf

    try:
        return OmegaConf.to_container(OmegaConf.from_dotlist(args))
    except Exception as exc:
        raise MergeMixError(f"cannot parse {what} ({' '.join(args)}): {str(exc).splitlines()[0]}") from exc


def _merge(args: list[str]) -> None:
    from mergemix.merging import export_merge

    _quiet()
    opts = _parse_dotlist(args, "merge arguments")
    unknown = sorted(set(opts) - {"base", "experts", "weights", "out", "stream"})
    if unknown:
        raise MergeMixError(f"unknown merge argument(s) {unknown}; use base=, experts=[...], weights=[...], out=, "
                            "and optionally stream=true|false")
    missing = [k for k in ("base", "experts", "weights", "out") if k not in opts]
    if missing:
        raise MergeMixError(f"merge needs {', '.join(f'{k}=' for k in missing)}")
    experts, weights = opts["experts"], opts["weights"]
    if not isinstance(experts, list) or not isinstance(weights, list):
        raise MergeMixError("experts and weights must be lists, e.g. experts=[a,b] weights=[0.5,0.5]")
    if len(experts) != len(weights):
        raise MergeMixError(f"weights have {len(weights)} entries but there are {len(experts)} experts")
    stream = opts.get("stream")
    if stream not in (None, True, False):
        raise MergeMixError(f"stream must be true or false (default: stream when the merge would not fit in RAM), "
                            f"got {stream!r}")
    out = export_merge(opts["base"], experts, weights, opts["out"], stream=stream)
    print(f"merged checkpoint: {out}")


def _hydra_entry(command: str, mix_weights) -> None:
    import hydra

    _register_resolvers()

    @hydra.main(config_path=str(CONF_DIR), config_name="config", version_base="1.3")
    def _main(cfg) -> None:
        try:
            execute(command, to_plain(cfg), mix_weights)
        except MergeMixError as exc:
            _fail(str(exc))

    _main()


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = argv.pop(0) if argv and argv[0] in COMMANDS else "run"
    relaunched = os.environ.get("MERGEMIX_COMMAND") if os.environ.get("LOCAL_RANK", "0") != "0" else None
    if relaunched:  # Lightning re-runs this command for its other devices with the arguments Hydra saw
        command, mix_weights = json.loads(relaunched)
        sys.argv = [sys.argv[0], *argv]
        return _hydra_entry(command, mix_weights)
    if argv and argv[0] in ("-h", "--help"):
        print(__doc__)
        return
    try:
        if command == "merge":
            return _merge(argv)
        mix_weights = None
        if command == "mix":
            weights = [a for a in argv if a.startswith("weights=")]
            if not weights:
                raise MergeMixError("mix needs weights='{domain: weight, ...}'")
            mix_weights = _parse_dotlist(weights[:1], "mix weights")["weights"]
            argv = [a for a in argv if not a.startswith("weights=")]
        overrides, config_dir = _overrides_and_config_dir(argv)
        from mergemix.checks import check_writable

        # validate before Hydra starts (one clear line on error); a multirun: every value of each swept key
        for combo in _sweep_values(overrides) if {"-m", "--multirun"} & set(argv) else [overrides]:
            check_writable(to_plain(compose(combo, config_dir))["paths"]["root"], "paths.root")  # Hydra's outputs
    except MergeMixError as exc:
        _fail(str(exc))
    sys.argv = [sys.argv[0], *argv]
    os.environ["MERGEMIX_COMMAND"] = json.dumps([command, mix_weights])  # for Lightning's per-device re-runs
    _hydra_entry(command, mix_weights)


if __name__ == "__main__":
    main()
