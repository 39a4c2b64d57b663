"""`mergemix` console script: `mergemix [COMMAND] [OVERRIDES] [HYDRA FLAGS]` (`mergemix --help` lists both).

Each command (mergemix.commands) runs under Hydra's own `@hydra.main`, so every Hydra flag and sweep works:
`--cfg job`, `--info defaults`, `-p search`, `-sc install=bash`, `-m 'search_seed=range(0,3)'`. Before Hydra starts,
each job's config is composed once so that bad input stops with one `error: ...` line and exit code 2.
`mergemix merge base=DIR experts=[DIR,...] weights=[w,...] out=DIR [stream=true|false]` needs no config.
"""

from __future__ import annotations

import json
import os
import sys

from mergemix import __version__
from mergemix.commands import COMMANDS, execute
from mergemix.commands import quiet as _quiet
from mergemix.compose import CONF_DIR, compose, label_strategy, sweep_jobs, to_plain
from mergemix.errors import MergeMixError, mask_secrets
from mergemix.log import console, log, mirror_job_log

__all__ = ["CONF_DIR", "_quiet", "compose", "execute", "main", "to_plain"]


def _fail(msg: str) -> None:
    print(f"error: {mask_secrets(msg)}", file=sys.stderr)
    raise SystemExit(2)


def _hydra_args(argv: list[str]) -> tuple[object, list[str]]:
    """The arguments as Hydra's own command line parser reads them (its errors as one line), and argv with the
    flags first: Hydra reads overrides only after its flags, mergemix takes them in any order."""
    from hydra._internal.utils import get_args_parser

    parser = get_args_parser()

    def error(message: str):
        raise MergeMixError(f"bad arguments: {message}")

    parser.error = error
    args = parser.parse_intermixed_args(argv)
    flags, pending = [], list(args.overrides)
    for a in argv:
        if pending and a == pending[0]:
            pending.pop(0)
        else:
            flags.append(a)
    return args, [*flags, *args.overrides]


def _preflight(args) -> None:
    """Compose each job's config once (every value of a multirun sweep) and check that Hydra can write its
    outputs. Only the composition when Hydra just shows something (--cfg, --info); nothing for help/completion."""
    from mergemix.checks import check_writable
    from mergemix.schema import check_names

    if args.help or args.hydra_help or args.shell_completion or args.experimental_rerun:
        return
    jobs = sweep_jobs(args.overrides, args.config_dir) if args.multirun else [args.overrides]
    for overrides in jobs:
        cfg = compose(overrides, args.config_dir)
        if not (args.cfg or args.info):
            check_names(to_plain(cfg))  # run_name names Hydra's output directory, made before the job starts
            check_writable(to_plain(cfg)["paths"]["root"], "paths.root")  # Hydra's outputs


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = [f"  {name:<{width}}  {cmd.summary}" for name, cmd in COMMANDS.items()]
    return "\n".join(
        [
            "usage: mergemix [COMMAND] [OVERRIDES] [HYDRA FLAGS]   (COMMAND defaults to run)",
            "",
            "commands:",
            *lines,
            f"  {'merge':<{width}}  base=DIR experts=[DIR,...] weights=[w,...] out=DIR: one merge, no config",
            "",
            "mergemix --version: the version; the config groups and flags follow.",
            "",
        ]
    )


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
        raise MergeMixError(
            f"unknown merge argument(s) {unknown}; use base=, experts=[...], weights=[...], out=, "
            "and optionally stream=true|false"
        )
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
        raise MergeMixError(
            f"stream must be true or false (default: stream when the merge would not fit in RAM), "
            f"got {stream!r}"
        )
    out = export_merge(opts["base"], experts, weights, opts["out"], stream=stream)
    log.info(f"merged checkpoint: {out}")


def _register_resolvers() -> None:
    """`${mergemix_pid:}` in hydra.run.dir: with the microsecond, two runs started at once get their own directory."""
    from omegaconf import OmegaConf

    OmegaConf.register_new_resolver("mergemix_pid", os.getpid, replace=True)


def _mask_hydra_files(hc) -> None:
    """Hydra wrote the job's config and overrides (.hydra/*.yaml, a sweep's multirun.yaml) as given: mask the
    passwords of URLs (search.storage) in them."""
    from pathlib import Path

    from hydra.types import RunMode

    from mergemix.artifacts import write_atomic

    folder = Path(hc.runtime.output_dir) / hc.output_subdir if hc.output_subdir else None
    files = list(folder.glob("*.yaml")) if folder else []
    if hc.mode == RunMode.MULTIRUN:
        files.append(Path(hc.sweep.dir) / "multirun.yaml")
    for f in files:
        text = f.read_text() if f.is_file() else ""
        if mask_secrets(text) != text:
            write_atomic(f, mask_secrets(text))


def _hydra_entry(command: str, mix_weights) -> None:
    import hydra

    _register_resolvers()

    @hydra.main(config_path=str(CONF_DIR), config_name="config", version_base="1.3")
    def _main(cfg) -> None:
        from hydra.core.hydra_config import HydraConfig

        console()  # after Hydra has configured logging for the job
        mirror_job_log()  # what the terminal shows, also in <run dir>/<command>.log
        _mask_hydra_files(HydraConfig.get())
        try:
            label_strategy(cfg, HydraConfig.get().runtime.choices)
            execute(command, to_plain(cfg), mix_weights)
        except MergeMixError as exc:
            _fail(str(exc))

    _main()


def _mix_weights(argv: list[str]) -> tuple[dict, list[str]]:
    weights = [a for a in argv if a.startswith("weights=")]
    if not weights:
        raise MergeMixError("mix needs weights='{domain: weight, ...}'")
    return _parse_dotlist(weights[:1], "mix weights")["weights"], [
        a for a in argv if not a.startswith("weights=")
    ]


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--version" in argv:
        print(f"mergemix {__version__}")
        return
    command = argv.pop(0) if argv and argv[0] in (*COMMANDS, "merge") else "run"
    relaunched = os.environ.get("MERGEMIX_COMMAND") if os.environ.get("LOCAL_RANK", "0") != "0" else None
    if relaunched:  # Lightning re-runs this command for its other devices with the arguments Hydra saw
        command, mix_weights = json.loads(relaunched)
        sys.argv = [sys.argv[0], *argv]
        return _hydra_entry(command, mix_weights)
    try:
        if command == "merge":
            return print(usage()) if {"-h", "--help"} & set(argv) else _merge(argv)
        mix_weights = None
        if command == "mix" and not {"-h", "--help"} & set(argv):
            mix_weights, argv = _mix_weights(argv)
        args, argv = _hydra_args(argv)
        _preflight(args)
    except MergeMixError as exc:
        _fail(str(exc))
    if args.help:
        print(usage())
    sys.argv = [
        sys.argv[0],
        *argv,
        f"hydra.job.name={command}",
    ]  # the job's log file: <run dir>/<command>.log
    os.environ["MERGEMIX_COMMAND"] = json.dumps([command, mix_weights])  # for Lightning's per-device re-runs
    _hydra_entry(command, mix_weights)


if __name__ == "__main__":
    main()
