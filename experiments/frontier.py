"""`make frontier`: the cost-quality frontier of mixture searches on two testbeds -> reports/frontier/.

    python experiments/frontier.py [--testbeds embedded files] [--workers N] [--kinds K...] [--report-only]
                                   [overrides...]

Testbeds: `embedded` (the built-in domains and benchmarks) and `files` (four domains of text files that ship with
the machine and four JSONL cloze benchmarks, declared through --config-dir as a user would:
experiments/testbed_files.py). Every job (one search at one seed, mergemix/analysis/frontier.py) runs in its own
worker process over one shared artifact cache under <paths.root>, and writes its points to
<paths.root>/frontier/<testbed>/points/; a rerun skips finished jobs, and a killed job resumes from its cached runs.
Overrides apply to both testbeds (e.g. frontier.seeds=[0] for a quick look)."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "experiments"))

COMMON = ["model=tiny", "trainer.num_threads=1", "trainer.enable_progress_bar=false", "logger=none"]
TITLES = {
    "embedded": "Embedded testbed (prose, code, math, SFT; built-in benchmarks)",
    "files": "File testbed (C headers, Perl modules, copyright texts, man pages; JSONL cloze benchmarks)",
}


def configs(testbed: str, overrides: list[str], home: Path) -> tuple[dict, dict]:
    """(config, small model section) of one testbed."""
    from mergemix.cli import compose, to_plain

    config_dir, extra = None, []
    if testbed == "files":
        import testbed_files

        config_dir = str(testbed_files.ensure(home / "testbeds" / "files"))
        extra = ["domains=files4", "benchmarks=files4"]
    args = [*COMMON, *extra, *overrides]
    cfg = to_plain(compose(args, config_dir))
    small = cfg["frontier"].get("small_model")
    small_model = to_plain(compose([*args, f"model={small}"], config_dir))["model"] if small else None
    return cfg, small_model


def _work(cfg: dict, job: dict, out_dir: str, small_model: dict | None) -> tuple[str, str | None, float]:
    from mergemix.analysis.frontier import job_id, run_job
    from mergemix.cli import _quiet

    _quiet()
    t0 = time.time()
    try:
        run_job(cfg, job, Path(out_dir), small_model)
        return job_id(job), None, time.time() - t0
    except Exception:  # noqa: BLE001 - one failed job must not stop the others; it is reported at the end
        return job_id(job), traceback.format_exc(limit=6), time.time() - t0


def prepare(cfg: dict, small_model: dict | None) -> None:
    """Base, experts of every horizon and the small model's base: built once before the jobs fan out."""
    from mergemix.cli import _quiet
    from mergemix.pipeline import Pipeline

    _quiet()
    pipe = Pipeline(cfg, ".")
    _ = pipe.base_dir
    for e in cfg["frontier"]["expert_tokens"]:  # seed 0's (a redrawn seed's experts train in its own job)
        _ = pipe.derive(experts={**cfg["experts"], "tokens": int(e)}).expert_dirs
    if small_model:
        _ = pipe.derive(model=small_model).base_dir


def run(
    testbeds: list[str], overrides: list[str], workers: int, home: Path, kinds: list[str] | None = None
) -> dict[str, list[str]]:
    from mergemix.analysis.frontier import finished, jobs

    plans, failed = {}, {}
    for tb in testbeds:
        cfg, small = configs(tb, overrides, home)
        out = home / "frontier" / tb / "points"
        out.mkdir(parents=True, exist_ok=True)
        plans[tb] = (
            cfg,
            small,
            out,
            [j for j in jobs(cfg) if finished(j, out) is None and (not kinds or j["kind"] in kinds)],
        )
    with ProcessPoolExecutor(max_workers=workers) as pool:
        for tb, (*_, todo) in plans.items():  # bases and experts first, testbeds in parallel
            print(f"[frontier] {tb}: {len(todo)} jobs to run", flush=True)
        for f in as_completed(
            [pool.submit(prepare, cfg, small) for cfg, small, _, todo in plans.values() if todo]
        ):
            f.result()
        order = sorted(
            ((i, tb, j) for tb, (*_, todo) in plans.items() for i, j in enumerate(todo)), key=lambda x: x[:2]
        )  # testbeds interleaved in jobs' order: a cut run leaves whole seeds
        futures = {
            pool.submit(_work, *plans[tb][:1], j, str(plans[tb][2]), plans[tb][1]): tb for _, tb, j in order
        }
        for i, f in enumerate(as_completed(futures), 1):
            name, err, wall = f.result()
            tb = futures[f]
            print(
                f"[frontier] {tb} {name}: {'FAILED' if err else 'done'} in {wall / 60:.1f} min "
                f"({i}/{len(futures)})",
                flush=True,
            )
            if err:
                failed.setdefault(tb, []).append(name)
                print(err, flush=True)
    return failed


README = ROOT / "README.md"
MARKERS = (
    "<!-- frontier:begin (generated by experiments/frontier.py from reports/frontier/frontier.json) -->",
    "<!-- frontier:end -->",
)


def write_readme_block(data: dict, readme: Path = README) -> None:
    """Replace the README's results block (between MARKERS) by the one frontier.json gives."""
    from mergemix.analysis.frontier_report import readme_block

    text = readme.read_text()
    if MARKERS[0] not in text:
        return
    head, rest = text.split(MARKERS[0], 1)
    tail = rest.split(MARKERS[1], 1)[1]
    readme.write_text(head + MARKERS[0] + "\n" + readme_block(data) + "\n" + MARKERS[1] + tail)


def report(
    testbeds: list[str], overrides: list[str], home: Path, out: Path, wall_s: float | None, workers: int = 1
) -> dict:
    from mergemix.analysis.frontier import consistency
    from mergemix.analysis.frontier_report import markdown, plot, summarise
    from mergemix.artifacts import write_atomic
    from mergemix.cli import _quiet

    _quiet()
    summaries, md, inputs = {}, [], {}
    for tb in testbeds:
        cfg, _ = configs(tb, overrides, home)
        points = [
            p
            for f in sorted((home / "frontier" / tb / "points").glob("*.json"))
            for p in json.loads(f.read_text())
            if p["seed"] in cfg["frontier"]["seeds"] and p.get("retrained")
        ]
        if points:
            inputs[tb] = (cfg, points)
    with ProcessPoolExecutor(
        max_workers=max(1, min(workers, len(inputs)))
    ) as pool:  # merges of both testbeds
        ranked = {tb: pool.submit(consistency, cfg, points) for tb, (cfg, points) in inputs.items()}
        for tb, (cfg, points) in inputs.items():
            reference = {
                "expert_tokens": int(cfg["experts"]["tokens"]),
                "budget": int(cfg["search"]["budget"]),
                "correction": "none",
            }
            summaries[tb] = {
                **summarise(points, reference),
                "model": cfg["model"]["name"],
                "mix_tokens": int(cfg["mix"]["tokens"]),
                "frontier": cfg["frontier"],
                "consistency": ranked[tb].result(),
            }
            md.append(markdown(summaries[tb], TITLES.get(tb, tb)))
    out.mkdir(parents=True, exist_ok=True)
    cmd = "python experiments/frontier.py " + " ".join(["--testbeds", *testbeds, *overrides])
    head = (
        f"# Cost-quality frontier\n\nProduced by `make frontier` (`{cmd}`)"
        + (f" in {wall_s / 60:.0f} min on 2 cores" if wall_s else "")
        + ". Scores are retrained U x100 above "
        "chance: every strategy's chosen mixture is retrained from the base for mix.tokens on a fresh data order "
        "(never one of its own trials) and scored. Cost is the total compute a strategy pays before that final "
        "run (training and evaluation FLOPs, as a multiple of the reference MergeMix point's); training tokens "
        "are a second column. ± is the std over seeds (experts redrawn per seed), Δ the mean paired difference "
        "to the reference MergeMix point over the same seeds with its t interval. The statistics are defined "
        "in mergemix/analysis/frontier_report.py.\n"
    )
    data = {"command": cmd, "wall_s": wall_s, "testbeds": summaries}
    write_atomic(out / "frontier.md", head + "\n" + "\n".join(md) + "\n![frontier](frontier.png)\n")
    write_atomic(out / "frontier.json", json.dumps(data, indent=1, default=float))
    if summaries:
        plot(summaries, out / "frontier.png")
        if out.resolve() == (ROOT / "reports" / "frontier").resolve():
            write_readme_block(data)
    return summaries


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--testbeds", nargs="+", default=["embedded", "files"], choices=["embedded", "files"])
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--report-only", action="store_true")
    ap.add_argument(
        "--kinds",
        nargs="+",
        choices=["fixed", "mergemix", "refine", "proxy", "regmix", "full", "small"],
        help="run only these kinds of job (default: all); the report covers every point written",
    )
    ap.add_argument("--out", type=Path, default=ROOT / "reports" / "frontier")
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args()
    os.environ.setdefault("WANDB_MODE", "disabled")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    home = Path(os.environ.get("MERGEMIX_HOME", "outputs")).resolve()
    t0, failed = time.time(), {}
    wall = home / "frontier" / "wall_s.json"  # summed over every (resumed) run that trained something
    spent = json.loads(wall.read_text()) if wall.is_file() else {}
    if not args.report_only:
        failed = run(args.testbeds, args.overrides, args.workers, home, args.kinds)
        for tb in args.testbeds:
            spent[tb] = spent.get(tb, 0.0) + (time.time() - t0) / len(args.testbeds)
        wall.write_text(json.dumps(spent))
    report(
        args.testbeds,
        args.overrides,
        home,
        args.out,
        sum(spent.get(tb, 0.0) for tb in args.testbeds) or None,
        args.workers,
    )
    if failed:
        print(f"[frontier] failed jobs (rerun to retry): {failed}", flush=True)
        raise SystemExit(1)


if __name__ == "__main__":
    main()
