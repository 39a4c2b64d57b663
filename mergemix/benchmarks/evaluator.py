"""Fast evaluator: requests are tokenised and batched once; each candidate model costs only forward passes.

Multiple choice is scored like lm-eval's loglikelihood requests (sum of continuation log-probs; `acc`,
`acc_norm` by character length) plus `prob`, the softmax probability of the gold choice (a lower-noise soft
score). When every choice of an item is one token, one forward of the context scores all of them."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from mergemix.benchmarks.tasks import Task


@dataclass
class _Batch:
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    sel_rows: torch.Tensor  # (row, position) pairs where the LM head is needed
    sel_cols: torch.Tensor
    gather_sel: torch.Tensor  # for every scored token: which selected position,
    gather_tok: torch.Tensor  # which token id,
    slot: np.ndarray          # and which (item, choice) slot it adds its log-prob to


def _encode_pair(tok, context: str, continuation: str) -> tuple[list[int], list[int]]:
    # lm-eval convention: trailing context whitespace moves to the continuation, split the joint encoding.
    n_space = len(context) - len(context.rstrip(" "))
    if n_space:
        context, continuation = context[:-n_space], context[-n_space:] + continuation
    whole = tok(context + continuation, add_special_tokens=False)["input_ids"]
    ctx = tok(context, add_special_tokens=False)["input_ids"]
    return whole[:len(ctx)], whole[len(ctx):]


class Evaluator:
    def __init__(self, tokenizer, tasks: dict[str, Task], batch_size: int = 64, max_length: int = 256):
        self.tok, self.tasks, self.batch_size, self.max_length = tokenizer, tasks, batch_size, max_length
        self.mc_batches: dict[str, list[_Batch]] = {}
        self.gen_prompts: dict[str, list[list[int]]] = {}
        for name, task in tasks.items():
            if task.kind == "mc":
                self.mc_batches[name] = self._prepare_mc(task)
            else:
                self.gen_prompts[name] = [tokenizer(it["prompt"], add_special_tokens=False)["input_ids"]
                                          [-max_length:] for it in task.items]

    # -------------------------------------------------------------------------------------------- prepare ---
    def _prepare_mc(self, task: Task) -> list[_Batch]:
        first_slot = np.cumsum([0] + [len(it["choices"]) for it in task.items])
        seqs = []  # (input ids, [(position, [(token, slot), ...]), ...])
        for r, item in enumerate(task.items):
            pairs = [_encode_pair(self.tok, item["context"], c) for c in item["choices"]]
            if all(len(cont) == 1 for _, cont in pairs) and len({tuple(c) for c, _ in pairs}) == 1:
                ctx = pairs[0][0][-(self.max_length - 1):]  # one forward scores every one-token choice
                seqs.append((ctx, [(len(ctx) - 1, [(cont[0], first_slot[r] + c)
                                                   for c, (_, cont) in enumerate(pairs)])]))
                continue
            for c, (ctx, cont) in enumerate(pairs):
                inp = (ctx + cont)[-(self.max_length + 1):][:-1]
                start = len(inp) - len(cont)
                seqs.append((inp, [(start + i, [(t, first_slot[r] + c)]) for i, t in enumerate(cont)]))
        seqs.sort(key=lambda s: len(s[0]))
        batches = []
        for i in range(0, len(seqs), self.batch_size):
            chunk = seqs[i:i + self.batch_size]
            width = max(len(s[0]) for s in chunk)
            ids = torch.full((len(chunk), width), self.tok.pad_token_id, dtype=torch.long)
            mask = torch.zeros((len(chunk), width), dtype=torch.long)
            rows, cols, g_sel, g_tok, slots = [], [], [], [], []
            for j, (inp, scored) in enumerate(chunk):
                ids[j, :len(inp)] = torch.tensor(inp)
                mask[j, :len(inp)] = 1
                for pos, targets in scored:
                    for tok, slot in targets:
                        g_sel.append(len(rows))
                        g_tok.append(tok)
                        slots.append(slot)
                    rows.append(j)
                    cols.append(pos)
            batches.append(_Batch(ids, mask, torch.tensor(rows), torch.tensor(cols), torch.tensor(g_sel),
                                  torch.tensor(g_tok), np.array(slots)))
        return batches

    # ------------------------------------------------------------------------------------------- evaluate ---
    @torch.no_grad()
    def _score_mc(self, model, name: str) -> dict[str, np.ndarray]:
        task = self.tasks[name]
        first_slot = np.cumsum([0] + [len(it["choices"]) for it in task.items])
        flat = np.zeros(first_slot[-1])
        decoder, head = model.get_decoder(), model.get_output_embeddings()
        dev = model.device  # requests are built on the CPU; a GPU model gets them copied per batch
        for b in self.mc_batches[name]:
            hidden = decoder(input_ids=b.input_ids.to(dev),
                             attention_mask=b.attention_mask.to(dev)).last_hidden_state
            logp = torch.log_softmax(head(hidden[b.sel_rows.to(dev), b.sel_cols.to(dev)]).float(), dim=-1)
            np.add.at(flat, b.slot, logp[b.gather_sel.to(dev), b.gather_tok.to(dev)].cpu().numpy())
        ll = [flat[first_slot[r]:first_slot[r + 1]] for r in range(len(task.items))]
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
            chunk = prompts[i:i + self.batch_size]
            width = max(map(len, chunk))
            ids = torch.full((len(chunk), width), pad, dtype=torch.long)
            mask = torch.zeros_like(ids)
            for j, p in enumerate(chunk):  # left padding
                ids[j, width - len(p):] = torch.tensor(p)
                mask[j, width - len(p):] = 1
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
        return {"exact_match": hits}

    def per_item(self, model) -> dict[str, dict[str, np.ndarray]]:
        """Per-item scores of every task: the raw material of scores and bootstrap noise."""
        model.eval()
        return {name: (self._score_mc(model, name) if name in self.mc_batches else self._score_gen(model, name))
                for name in self.tasks}

    def n_tokens(self) -> int:
        """Tokens processed per evaluation (for cost accounting)."""
        mc = sum(int(b.attention_mask.sum()) for bs in self.mc_batches.values() for b in bs)
        gen = sum(len(p) for ps in self.gen_prompts.values() for p in ps)
        return mc + gen
