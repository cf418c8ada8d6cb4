"""Empirical Fisher diagonal: F_i = sum over samples n of (d loss(x_n, y_n) / d theta_i)^2.

Each sample's gradient is squared on its own (the square of a batch-mean gradient is a different,
wrong quantity). Two exact ways to get per-sample gradients:

* Linear hooks (fast path): when every trainable parameter is the weight or bias of an nn.Linear
  (LoRA's A and B, the classification head, ...), one batched forward/backward gives them all: for
  y = x W^T + b the gradient of sample n is sum_t g[n,t] x[n,t]^T and sum_t g[n,t], where g is the
  gradient of the summed loss with respect to y. Padded positions get zero gradient, so padding
  does not change the result; on CPU a batch is split into groups of similar length first, so
  that little padding is computed (fishtune.batching).
* Per-sample loop (any parameter: DoRA magnitudes, prefix embeddings, IA3 vectors, gates): one
  forward/backward per sample with its padding trimmed.
"""
from __future__ import annotations

from collections import defaultdict
from typing import Iterable, Iterator, Mapping

import torch
from torch import nn

from .batching import group_cost_tokens, length_groups, model_inputs


def classification_loss(logits: torch.Tensor, labels: torch.Tensor, regression: bool,
                        reduction: str = "mean") -> torch.Tensor:
    """Cross-entropy, or mean squared error for a one-output regression head (STS-B)."""
    logits = logits.float()
    if regression:
        return torch.nn.functional.mse_loss(logits.squeeze(-1), labels.float(), reduction=reduction)
    return torch.nn.functional.cross_entropy(logits, labels.long(), reduction=reduction)


def _linear_owners(model: nn.Module, params: Mapping[str, nn.Parameter]) -> dict[nn.Linear, list[str]]:
    """The nn.Linear modules that own trainable parameters, mapped to their attribute names."""
    wanted = {id(p) for p in params.values()}
    owners: dict[nn.Linear, list[str]] = {}
    for module in model.modules():
        if isinstance(module, nn.Linear):
            attrs = [a for a in ("weight", "bias") if getattr(module, a) is not None and id(getattr(module, a)) in wanted]
            if attrs:
                owners[module] = attrs
    return owners


def _take_samples(batches: Iterable[Mapping[str, torch.Tensor]], num_samples: int | None) -> Iterator[dict]:
    """Yield batches until `num_samples` samples are consumed (the last batch cut to fit)."""
    seen = 0
    for batch in batches:
        n = len(batch["labels"])
        if num_samples is not None:
            if seen >= num_samples:
                return
            if seen + n > num_samples:
                n = num_samples - seen
                batch = {k: v[:n] for k, v in batch.items()}
        seen += n
        yield dict(batch)


@torch.no_grad()
def _accumulate_squares(fisher: dict[str, torch.Tensor], name: str, per_sample: torch.Tensor) -> None:
    fisher[name] += per_sample.float().pow(2).sum(0)


def _fisher_linear_hooks(model, params, owners, batches, regression) -> dict[str, torch.Tensor]:
    names = {id(p): n for n, p in params.items()}
    fisher = {n: torch.zeros_like(p, dtype=torch.float32) for n, p in params.items()}
    per_sample: dict[str, torch.Tensor] = {}  # summed over every call of a module within one batch

    def add(name: str, grad: torch.Tensor) -> None:
        per_sample[name] = per_sample[name] + grad if name in per_sample else grad

    def forward_hook(module, inputs, output):
        x = inputs[0].detach()

        def on_output_grad(g):
            b = g.shape[0]
            g3, x3 = g.detach().reshape(b, -1, g.shape[-1]).float(), x.reshape(b, -1, x.shape[-1]).float()
            if "weight" in owners[module]:
                add(names[id(module.weight)], torch.bmm(g3.transpose(1, 2), x3))
            if "bias" in owners[module]:
                add(names[id(module.bias)], g3.sum(1))
        output.register_hook(on_output_grad)

    handles = [m.register_forward_hook(forward_hook) for m in owners]
    device = next(iter(params.values())).device
    try:
        # On CPU each batch runs as groups of similar length cut to their own longest sample: the
        # per-sample gradients are the same, the padding computed is less (fishtune.batching).
        cost = group_cost_tokens(model)
        for group in (g for batch in batches for g in length_groups(batch, device, cost)):
            inputs, labels = model_inputs(group, device)
            loss = classification_loss(model(**inputs).logits, labels, regression, reduction="sum")
            # autograd.grad fires the hooks without touching any .grad the caller may hold.
            torch.autograd.grad(loss, list(params.values()), allow_unused=True)
            for name, g in per_sample.items():
                _accumulate_squares(fisher, name, g)
            per_sample.clear()
    finally:
        for h in handles:
            h.remove()
    return fisher


def _fisher_loop(model, params, batches, regression) -> dict[str, torch.Tensor]:
    fisher = {n: torch.zeros_like(p, dtype=torch.float32) for n, p in params.items()}
    device = next(iter(params.values())).device
    for batch in batches:
        inputs, labels = model_inputs(batch, device)
        mask = inputs.get("attention_mask")
        keep = mask.bool() if mask is not None else None
        for i in range(len(labels)):
            # Trim this sample's padding: the result is the same, the work is smaller.
            one = {k: (v[i:i + 1, keep[i]] if keep is not None and v.shape == keep.shape else v[i:i + 1])
                   for k, v in inputs.items()}
            loss = classification_loss(model(**one).logits, labels[i:i + 1], regression, reduction="sum")
            grads = torch.autograd.grad(loss, list(params.values()), allow_unused=True)
            for (name, _), g in zip(params.items(), grads):
                if g is not None:
                    _accumulate_squares(fisher, name, g.unsqueeze(0))
    return fisher


def empirical_fisher(model: nn.Module, batches: Iterable[Mapping[str, torch.Tensor]],
                     num_samples: int | None = None, method: str = "auto") -> dict[str, torch.Tensor]:
    """Empirical Fisher diagonal of every parameter with requires_grad, shaped like it (fp32).

    `batches` yields tokenised batch dicts with `labels` (as the data loader gives them); at most
    `num_samples` samples are used (all when None). True labels, dropout off (eval mode for the
    duration; every module's training flag is then put back as it was, the model's parameters, their
    requires_grad and .grad are not touched, and no hook stays behind). `method`: auto (Linear hooks
    when every trainable parameter lives in an nn.Linear, else the per-sample loop), hooks, or loop.
    """
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    if not params:
        raise ValueError("the model has no trainable parameters to score")
    regression = getattr(getattr(model, "config", None), "num_labels", None) == 1
    owners = _linear_owners(model, params)
    covered = sum(len(a) for a in owners.values()) == len(params)
    if method == "auto":
        method = "hooks" if covered else "loop"
    if method == "hooks" and not covered:
        raise ValueError("method='hooks' needs every trainable parameter to be an nn.Linear weight or bias")
    if method not in ("hooks", "loop"):
        raise ValueError(f"unknown Fisher method {method!r}; choose one of: auto, hooks, loop")
    # Every module's own flag, not only the top one's: a PeftModel reports training=True while its inner
    # modules may be in eval, and model.train(True) would switch all their dropouts on.
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        samples = _take_samples(batches, num_samples)
        if method == "hooks":
            return _fisher_linear_hooks(model, params, owners, samples, regression)
        return _fisher_loop(model, params, samples, regression)
    finally:
        for m, training in modes:
            m.training = training
