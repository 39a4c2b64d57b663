"""Log-likelihood requests packed into few forward tokens.

A request is the input of one (context, continuation) pair, lm-eval style, with the positions whose next-token
log-probs it needs. All requests of an item go into one row as a prefix tree: tokens they share (the context, a
common start of the continuations) are computed once, and every token attends only to its ancestors, at its own
depth as position. The tree is laid out depth-first, so a token's descendants follow it contiguously: token j is
visible to token i iff j <= i < end[j]. A row that is a single path is plain causal attention."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

# (input token ids, [(position in the input, target token id, score slot), ...])
Request = tuple[list[int], list[tuple[int, int, int]]]
BATCH_OVERHEAD_TOKENS = (
    64  # about a forward call's fixed cost on a CPU, in padded tokens: traded against padding
)


@dataclass
class Row:
    tokens: list[int]
    positions: list[int]  # depth in the tree
    end: list[int]  # one past the last descendant
    targets: list[tuple[int, int, int]]  # (index in the row, target token id, score slot)

    @property
    def is_path(self) -> bool:
        return all(e == len(self.tokens) for e in self.end)


def prefix_tree(requests: list[Request]) -> Row:
    """One row holding every request's input once per distinct prefix."""
    children: list[dict[int, int]] = [{}]  # node 0: the virtual root; node n > 0 holds token[n]
    token, targets = [-1], []
    for inp, scored in requests:
        node, path = 0, []
        for t in inp:
            if t not in children[node]:
                children[node][t] = len(token)
                children.append({})
                token.append(t)
            node = children[node][t]
            path.append(node)
        targets += [(path[pos], t, slot) for pos, t, slot in scored]
    order, depth, stack = [], {}, [(n, 0) for n in reversed(children[0].values())]
    while stack:  # depth-first, children in insertion order
        n, d = stack.pop()
        order.append(n)
        depth[n] = d
        stack += [(c, d + 1) for c in reversed(children[n].values())]
    index = {n: i for i, n in enumerate(order)}
    end = [0] * len(order)
    for i in reversed(range(len(order))):
        kids = children[order[i]]
        end[i] = end[index[next(reversed(kids.values()))]] if kids else i + 1
    return Row(
        [token[n] for n in order],
        [depth[n] for n in order],
        end,
        [(index[n], t, slot) for n, t, slot in targets],
    )


@dataclass
class Batch:
    input_ids: torch.Tensor
    positions: torch.Tensor
    end: torch.Tensor | None  # None when every row is a path: right padding under plain causal attention
    n_tokens: int  # real (unpadded) tokens
    sel_rows: torch.Tensor  # (row, index) pairs where the LM head is needed
    sel_cols: torch.Tensor
    gather_sel: torch.Tensor  # for every scored token: which selected position,
    gather_tok: torch.Tensor  # which token id,
    slot: np.ndarray  # and which score slot it adds its log-prob to


def _boundaries(lengths: list[int], batch_size: int) -> list[int]:
    """Batch ends over rows sorted by length that minimise padded tokens plus a fixed cost per batch."""
    n = len(lengths)
    best, cut = [0.0] + [float("inf")] * n, [0] * (n + 1)
    for i in range(1, n + 1):
        for j in range(max(0, i - batch_size), i):
            cost = best[j] + (i - j) * lengths[i - 1] + BATCH_OVERHEAD_TOKENS
            if cost < best[i]:
                best[i], cut[i] = cost, j
    ends, i = [], n
    while i:
        ends.append(i)
        i = cut[i]
    return ends[::-1]


def batches(rows: list[Row], pad_id: int, batch_size: int) -> list[Batch]:
    rows = sorted((r for r in rows if r.tokens), key=lambda r: len(r.tokens))
    out, start = [], 0
    for stop in _boundaries([len(r.tokens) for r in rows], batch_size):
        chunk, start = rows[start:stop], stop
        width = len(chunk[-1].tokens)
        ids = torch.full((len(chunk), width), pad_id, dtype=torch.long)
        pos = torch.arange(width).repeat(len(chunk), 1)
        end = torch.arange(1, width + 1).repeat(len(chunk), 1)  # padding sees only itself
        sel, g_sel, g_tok, slots = {}, [], [], []
        for j, row in enumerate(chunk):
            n = len(row.tokens)
            ids[j, :n], pos[j, :n], end[j, :n] = (
                torch.tensor(x) for x in (row.tokens, row.positions, row.end)
            )
            for i, tok, slot in row.targets:
                g_sel.append(sel.setdefault((j, i), len(sel)))
                g_tok.append(tok)
                slots.append(slot)
        rc = torch.tensor(list(sel), dtype=torch.long).reshape(-1, 2)
        out.append(
            Batch(
                ids,
                pos,
                None if all(r.is_path for r in chunk) else end,
                sum(len(r.tokens) for r in chunk),
                rc[:, 0],
                rc[:, 1],
                torch.tensor(g_sel),
                torch.tensor(g_tok),
                np.array(slots),
            )
        )
    return out


def tree_mask(end: torch.Tensor, attn_implementation: str, dtype: torch.dtype) -> torch.Tensor:
    """The 4D mask (batch, 1, query, key) of packed rows: boolean for sdpa, additive for eager attention."""
    i = torch.arange(end.shape[1], device=end.device)
    visible = ((i[:, None] >= i[None, :]) & (i[None, :, None] < end[:, None, :]))[:, None]
    if attn_implementation == "sdpa":
        return visible
    return torch.zeros(visible.shape, dtype=dtype, device=end.device).masked_fill(
        ~visible, torch.finfo(dtype).min
    )
