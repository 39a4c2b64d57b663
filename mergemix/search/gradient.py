"""The 'learnable' merge: alpha = softmax(z) learned by gradient descent through a differentiable merge
(torch.func.functional_call), minimising the negative log-likelihood of the correct answers on a dev split of the
benchmarks (every `dev_every`-th item). alpha* is then scored on the real U like every other back-end."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import torch
from torch.func import functional_call
from tqdm.auto import tqdm

from mergemix.benchmarks.evaluator import _encode_pair
from mergemix.errors import MergeMixError
from mergemix.search.types import Outcome


def dev_requests(tokenizer, tasks: Mapping, dev_every: int, max_length: int) -> list[tuple[list[int], int]]:
    """(tokens, number of answer tokens at the end) for the gold answer of every dev item."""
    out = []
    for task in tasks.values():
        for item in task.items[::dev_every]:
            if task.kind == "mc":
                ctx, cont = _encode_pair(tokenizer, item["context"], item["choices"][item["label"]])
            else:
                ctx, cont = _encode_pair(tokenizer, item["prompt"], " " + item["answer"])
            out.append(((ctx + cont)[-max_length:], len(cont)))
    return out


class MergeNLL:
    """NLL of the dev answers under theta(softmax(z)); differentiable in z."""

    def __init__(self, bank, model, requests: Sequence[tuple[list[int], int]], pad_id: int):
        self.bank, self.model = bank, model.eval()
        width = max(len(t) for t, _ in requests)
        self.ids = torch.full((len(requests), width), pad_id, dtype=torch.long)
        self.mask = torch.zeros_like(self.ids)
        self.target_mask = torch.zeros_like(self.ids, dtype=torch.bool)
        for i, (toks, n) in enumerate(requests):
            self.ids[i, : len(toks)] = torch.tensor(toks)
            self.mask[i, : len(toks)] = 1
            self.target_mask[i, len(toks) - n : len(toks)] = True
        self.n_tokens = int(self.mask.sum())

    def params(self, alpha: torch.Tensor) -> dict[str, torch.Tensor]:
        return {n: self.bank.merged(n, alpha) for n in self.bank.base_params}

    def __call__(self, z: torch.Tensor) -> torch.Tensor:
        alpha = torch.softmax(z, dim=0)
        logits = functional_call(
            self.model, self.params(alpha), (self.ids,), {"attention_mask": self.mask}
        ).logits
        logits = logits[:, :-1]
        logp = torch.log_softmax(logits if logits.dtype == torch.float64 else logits.float(), dim=-1)
        tok_logp = logp.gather(-1, self.ids[:, 1:, None])[..., 0]
        return -(tok_logp * self.target_mask[:, 1:]).sum() / len(self.ids)


def gradient_search(
    evaluate, names: Sequence[str], cfg: Mapping, seed: int, priors: list[dict], util: Callable[[dict], float]
) -> Outcome:
    """`evaluate` must be a MergeObjective (it carries the experts, the model and the benchmarks)."""
    if int(cfg.get("n_workers", 1)) > 1:
        raise MergeMixError("search=gradient takes one step after another: set search.n_workers=1")
    suite = evaluate.pipe.suite
    requests = dev_requests(
        suite.evaluator.tok, suite.evaluator.tasks, int(cfg.get("dev_every", 5)), suite.evaluator.max_length
    )  # native tasks: lm-eval members are scored by lm-eval only
    if not requests:
        raise MergeMixError(
            "the gradient back-end needs benchmark tasks of the project's own evaluator "
            "(lm-eval members are not differentiated through)"
        )
    nll = MergeNLL(evaluate.bank, evaluate.target, requests, suite.evaluator.tok.pad_token_id)
    z = torch.zeros(len(names), requires_grad=True)
    opt = torch.optim.Adam([z], lr=float(cfg.get("lr", 0.1)))
    losses = []
    for _ in tqdm(range(int(cfg["budget"])), desc="search: gradient steps", unit="step"):
        opt.zero_grad()
        loss = nll(z)
        loss.backward()
        opt.step()
        losses.append(float(loss))
        evaluate.ledger.eval_tokens += 3 * nll.n_tokens  # forward + backward ~ 3 forwards
    alpha = torch.softmax(z.detach(), 0).numpy().astype(float)
    return Outcome(alpha / alpha.sum(), None, {"dev_nll": losses, "dev_items": len(requests)})
