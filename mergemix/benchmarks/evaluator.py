"""Fast evaluator: requests are tokenised and batched once; each candidate model costs only forward passes.

Multiple choice is scored like lm-eval's loglikelihood requests (sum of continuation log-probs; `acc`,
`acc_norm` by character length) plus `prob`, the softmax probability of the gold choice (a lower-noise soft
score). The choices of an item share one packed row (benchmarks/packing.py): the context and any common start of
the continuations are computed once, and the LM head runs only where a log-prob is needed. Models whose attention
takes no custom mask (not sdpa or eager) get one causal row per distinct input instead."""

from __future__ import annotations

import numpy as np
import torch

from mergemix.benchmarks.packing import Batch, Request, batches, prefix_tree, tree_mask
from mergemix.benchmarks.tasks import Task
from mergemix.log import Progress

PACKED_ATTENTION = ("sdpa", "eager")  # attention implementations that take a custom 4D mask as given


def _encode_pair(tok, context: str, continuation: str) -> tuple[list[int], list[int]]:
    # lm-eval convention: trailing context whitespace moves to the continuation, split the joint encoding.
    n_space = len(context) - len(context.rstrip(" "))
    if n_space:
        context, continuation = context[:-n_space], context[-n_space:] + continuation
    whole = tok(context + continuation, add_special_tokens=False)["input_ids"]
    ctx = tok(context, add_special_tokens=False)["input_ids"]
    return whole[: len(ctx)], whole[len(ctx) :]


class Evaluator:
    def __init__(self, tokenizer, tasks: dict[str, Task], batch_size: int = 64, max_length: int = 256):
        self.tok, self.tasks, self.batch_size, self.max_length = tokenizer, tasks, batch_size, max_length
        self.mc_requests: dict[str, list[list[Request]]] = {}  # per item
        self.gen_prompts: dict[str, list[list[int]]] = {}
        for name, task in tasks.items():
            if task.kind == "mc":
                self.mc_requests[name] = self._requests(task)
            else:
                self.gen_prompts[name] = [
                    tokenizer(it["prompt"], add_special_tokens=False)["input_ids"][-max_length:]
                    for it in task.items
                ]
        self.mc_batches = self._batches(packed=True)
        self._path_batches: dict[str, list[Batch]] | None = None  # built on first use
        self._progress: Progress | None = None  # per_item's: items scored, as log lines in a log file

    # -------------------------------------------------------------------------------------------- prepare ---
    def _requests(self, task: Task) -> list[list[Request]]:
        """lm-eval's inputs: (context + continuation) left-truncated to max_length + 1 tokens, minus the last."""
        first_slot = np.cumsum([0] + [len(it["choices"]) for it in task.items])
        out = []
        for r, item in enumerate(task.items):
            reqs = []
            for c, choice in enumerate(item["choices"]):
                ctx, cont = _encode_pair(self.tok, item["context"], choice)
                inp = (ctx + cont)[-(self.max_length + 1) :][:-1]
                start = len(inp) - len(cont)
                scored = [
                    (start + i, t, int(first_slot[r]) + c) for i, t in enumerate(cont) if start + i >= 0
                ]
                if scored:
                    reqs.append((inp, scored))
            out.append(reqs)
        return out

    def _batches(self, packed: bool) -> dict[str, list[Batch]]:
        """Packed: one prefix-tree row per item. Otherwise one causal row per distinct input."""
        out = {}
        for name, items in self.mc_requests.items():
            if packed:
                rows = [prefix_tree(reqs) for reqs in items]
            else:
                same: dict[tuple, list[Request]] = {}
                for req in (q for reqs in items for q in reqs):
                    same.setdefault(tuple(req[0]), []).append(req)
                rows = [prefix_tree(group) for group in same.values()]
            out[name] = batches(rows, self.tok.pad_token_id, self.batch_size)
        return out

    def plan(self, packed: bool) -> dict[str, list[Batch]]:
        if packed:
            return self.mc_batches
        if self._path_batches is None:
            self._path_batches = self._batches(packed=False)
        return self._path_batches

    @staticmethod
    def packs(model) -> bool:
        return getattr(model.config, "_attn_implementation", None) in PACKED_ATTENTION

    @staticmethod
    def forward_inputs(model, b: Batch) -> dict:
        """input_ids, and for packed trees their mask and positions, on the model's device."""
        dev = model.device
        if b.end is None:
            return {"input_ids": b.input_ids.to(dev)}
        mask = tree_mask(b.end.to(dev), model.config._attn_implementation, model.dtype)
        return {"input_ids": b.input_ids.to(dev), "attention_mask": mask, "position_ids": b.positions.to(dev)}

    # ------------------------------------------------------------------------------------------- evaluate ---
    @torch.no_grad()
    def log_likelihoods(self, model, name: str, packed: bool | None = None) -> list[np.ndarray]:
        """Per item, the summed continuation log-prob of each choice (packed rows where the model allows)."""
        task = self.tasks[name]
        first_slot = np.cumsum([0] + [len(it["choices"]) for it in task.items])
        flat = np.zeros(first_slot[-1])
        decoder, head = model.get_decoder(), model.get_output_embeddings()
        dev = model.device  # requests are built on the CPU; a GPU model gets them copied per batch
        plan = self.plan(self.packs(model) if packed is None else packed)[name]
        for b in plan:
            hidden = decoder(**self.forward_inputs(model, b), use_cache=False).last_hidden_state
            logp = torch.log_softmax(head(hidden[b.sel_rows.to(dev), b.sel_cols.to(dev)]).float(), dim=-1)
            np.add.at(flat, b.slot, logp[b.gather_sel.to(dev), b.gather_tok.to(dev)].cpu().numpy())
            self._tick(len(task.items) / len(plan))
        return [flat[first_slot[r] : first_slot[r + 1]] for r in range(len(task.items))]

    def _score_mc(self, model, name: str) -> dict[str, np.ndarray]:
        task = self.tasks[name]
        ll = self.log_likelihoods(model, name)
        labels = np.array([it["label"] for it in task.items])
        lengths = [np.array([max(1, len(ch)) for ch in it["choices"]]) for it in task.items]
        acc = np.array([np.argmax(x) == y for x, y in zip(ll, labels)], dtype=float)
        acc_norm = np.array([np.argmax(x / n) == y for x, n, y in zip(ll, lengths, labels)], dtype=float)
        prob = np.array([np.exp(x[y] - np.logaddexp.reduce(x)) for x, y in zip(ll, labels)])
        return {"acc": acc, "acc_norm": acc_norm, "prob": prob}

    @torch.no_grad()
    def _score_gen(self, model, name: str) -> dict[str, np.ndarray]:
        task, prompts = self.tasks[name], self.gen_prompts[name]
        pad, newline = self.tok.pad_token_id, "\n"
        hits = np.zeros(len(prompts))
        for i in range(0, len(prompts), self.batch_size):
            chunk = prompts[i : i + self.batch_size]
            width = max(map(len, chunk))
            ids = torch.full((len(chunk), width), pad, dtype=torch.long)
            mask = torch.zeros_like(ids)
            for j, p in enumerate(chunk):  # left padding
                ids[j, width - len(p) :] = torch.tensor(p)
                mask[j, width - len(p) :] = 1
            ids, mask, out = ids.to(model.device), mask.to(model.device), []
            for _ in range(task.max_new_tokens):
                pos = (mask.cumsum(-1) - 1).clamp_min(0)
                logits = model(input_ids=ids, attention_mask=mask, position_ids=pos).logits[:, -1]
                nxt = logits.argmax(-1, keepdim=True)
                out.append(nxt)
                ids, mask = torch.cat([ids, nxt], 1), torch.cat([mask, torch.ones_like(nxt)], 1)
            gen = torch.cat(out, 1).tolist()
            for j, toks in enumerate(gen):
                text = self.tok.decode(toks, skip_special_tokens=True)
                answer = task.items[i + j]["answer"]
                hits[i + j] = float(text.lstrip(" ").split(newline)[0].strip() == answer)
            self._tick(len(chunk))
        return {"exact_match": hits}

    def _tick(self, items: float) -> None:
        if self._progress is not None:
            self._progress.advance(items)

    def per_item(self, model) -> dict[str, dict[str, np.ndarray]]:
        """Per-item scores of every task: the raw material of scores and bootstrap noise. In a log file (no
        terminal), an evaluation that outlasts log.Progress's interval logs the items done, their rate and ETA."""
        model.eval()
        self._progress = Progress("evaluate", sum(len(t.items) for t in self.tasks.values()), "items")
        return {
            name: (self._score_mc(model, name) if name in self.mc_batches else self._score_gen(model, name))
            for name in self.tasks
        }

    def n_tokens(self) -> int:
        """Tokens processed per evaluation (for cost accounting)."""
        mc = sum(b.n_tokens for bs in self.mc_batches.values() for b in bs)
        gen = sum(len(p) for ps in self.gen_prompts.values() for p in ps)
        return mc + gen
