"""`mergemix dynamic`: does the best mixture drift during the run, or is one static search enough? (The paper:
re-optimising at 50% of training finds nearly the same mixture.) α* is trained for `dynamic.fraction` x mix.tokens,
a cached run of its own (its data plan is not a prefix of the full run's). With that mid-point checkpoint as the
base, the experts are trained again from it by the expert recipe and the search runs again: α*_mid. The two
mixtures are compared per domain and by L1 distance. With `dynamic.train_second_half` the mid-point is trained for
the rest of mix.tokens on α*_mid and on α*, and both are scored. Writes dynamic.{json,md,png}."""

from __future__ import annotations

from typing import TYPE_CHECKING

from mergemix.analysis import mixtures
from mergemix.errors import MergeMixError
from mergemix.exports import normalised
from mergemix.simplex import check_weights
from mergemix.stages import report

if TYPE_CHECKING:
    from mergemix.pipeline import Pipeline

STATIC, REOPTIMISED = "static (alpha* -> alpha*)", "re-optimised (alpha* -> alpha*_mid)"
SECOND_HALF_SEED = 1  # offset to search_seed: the second half draws other windows than the first half


def split_tokens(cfg: dict) -> tuple[int, int]:
    """mix.tokens cut at `dynamic.fraction`: (tokens before the re-optimisation, tokens after it)."""
    total = int(cfg["mix"]["tokens"])
    first = round(float(cfg["dynamic"]["fraction"]) * total)
    return first, total - first


def check_config(cfg: dict) -> None:
    """Bad dynamic input fails here, before anything is trained."""
    d = cfg["dynamic"]  # its types: mergemix/schema.py
    f = d["fraction"]
    batch = cfg["model"]["seq_len"] * cfg["model"]["batch_size"]
    first, second = split_tokens(cfg)
    parts = [("first", first)] + ([("second", second)] if d["train_second_half"] else [])
    for part, n in parts:
        if n < batch:
            raise MergeMixError(
                f"dynamic: the {part} part of mix.tokens ({n:,} tokens at fraction {f}) must cover "
                f"at least one batch ({batch:,} tokens); raise mix.tokens or move dynamic.fraction"
            )


def run(pipe: Pipeline) -> dict:
    cfg, names = pipe.cfg, pipe.domain_names
    first, second = split_tokens(cfg)
    alpha = check_weights(normalised(pipe.alpha_star), names, "alpha*")
    mid = pipe.train_mixture(alpha, "dynamic-first", spec={**cfg["mix"], "tokens": first})
    at_mid = pipe.derive(
        base={**cfg["base"], "checkpoint": str(mid)}
    )  # experts and search keyed by this init
    alpha_mid = check_weights(normalised(at_mid.alpha_star), names, "alpha* at the mid-point")
    mix = {"alpha*": alpha, "alpha*_mid": alpha_mid}
    result = {
        "fraction": float(cfg["dynamic"]["fraction"]),
        "tokens": {"first": first, "second": second},
        "mixtures": mix,
        "l1": mixtures.l1(alpha, alpha_mid),
        "difference": {d: alpha_mid[d] - alpha[d] for d in names},
        "verified_merge": {
            "alpha* (at the base)": pipe.search_result["verified"],
            "alpha*_mid (at the mid-point)": at_mid.search_result["verified"],
        },
        "searches": {"base": str(pipe.search_dir), "mid": str(at_mid.search_dir)},
        "checkpoints": {"mid": str(mid)},
    }
    rows = None
    if cfg["dynamic"]["train_second_half"]:
        spec, seed = {**cfg["mix"], "tokens": second}, pipe.search_seed + SECOND_HALF_SEED
        paths = {
            STATIC: at_mid.train_mixture(alpha, "dynamic-static", spec, seed),
            REOPTIMISED: at_mid.train_mixture(alpha_mid, "dynamic-reoptimised", spec, seed),
        }
        rows = {
            "mid-point": pipe.evaluate_checkpoint(mid),
            **{k: pipe.evaluate_checkpoint(p) for k, p in paths.items()},
        }
        result.update(
            rows={k: mixtures.scores(r) for k, r in rows.items()},
            margins=mixtures.margins(rows, [(REOPTIMISED, STATIC)], pipe.suite.capabilities),
        )
        result["checkpoints"].update({k: str(p) for k, p in paths.items()})
    mixtures.write(pipe.run_dir, "dynamic", result, markdown(result, rows), mix, rows)
    return result


def markdown(r: dict, rows: dict | None) -> str:
    first, second = r["tokens"]["first"], r["tokens"]["second"]
    verified = "; ".join(f"{k} U {100 * v['U']:.1f}" for k, v in r["verified_merge"].items())
    lines = [
        (
            f"Mixture re-optimised after {r['fraction']:.0%} of the mixture run ({first:,} of {first + second:,} "
            f"tokens on alpha*): experts trained again from that mid-point checkpoint and searched again."
        ),
        "",
        "### Mixtures (%)",
        "",
        mixtures.table({**r["mixtures"], "alpha*_mid - alpha*": r["difference"]}),
        "",
        f"L1 distance alpha* vs alpha*_mid: {r['l1']:.3f} (0: the same mixture, 2: disjoint).",
        "",
        f"Verified merges (each at its own base): {verified}.",
        "",
    ]
    if rows:
        lines += [
            f"### Second half: {second:,} tokens from the mid-point",
            "",
            report.score_table(rows),
            "",
            *mixtures.margin_lines(r["margins"]),
            "",
        ]
    return "\n".join(lines)
