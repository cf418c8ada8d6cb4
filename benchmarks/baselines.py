"""What fishtune is measured against. These live here, not in fishtune/: they are references only.

* padded_loop_fisher: the paper code's Fisher, one sample at a time, each padded to the task's max length.
* plain_backward: one plain batched forward and backward over the same groups of samples as
  empirical_fisher, no per-sample work: the floor that any per-sample-gradient method pays at least.
* plain_train: the textbook training step on whole batches (forward, mean loss, backward, Adam), for
  the padding comparison: fixed-length against dynamic padding.
* run_hf_trainer: transformers.Trainer on the same model, data order, collator, batch size, optimiser
  maths and precision as fishtune.harness.train.train.
"""
from __future__ import annotations

import tempfile
from typing import Callable, Iterable

import torch
from torch.utils.data import DataLoader
from transformers import PrinterCallback, Trainer, TrainerCallback, TrainingArguments

from fishtune.batching import group_cost_tokens, length_groups, model_inputs
from fishtune.fisher import classification_loss
from fishtune.harness.train import TrainSettings, masked_adam

from timing import TickLoader


def padded_loop_fisher(model: torch.nn.Module, samples: list[dict], tick: Callable[[], None],
                       chunk: int = 32) -> dict[str, torch.Tensor]:
    """Empirical Fisher diagonal from a batch-size-1 loop; `samples` are already padded to max length
    (1 x max_length tensors). Ticks every `chunk` samples (a turn of the side-by-side timing)."""
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    fisher = {n: torch.zeros_like(p, dtype=torch.float32) for n, p in params.items()}
    device, regression = next(iter(params.values())).device, model.config.num_labels == 1
    model.eval()
    for i, sample in enumerate(samples):
        if i % chunk == 0:
            tick()
        inputs, labels = model_inputs(sample, device)
        loss = classification_loss(model(**inputs).logits, labels, regression, reduction="sum")
        for (name, _), g in zip(params.items(), torch.autograd.grad(loss, list(params.values()))):
            fisher[name] += g.float() ** 2
    tick()
    return fisher


def plain_backward(model: torch.nn.Module, batches: Iterable, tick: Callable[[], None]) -> None:
    """One forward and backward of the summed loss, for the trainable parameters' gradients, per
    group of the batch: the groups empirical_fisher computes (fishtune.batching), so the two differ
    only in the per-sample work."""
    params = [p for p in model.parameters() if p.requires_grad]
    device, regression = params[0].device, model.config.num_labels == 1
    model.eval()  # as empirical_fisher: dropout off
    cost = group_cost_tokens(model)
    for batch in TickLoader(batches, tick):
        for group in length_groups(batch, device, cost):
            inputs, labels = model_inputs(group, device)
            loss = classification_loss(model(**inputs).logits, labels, regression, reduction="sum")
            torch.autograd.grad(loss, params)


def plain_train(model: torch.nn.Module, batches: Iterable, lr: float, tick: Callable[[], None],
                limit: int | None = None) -> None:
    """The textbook step on each whole batch as the loader pads it: forward, mean loss, backward,
    Adam (fishtune.harness.train's masked Adam without masks, the same maths as fishtune.harness.train). fp32."""
    params = [p for p in model.parameters() if p.requires_grad]
    device, regression = params[0].device, model.config.num_labels == 1
    opt = masked_adam(model, {}, TrainSettings(lr=lr))
    model.train()
    for batch in TickLoader(batches, tick, limit):
        inputs, labels = model_inputs(batch, device)
        loss = classification_loss(model(**inputs).logits, labels, regression)
        loss.backward()
        opt.step()
        opt.zero_grad()


class _Ticks(TrainerCallback):
    """Step boundaries for the side-by-side timing: epoch start, then the end of every step."""

    def __init__(self, tick):
        self.tick = tick

    def on_epoch_begin(self, args, state, control, **kw):
        self.tick()

    def on_step_end(self, args, state, control, **kw):
        self.tick()


def shuffled_order(n: int, batch_size: int, seed: int) -> list[int]:
    """The sample order of fishtune.harness.data.make_loader(shuffle=True, seed=seed): a DataLoader over the
    same number of items draws from its seeded generator exactly as that loader does (its iterator
    takes a base seed from the generator before the sampler's permutation)."""
    loader = DataLoader(range(n), batch_size=batch_size, shuffle=True, generator=torch.Generator().manual_seed(seed))
    return [i for batch in loader for i in batch.tolist()]


class _FixedOrderTrainer(Trainer):
    """Draws the training samples in a given order (the one fishtune's loader uses)."""

    def __init__(self, *a, order: list[int], **kw):
        super().__init__(*a, **kw)
        self.order = order

    def _get_train_sampler(self, train_dataset=None):
        return self.order  # a list of indices is a valid sampler; accelerate leaves it as it is


class RecordingCollator:
    """A collator that keeps each batch's fingerprint (shape, token sum), to check both sides saw the
    same batches."""

    def __init__(self, collator, log: list):
        self.collator, self.log = collator, log

    def __call__(self, features):
        batch = self.collator(features)
        self.log.append((tuple(batch["input_ids"].shape), int(batch["input_ids"].sum())))
        return batch


def run_hf_trainer(model, encoded: list[dict], collator, batch_size: int, lr: float, seed: int, device: str,
                   bf16: bool, steps: int, tick: Callable[[], None]) -> None:
    """transformers.Trainer for `steps` steps. Its settings match fishtune.harness.train.train: Adam(W) with no
    weight decay, constant learning rate, no gradient clipping, same batch order; no eval, no saving,
    no logging, no length grouping."""
    with tempfile.TemporaryDirectory() as out:
        args = TrainingArguments(
            output_dir=out, per_device_train_batch_size=batch_size, learning_rate=lr, max_steps=steps,
            lr_scheduler_type="constant", weight_decay=0.0, max_grad_norm=0.0, seed=seed,
            use_cpu=device == "cpu", bf16=bf16, report_to=[], save_strategy="no", eval_strategy="no",
            logging_strategy="no", disable_tqdm=True, dataloader_pin_memory=False, group_by_length=False,
        )
        trainer = _FixedOrderTrainer(model=model, args=args, train_dataset=encoded, data_collator=collator,
                                     callbacks=[_Ticks(tick)], order=shuffled_order(len(encoded), batch_size, seed))
        trainer.remove_callback(PrinterCallback)  # it prints the final metrics although logging is off
        trainer.train()
