"""FISH masks in transformers.Trainer: a callback that keeps masked-out entries fixed.

    trainer = Trainer(model, args, ..., callbacks=[FishMaskCallback(masks)])

The Trainer makes its own optimizer (AdamW by default, with weight decay when args.weight_decay is
set) and clips gradients between the last backward pass and the step, with no event in between. So
the callback masks gradients as autograd produces them (a hook on every guarded parameter, for the
time of training): accumulated micro-batches and the clipping norm see only the chosen entries.
Around each optimizer step it writes the masked-out entries back, as MaskedOptimizer does (the same
code, fishtune.optim), which undoes weight decay and anything else the optimizer did to them.
"""
from __future__ import annotations

from typing import Mapping

import torch
from transformers import TrainerCallback

from .optim import _Guard


class FishMaskCallback(TrainerCallback):
    """Trains only the entries `masks` choose (bool masks by parameter name, as fish_masks returns
    them) with transformers.Trainer and whatever optimizer it makes; masked-out entries stay bit
    for bit as they were. Call apply_masks(model, masks) before making the Trainer, so that tensors
    with no chosen entry stay out of the optimizer."""

    def __init__(self, masks: Mapping[str, torch.Tensor]):
        self.masks = dict(masks)
        self._guard: _Guard | None = None
        self._hooks: list = []
        self._saved: list[torch.Tensor] = []

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        named = dict(model.named_parameters())
        if unknown := sorted(set(self.masks) - set(named)):
            raise KeyError(f"mask {unknown[0]!r} names no parameter of the model")
        # The model is on its device by now: masks go there once.
        self._guard = _Guard(((n, p) for n, p in named.items() if p.requires_grad), self.masks)
        self._hooks = [p.register_hook(lambda g, m=m: g * m)
                       for p, m in zip(self._guard.params, self._guard.float_keep)]

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        self._saved = self._guard.snapshot()

    def on_optimizer_step(self, args, state, control, **kwargs):
        self._guard.restore(self._saved)
        self._saved = []

    def on_train_end(self, args, state, control, **kwargs):
        for h in self._hooks:
            h.remove()
        self._hooks, self._guard = [], None
