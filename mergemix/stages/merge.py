"""Stage 5, merge: theta(alpha) = base + sum_i alpha_i (expert_i - base) (merging.py merges in place during the
search). Here: where the merges' scores are cached, and alpha*'s merge handed on as recipes and a checkpoint."""

from __future__ import annotations

from pathlib import Path

from mergemix import artifacts
from mergemix.artifacts import ArtifactStore


def merge_cache_path(
    store: ArtifactStore, base_dir: Path, expert_dirs: dict[str, Path], suite_key: str, scale: float
) -> Path:
    """One evaluation cache per (base, experts, benchmarks, merge scale), shared by every back-end and seed."""
    inputs = {
        "base": store.ref(base_dir),
        "suite": suite_key,
        "experts": {n: store.ref(p) for n, p in expert_dirs.items()},
    }
    if scale != 1.0:  # only when set, so that plain merges keep their cache
        inputs["merge_scale"] = scale
    return store.root / "evalcache" / f"{artifacts.stage_key('eval', inputs)}.jsonl"


def export_alpha_star(
    run_dir: Path, alpha: dict[str, float], base_dir: Path, expert_dirs: dict[str, Path], export: dict
) -> dict[str, Path]:
    """alpha* as a mergekit config, a weight YAML and a blend list in the run directory (exports.py), and with
    `export.alpha_star_checkpoint` theta(alpha*) as an HF checkpoint. Not in the search artifact: the data prefix is
    a deployment setting, not an input of the search."""
    from mergemix.exports import write_exports

    out = write_exports(run_dir, alpha, base_dir, expert_dirs, export.get("data_prefix", "/data/{domain}"))
    if export.get("alpha_star_checkpoint"):
        from mergemix.merging import export_merge

        names = sorted(expert_dirs)
        out["checkpoint"] = export_merge(
            base_dir,
            [expert_dirs[n] for n in names],
            [alpha[n] for n in names],
            run_dir / "alpha_star",
            overwrite=True,
        )
    return out
