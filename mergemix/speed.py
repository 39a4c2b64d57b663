"""Training speed settings (trainer.chunked_loss, trainer.compile, trainer.fused_adamw): each computes what the
default computes, up to float rounding, so none is part of a training stage's cache key (stages/keys.py).

- Chunked loss: the causal-LM cross-entropy from the final hidden states and the LM head's weight, `chunk` tokens
  at a time, with its gradient computed in the same pass: the fp32 logits of a whole batch (8 x 2048 x 128k = 8 GiB
  for llama_1b) never exist, only one chunk's.
- Compile: `torch.compile` of the decoder on CUDA; on a CPU, or when compiling fails, training runs eagerly after
  one warning.
- Fused AdamW: one kernel for all parameters on CUDA (`fused=True`); elsewhere torch's default."""

from __future__ import annotations

import torch

from mergemix.log import log

IGNORE = -100  # label of a position without a target (transformers' ignore_index)


# ------------------------------------------------------------------------------------------- chunked loss ---
class _ChunkedCrossEntropy(torch.autograd.Function):
    """Mean cross-entropy of softmax(hidden @ weight.T) against `targets` (IGNORE skipped), chunk by chunk; the
    gradients w.r.t. hidden and weight are accumulated in the forward pass, so nothing per chunk is kept."""

    @staticmethod
    def forward(ctx, hidden, weight, targets, chunk):
        n = (targets != IGNORE).sum().clamp(min=1)
        loss = torch.zeros((), dtype=torch.float32, device=hidden.device)
        grad_h = torch.zeros_like(hidden) if ctx.needs_input_grad[0] else None
        grad_w = torch.zeros_like(weight, dtype=torch.float32) if ctx.needs_input_grad[1] else None
        for s in range(0, hidden.shape[0], chunk):
            h, y = hidden[s : s + chunk], targets[s : s + chunk]
            logits = (h @ weight.t()).float()  # under autocast: the matmul in bf16, as the LM head's
            lse = logits.logsumexp(-1)
            valid = y != IGNORE
            y = y.clamp(min=0)
            loss += ((lse - logits.gather(1, y[:, None])[:, 0]) * valid).sum()
            if grad_h is None and grad_w is None:
                continue
            g = logits.sub_(lse[:, None]).exp_()  # softmax, in place of the logits
            g[torch.arange(len(y), device=y.device), y] -= 1
            g *= (valid / n)[:, None]
            if grad_h is not None:
                grad_h[s : s + chunk] = (g.to(h.dtype) @ weight.to(h.dtype)).to(grad_h.dtype)
            if grad_w is not None:
                grad_w += g.t() @ h.float()
        ctx.save_for_backward(grad_h, grad_w.to(weight.dtype) if grad_w is not None else None)
        return loss / n

    @staticmethod
    def backward(ctx, grad):
        grad_h, grad_w = ctx.saved_tensors
        return (
            None if grad_h is None else grad_h * grad,
            None if grad_w is None else grad_w * grad,
            None,
            None,
        )


def chunked_lm_loss(hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor, chunk: int = 4096):
    """transformers' causal-LM loss (token t predicts labels[t + 1], IGNORE skipped, mean over targets) from the
    final hidden states (B, T, d) and the LM head's weight (V, d), `chunk` tokens at a time."""
    targets = torch.nn.functional.pad(labels, (0, 1), value=IGNORE)[..., 1:]
    return _ChunkedCrossEntropy.apply(
        hidden.reshape(-1, hidden.shape[-1]), weight, targets.reshape(-1), int(chunk)
    )


def lm_parts(model):
    """(decoder, LM head) of a transformers causal LM whose logits are exactly lm_head(decoder output), or None
    (a PEFT wrapper, a head with a bias, soft-capped or scaled logits): those keep the model's own loss."""
    head = getattr(model, "lm_head", None)
    body = getattr(model, "model", None)
    cfg = getattr(model, "config", None)
    if (
        not isinstance(head, torch.nn.Linear)
        or head.bias is not None
        or not isinstance(body, torch.nn.Module)
    ):
        return None
    if any(getattr(cfg, k, None) not in (None, 1.0) for k in ("final_logit_softcapping", "logit_scale")):
        return None
    return body, head


# ---------------------------------------------------------------------------------------------- compile ---
class Compiled:
    """`module`'s forward through torch.compile where it works: on CUDA only (a CPU compile takes minutes for
    little); a compile that fails on its first call warns once and the module runs eagerly from then on. The
    module itself is unchanged (its state dict keeps its keys)."""

    def __init__(self, module: torch.nn.Module, enabled: bool, on_cuda: bool):
        self.module, self.fn, self.tried = module, None, False
        if enabled and not on_cuda:
            log.warning("trainer.compile needs a CUDA device: training runs eagerly")
        elif enabled:
            self.fn = torch.compile(module)

    def __call__(self, *args, **kwargs):
        if self.fn is None:
            return self.module(*args, **kwargs)
        if self.tried:
            return self.fn(*args, **kwargs)
        try:
            out = self.fn(*args, **kwargs)
        except Exception as exc:  # noqa: BLE001 -- any compiler failure: run eagerly
            log.warning(
                f"trainer.compile failed ({type(exc).__name__}: {str(exc).splitlines()[0][:200]}): "
                "training runs eagerly"
            )
            self.fn = None
            return self.module(*args, **kwargs)
        self.tried = True
        return out


# ---------------------------------------------------------------------------------------------- optimizer ---
def adamw_options(params, fused: bool) -> dict:
    """AdamW's implementation: fused (one kernel) when asked and every parameter is a CUDA floating tensor;
    otherwise torch's default, which keeps CPU training as it was."""
    params = list(params)
    if fused and params and all(p.is_cuda and p.is_floating_point() for p in params):
        return {"fused": True}
    return {}
