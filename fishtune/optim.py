"""Masked training with any optimizer: masked-out entries never change, bit for bit.

Zeroing their gradients is not enough: decoupled weight decay (AdamW) shrinks every entry it is
given, L2 decay (SGD, Adam) turns the entry itself into a gradient, and momentum or moments from
before the mask keep moving it. So both things happen around every optimizer step: the gradients
of masked-out entries are zeroed first (so that moments, norms and trust ratios see only the chosen
entries), and after the step the masked-out entries are written back from a copy taken just before
it, whatever the optimizer did to them. The copy covers only the parameters that a mask leaves
entries out of and the optimizer holds: a PEFT method's few tensors, never the frozen base model.

With torch.optim.Adam(W) and no weight decay the write-back changes nothing: a zero gradient keeps
Adam's moments at zero and its update at 0 / (sqrt(0) + eps) = 0. fishtune's own loop is that case.
"""
from __future__ import annotations

from typing import Callable, Iterable, Mapping

import torch
from torch import nn


class _Guard:
    """The parameters that some mask leaves entries out of, with their masks on their devices."""

    def __init__(self, params: Iterable[tuple[str, nn.Parameter]], masks: Mapping[str, torch.Tensor]):
        self.params, self.keep, self.float_keep = [], [], []
        for name, p in params:
            mask = masks.get(name)
            if mask is None or bool(mask.all()):
                continue  # fully chosen: nothing to guard
            if mask.shape != p.shape:
                raise ValueError(f"mask {name!r} has shape {tuple(mask.shape)}, the parameter {tuple(p.shape)}")
            keep = mask.to(p.device, torch.bool)
            self.params.append(p)
            self.keep.append(keep)
            self.float_keep.append(keep.to(p.dtype))

    @torch.no_grad()
    def mask_grads(self) -> None:
        with_grad = [(p.grad, m) for p, m in zip(self.params, self.float_keep) if p.grad is not None]
        if with_grad:  # x * 1 is x exactly: the chosen entries' gradients stay as they were
            torch._foreach_mul_([g for g, _ in with_grad], [m for _, m in with_grad])

    @torch.no_grad()
    def snapshot(self) -> list[torch.Tensor]:
        return [p.detach().clone() for p in self.params]

    @torch.no_grad()
    def restore(self, saved: list[torch.Tensor]) -> None:
        for p, keep, before in zip(self.params, self.keep, saved):
            p.copy_(torch.where(keep, p, before))


class MaskedOptimizer(torch.optim.Optimizer):
    """Wraps any torch.optim.Optimizer so that the entries `masks` leave out never change.

        opt = MaskedOptimizer(torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01), model, masks)

    `masks` maps parameter names (model.named_parameters()) to bool masks, True = trains, as
    fish_masks returns them; parameters without a mask train in full. Each step zeroes the masked-out
    gradients, runs the wrapped optimizer, then writes the masked-out entries back (module
    docstring), so decoupled weight decay, L2 decay and momentum are all covered.

    `step`, `zero_grad`, `state_dict`, `load_state_dict`, `param_groups`, `state` and
    `add_param_group` are the wrapped optimizer's, so LR schedulers take a MaskedOptimizer as they
    take any optimizer; the wrapped one is `.optimizer`. Gradient clipping between backward() and
    step() sees the masked-out gradients too: call `mask_grads()` before clipping to leave them out.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, model: nn.Module, masks: Mapping[str, torch.Tensor]):
        # No Optimizer.__init__: the wrapped optimizer holds the parameter groups and the state.
        self.optimizer = optimizer
        named = dict(model.named_parameters())
        if unknown := sorted(set(masks) - set(named)):
            raise KeyError(f"mask {unknown[0]!r} names no parameter of the model")
        held = {id(p) for group in optimizer.param_groups for p in group["params"]}
        self._guard = _Guard(((n, p) for n, p in named.items() if id(p) in held), masks)

    # The wrapped optimizer's, so that schedulers and checkpoints see one optimizer.
    @property
    def param_groups(self) -> list[dict]:
        return self.optimizer.param_groups

    @property
    def state(self):
        return self.optimizer.state

    @property
    def defaults(self) -> dict:
        return self.optimizer.defaults

    def __getattr__(self, name: str):
        if name == "optimizer":  # not set yet (unpickling): no recursion
            raise AttributeError(name)
        return getattr(self.optimizer, name)

    def __repr__(self) -> str:
        return f"MaskedOptimizer({self.optimizer!r})"

    def mask_grads(self) -> None:
        """Zero the gradients of masked-out entries (step() does it too)."""
        self._guard.mask_grads()

    def step(self, closure: Callable[[], float] | None = None):
        if closure is not None:  # gradients are made inside the wrapped step: mask them there
            def masked_closure(closure=closure):
                loss = closure()
                self._guard.mask_grads()
                return loss
        else:
            self._guard.mask_grads()
            masked_closure = None
        saved = self._guard.snapshot()
        loss = self.optimizer.step(masked_closure) if masked_closure is not None else self.optimizer.step()
        self._guard.restore(saved)
        return loss

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.optimizer.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict:
        return self.optimizer.state_dict()

    def load_state_dict(self, state_dict: dict) -> None:
        self.optimizer.load_state_dict(state_dict)

    def add_param_group(self, param_group: dict) -> None:
        self.optimizer.add_param_group(param_group)
