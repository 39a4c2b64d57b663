"""`mergemix transfer`: does a mixture searched on one model carry over to another (the paper: α* found on 8B
beats the manual mixture on 16B)? α* is searched with the source model (its own base and experts; or read from a
run's mixture.yaml, `transfer.alpha_file`), then the target model is trained from its own base on the
token-proportional mixture, on the source's α* and (`transfer.target_search`) on its own α*, each for mix.tokens
(cached runs), and scored. Writes transfer.{json,md,png} into the run directory."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import yaml

from mergemix.analysis import mixtures
from mergemix.errors import MergeMixError
from mergemix.simplex import check_weights
from mergemix.stages import report

if TYPE_CHECKING:
    from mergemix.pipeline import Pipeline

# row label -> label of the trained run (the same runs as `mergemix run` on the target for uniform and mergemix)
RUNS = {"token-proportional": "uniform", "transferred alpha*": "transfer", "own alpha*": "mergemix"}
TOKEN, TRANSFERRED, OWN = RUNS


def model_config(spec, what: str) -> dict:
    """A model config by its name in the model group (conf/model, or the --config-dir's), or given as a mapping."""
    if isinstance(spec, dict):
        return spec
    if not isinstance(spec, str) or not spec:
        raise MergeMixError(f"{what} must name a model config (e.g. tiny) or be a mapping, got {spec!r}")
    from hydra.core.global_hydra import GlobalHydra

    from mergemix.compose import compose, to_plain

    try:
        if GlobalHydra.instance().is_initialized():  # inside the `mergemix` app: its config search path
            import hydra

            return to_plain(hydra.compose("config", overrides=[f"model={spec}"]))["model"]
        return to_plain(compose([f"model={spec}"]))["model"]
    except Exception as exc:
        raise MergeMixError(f"{what}={spec}: {str(exc).splitlines()[0]}") from exc


def models(cfg: dict) -> tuple[dict | None, dict]:
    """(source, target) model configs; no source when `transfer.alpha_file` gives α*."""
    t = cfg["transfer"]
    target = model_config(t["target_model"], "transfer.target_model")
    if t.get("alpha_file"):
        return None, target
    source = model_config(t["source_model"], "transfer.source_model")
    if source == target:
        raise MergeMixError(
            f"transfer.source_model and transfer.target_model are the same model "
            f"({source.get('name')}): nothing would transfer; give two models, e.g. tiny and small"
        )
    return source, target


def check_domains(alpha, names: list[str], what: str) -> dict[str, float]:
    """The source's α* as a mixture of the target's domains (rescaled to sum 1: files store it rounded)."""
    if not isinstance(alpha, dict) or sorted(map(str, alpha)) != sorted(names):
        got = sorted(map(str, alpha)) if isinstance(alpha, dict) else alpha
        raise MergeMixError(
            f"{what}: the source's alpha* is over domains {got}, the target's domains are {sorted(names)}"
        )
    try:
        values = {str(d): float(w) for d, w in alpha.items()}
    except (TypeError, ValueError) as exc:
        raise MergeMixError(f"{what}: alpha* weights must be numbers, got {alpha}") from exc
    total = sum(values.values())
    if abs(total - 1.0) > 1e-4:  # not a rounding error: let check_weights say what is wrong
        return check_weights(values, names, what)
    return check_weights({d: w / total for d, w in values.items()}, names, what)


def read_alpha(path: str, names: list[str]) -> dict[str, float]:
    """α* from a mixture.yaml (what `mergemix search`/`run` write: a {domain: weight} `alpha_star`)."""
    what = f"transfer.alpha_file {path}"
    if not Path(path).is_file():
        raise MergeMixError(f"{what}: file not found")
    try:
        data = yaml.safe_load(Path(path).read_text())
    except yaml.YAMLError as exc:
        raise MergeMixError(f"{what}: not YAML ({str(exc).splitlines()[0]})") from exc
    if not isinstance(data, dict) or not isinstance(data.get("alpha_star"), dict):
        raise MergeMixError(f"{what}: no alpha_star mapping (use the mixture.yaml of a run or a search)")
    return check_domains(data["alpha_star"], names, what)


def check_config(cfg: dict) -> None:
    """Bad transfer input fails here, before anything is trained."""
    t = cfg["transfer"]
    if cfg["base"].get("checkpoint"):
        raise MergeMixError(
            "transfer trains a base per model: leave base.checkpoint unset and give a pretrained "
            "checkpoint as the `path` of its model config"
        )
    for spec in (t["source_model"], t["target_model"]):
        if isinstance(spec, dict) and "name" not in spec:
            raise MergeMixError(f"a model given as a mapping needs a `name`, got {spec}")
    models(cfg)
    if t.get("alpha_file"):
        read_alpha(t["alpha_file"], sorted(cfg["domains"]["sources"]))


def on_model(pipe: Pipeline, model: dict):
    """The pipeline on another model: its own base (pretrained by the base recipe, or the model's `path`), own
    experts and search; tokenizer, data and benchmarks are shared."""
    return pipe.derive(model=model, base={**pipe.cfg["base"], "checkpoint": model.get("path")})


def run(pipe: Pipeline) -> dict:
    t = pipe.cfg["transfer"]
    source_model, target_model = models(pipe.cfg)
    target = on_model(pipe, target_model)
    if source_model is None:
        alpha = read_alpha(t["alpha_file"], target.domain_names)
        source = {"alpha_file": str(Path(t["alpha_file"]).resolve())}
    else:
        searched = on_model(pipe, source_model)
        alpha = check_domains(searched.alpha_star, target.domain_names, f"alpha* of {source_model['name']}")
        source = {
            "model": source_model,
            "search": str(searched.search_dir),
            "verified_merge": searched.search_result["verified"],
        }
    mix = {TOKEN: target.uniform_mixture, TRANSFERRED: alpha}
    if t["target_search"]:
        mix[OWN] = check_domains(target.alpha_star, target.domain_names, f"alpha* of {target_model['name']}")
    paths = {label: target.train_mixture(m, RUNS[label]) for label, m in mix.items()}
    rows = {label: target.evaluate_checkpoint(p) for label, p in paths.items()}
    caps = target.suite.capabilities
    result = {
        "source": source,
        "target_model": target_model,
        "mix_tokens": int(pipe.cfg["mix"]["tokens"]),
        "mixtures": mix,
        "l1": {
            f"{TRANSFERRED} vs {other}": mixtures.l1(alpha, mix[other])
            for other in (OWN, TOKEN)
            if other in mix
        },
        "rows": {k: mixtures.scores(r) for k, r in rows.items()},
        "margins": mixtures.margins(rows, [(TRANSFERRED, TOKEN), (OWN, TOKEN), (TRANSFERRED, OWN)], caps),
        "checkpoints": {k: str(p) for k, p in paths.items()},
    }
    mixtures.write(pipe.run_dir, "transfer", result, markdown(result, rows), mix, rows)
    return result


def markdown(r: dict, rows: dict) -> str:
    origin = r["source"].get("alpha_file") or f"model {r['source']['model']['name']}"
    target = r["target_model"]["name"]
    return "\n".join(
        [
            (
                f"alpha* from {origin}, trained on model {target} (each mixture for {r['mix_tokens']:,} tokens from "
                f"{target}'s base); scores normalised against chance (x100), U = macro-average."
            ),
            "",
            "### Mixtures (%)",
            "",
            mixtures.table(r["mixtures"]),
            "",
            "L1 distance: " + "; ".join(f"{k} {v:.3f}" for k, v in r["l1"].items()),
            "",
            f"### Trained on {target}",
            "",
            report.score_table(rows),
            "",
            "### Paired differences",
            "",
            *mixtures.margin_lines(r["margins"]),
            "",
        ]
    )
