"""Masked Adam training with per-epoch dev evaluation, early stopping and epoch checkpoints.

Masking is the library's MaskedOptimizer around torch.optim.Adam (AdamW when there is weight decay;
fishtune.optim): the gradient of every masked-out entry is set to exactly zero before each step, so
Adam's moments of such an entry stay zero and its update is 0 / (sqrt(0) + eps) = 0; weight decay is
decoupled, and the masked-out entries are written back after each step, so decay never touches them
either. Precision: bf16 autocast for forward passes where choose_precision says so (parameters,
gradients and the optimiser's state stay fp32).
"""
from __future__ import annotations

import contextlib
import math
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from ..batching import group_cost_tokens, length_groups, model_inputs
from ..fisher import classification_loss
from .methods import METHODS
from .metrics import glue_metrics
from ..optim import MaskedOptimizer
from .results import Diverged, check_readable, save_torch_atomic, set_aside
from .tasks import TaskSpec


@dataclass
class TrainSettings:
    lr: float = 5e-5
    weight_decay: float = 0.0
    max_epochs: int = 400
    patience: int = 10            # epochs without a better dev score before stopping
    device: str = "cpu"
    bf16: bool = False            # autocast to bf16 (choose_precision); parameters and optimiser stay fp32
    progress: bool = True
    head_lr: float | None = None  # the head's own rate (a parameter group); None: lr, as in the paper


@dataclass
class TrainResult:
    history: list[dict] = field(default_factory=list)
    best: dict = field(default_factory=dict)  # epoch, score, metrics, dev_loss of the best epoch
    stop_reason: str = ""
    train_seconds: float = 0.0
    samples_seen: int = 0
    tokens_seen: int = 0                  # training tokens, padding left out
    # per epoch: epoch, train_seconds, samples_per_second, tokens_per_second (apart from `history`, which
    # holds only what the seed determines, so that two runs of one config have equal histories)
    throughput: list[dict] = field(default_factory=list)
    best_predictions: list | None = None  # dev predictions of the best epoch, by example `idx`
    resumed_from_epoch: int | None = None  # the checkpoint's epoch this training continued after


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AVX512-BF16 or AMX), as torch's own checks say; without
    it torch emulates bf16, which is slower than fp32."""
    checks = [getattr(torch.cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    return any(check() for check in checks if check is not None)


def cpu_capability() -> dict:
    """What this CPU offers for bf16, as torch sees it: torch's kernel capability (AVX2, AVX512, ...),
    the AVX512-BF16 and AMX flags, whether bf16 is native, and the CPU's model name. Figures measured on
    two machines compare only when this matches."""
    flags = {name: bool(getattr(torch.cpu, f"_is_{name}_supported", lambda: False)())
             for name in ("avx512_bf16", "amx_tile")}
    model = ""
    with contextlib.suppress(OSError):
        model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                      if line.startswith("model name")), "")
    return {"capability": torch.backends.cpu.get_cpu_capability(), **flags,
            "native_bf16": cpu_has_native_bf16(), "model": model}


class EmulatedBf16Warning(UserWarning):
    """bf16 was forced on a CPU that emulates it: training runs, but slower than in fp32."""


def bf16_slowdown(model: nn.Module, batch: Mapping[str, torch.Tensor], task: TaskSpec, device: str = "cpu",
                  steps: int = 2) -> dict:
    """Seconds of one forward and backward pass on `batch` in fp32 and under bf16 autocast (median of
    `steps` each after one warm-up each, in turns) and their ratio `slowdown` (bf16 / fp32). No optimiser
    step: parameters, gradients and every RNG are as they were before."""
    grads = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
    seconds: dict[str, list[float]] = {"fp32": [], "bf16": []}
    with torch.random.fork_rng(devices=[]):
        for _ in range(steps + 1):
            for name in seconds:
                settings = TrainSettings(device=device, bf16=name == "bf16", progress=False)
                t0 = time.perf_counter()
                _forward_backward(model, batch, task, settings)
                seconds[name].append(time.perf_counter() - t0)
                model.zero_grad(set_to_none=True)
    for n, p in model.named_parameters():
        if n in grads:
            p.grad = grads[n]
    median = {name: float(np.median(v[1:])) for name, v in seconds.items()}
    return {"fp32_seconds": median["fp32"], "bf16_seconds": median["bf16"],
            "slowdown": median["bf16"] / median["fp32"]}


_WARNED_EMULATED = False


def warn_if_emulated_bf16(model: nn.Module, batch: Mapping[str, torch.Tensor], task: TaskSpec,
                          settings: TrainSettings) -> None:
    """Once per process: warn, with the slowdown a few steps measure, when bf16 autocast was forced on
    a CPU without native bf16 (`auto` never chooses it there)."""
    global _WARNED_EMULATED
    if _WARNED_EMULATED or not settings.bf16 or torch.device(settings.device).type != "cpu" or cpu_has_native_bf16():
        return
    _WARNED_EMULATED = True
    probe = bf16_slowdown(model, batch, task, settings.device)
    warnings.warn(EmulatedBf16Warning(
        f"bf16 autocast on a CPU without native bf16 ({cpu_capability()['capability']}): emulated, a step takes "
        f"{probe['slowdown']:.1f}x as long as in fp32 ({probe['bf16_seconds']:.2f} s against "
        f"{probe['fp32_seconds']:.2f} s); train.precision=fp32 (or auto) avoids it"), stacklevel=2)


def resolve_device(device: str) -> str:
    """`train.device`, with `auto` made cuda where a GPU is visible, else cpu."""
    return ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device


def resolve_precision(train_cfg: dict) -> str:
    """Fix `train.precision` to what this machine trains in (`auto` becomes fp32 or bf16) and return why:
    the precision is part of a run's identity, so a run that trains in bf16 never shares a result file
    (or a cell) with one that trains in fp32."""
    bf16, why = choose_precision(train_cfg["precision"], resolve_device(train_cfg["device"]))
    train_cfg["precision"] = "bf16" if bf16 else "fp32"
    return why


def choose_precision(precision: str, device: str) -> tuple[bool, str]:
    """(bf16, why) for train.precision on `device`: `auto` autocasts to bf16 on a CUDA GPU that supports
    it and on a CPU with native bf16, fp32 elsewhere; `bf16` and `fp32` force it."""
    if precision != "auto":
        return precision == "bf16", f"train.precision={precision}"
    if torch.device(device).type == "cuda":
        if torch.cuda.is_bf16_supported():
            return True, "auto: CUDA GPU with bf16"
        return False, "auto: CUDA GPU without bf16"
    if cpu_has_native_bf16():
        return True, "auto: CPU with native bf16 (AVX512-BF16 or AMX)"
    return False, "auto: CPU without native bf16 (emulated bf16 is slower than fp32)"


def masked_adam(model: nn.Module, masks: Mapping[str, torch.Tensor], settings: TrainSettings) -> MaskedOptimizer:
    """Adam over the trainable parameters, with decoupled weight decay (AdamW) if any, masked: the
    entries `masks` leave out (absent = fully trainable) never change (fishtune.optim)."""
    params = [p for p in model.parameters() if p.requires_grad]
    fused = all(p.is_cuda for p in params)
    if settings.head_lr is not None:
        # The harness's masks cover the method's tensors only: the trainable rest is the head.
        head = {id(p) for n, p in model.named_parameters() if p.requires_grad and n not in masks}
        params = [{"params": [p for p in params if id(p) not in head]},
                  {"params": [p for p in params if id(p) in head], "lr": settings.head_lr}]
    # Without decay, plain Adam: the very optimizer (and CUDA kernel) of every earlier fishtune run.
    adam_class = torch.optim.AdamW if settings.weight_decay else torch.optim.Adam
    adam = adam_class(params, lr=settings.lr, weight_decay=settings.weight_decay, fused=fused or None,
                      foreach=None if fused else True)
    return MaskedOptimizer(adam, model, masks)


@contextlib.contextmanager
def frozen_linears_in_bf16(model: nn.Module, enabled: bool):
    """Under bf16 autocast, hold the frozen nn.Linear weights and biases as bf16 while training runs,
    then put the fp32 tensors back.

    Autocast casts a linear layer's fp32 weight to bf16 at every call and caches only the casts of
    weights that require grad, so a PEFT model's frozen base weights would be cast again at every forward
    pass (on CPU about a sixth of a MiniLM step). Held as bf16, autocast finds them cast already: the
    matrix products see the same bf16 values, so training is bit for bit what it was, only cheaper.
    Left alone: a layer that is not exactly nn.Linear (adapters' LoRA layers subclass it), and the
    base layer of a method's layer that reads its weight in fp32 (MethodSpec.fp32_base: DoRA's weight
    norm)."""
    if not enabled:
        yield
        return
    fp32 = {attr for spec in METHODS.values() for attr in spec.fp32_base}  # MethodSpec.fp32_base (DoRA)
    fp32_bases = {id(m.get_base_layer()) for m in model.modules() if any(len(getattr(m, a, ())) for a in fp32)}
    saved = []
    for m in model.modules():
        if type(m) is nn.Linear and id(m) not in fp32_bases:
            for name in ("weight", "bias"):
                p = getattr(m, name)
                if p is not None and not p.requires_grad and p.dtype == torch.float32:
                    saved.append((p, p.data))
                    p.data = p.data.to(torch.bfloat16)
    try:
        yield
    finally:
        for p, fp32 in saved:
            p.data = fp32


def _autocast(settings: TrainSettings):
    if settings.bf16:
        return torch.autocast(device_type=torch.device(settings.device).type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


@torch.no_grad()
def evaluate(model: nn.Module, loader, task: TaskSpec, settings: TrainSettings) -> dict:
    """Dev loss (mean over examples) and the task's metrics x100 (`score` is the table number).

    When the examples carry an `idx` (0..n-1), `predictions` lists the predicted class (or score)
    per example in `idx` order, for paired comparisons of runs on the same dev set."""
    model.eval()
    preds, labels, order, loss_sum = [], [], [], 0.0
    # Groups of similar length (CPU): the same predictions, in another order within a batch, with
    # their labels taken along, so every metric is unchanged.
    cost = group_cost_tokens(model)
    for batch in (g for b in loader for g in length_groups(b, settings.device, cost)):
        if "idx" in batch:
            order.append(batch["idx"].numpy())
        inputs, y = model_inputs(batch, settings.device)
        with _autocast(settings):
            logits = model(**inputs).logits
        loss_sum += classification_loss(logits, y, task.is_regression, reduction="sum").item()
        logits = logits.float()
        preds.append((logits.squeeze(-1) if task.is_regression else logits.argmax(-1)).cpu().numpy())
        labels.append(y.cpu().numpy())
    preds, labels = np.concatenate(preds), np.concatenate(labels)
    metrics = glue_metrics(task, preds, labels)
    out = {"dev_loss": loss_sum / len(labels), "metrics": metrics, "score": metrics["score"]}
    if order:
        by_idx = np.empty_like(preds)
        by_idx[np.concatenate(order)] = preds
        out["predictions"] = (by_idx.round(6) if task.is_regression else by_idx).tolist()
    return out


def _forward_backward(model: nn.Module, batch: Mapping[str, torch.Tensor], task: TaskSpec,
                      settings: TrainSettings) -> torch.Tensor:
    """The batch's mean loss (detached), its gradient accumulated into .grad.

    On CPU the batch runs as groups of similar length, each cut to its own longest sample
    (fishtune.batching): the same samples in the same optimiser step and the same gradient, the sum
    of each group's share of the batch mean, but far less padding computed. Dropout draws its masks
    group by group, which changes which masks are drawn, not how they are distributed.
    """
    groups = length_groups(batch, settings.device, group_cost_tokens(model))
    n, total = len(batch["labels"]), 0.0
    for group in groups:
        inputs, y = model_inputs(group, settings.device)
        with _autocast(settings):
            logits = model(**inputs).logits
        if len(groups) == 1:  # the batch whole, as always on GPU
            loss = classification_loss(logits, y, task.is_regression)
        else:
            loss = classification_loss(logits, y, task.is_regression, reduction="sum") / n
        loss.backward()
        total = total + loss.detach()
    return total


def _trainable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().cpu().clone() for n, p in model.named_parameters() if p.requires_grad}


def save_checkpoint(path: Path, state: dict, guard: Callable[[], None] | None = None) -> None:
    """Atomic, through a temporary file of this writer's own (results.write_atomic): a crash while saving
    leaves the previous checkpoint intact, and concurrent writers never share a file. The checkpoint keeps
    its file name (`run`), so that a file copied or renamed from another run is recognised. `guard` runs
    just before the rename (a claim's check: a run that lost its claim writes nothing)."""
    save_torch_atomic(path, {**state, "run": path.name}, guard)


def load_checkpoint(path: Path | None, model: nn.Module | None = None, opt: MaskedOptimizer | None = None,
                    freezer=None) -> dict | None:
    """The state save_checkpoint wrote, or None: no file, or one that cannot be resumed, which is set aside
    as `<name>.damaged` with a warning so that the run starts over: damaged (truncated by a full disk, cut
    in a copy) or, given the run's `model`, `opt` and `freezer`, not this run's (another run's checkpoint,
    other tensors or shapes). A file this user may not read raises results.Unreadable."""
    if path is None or not path.exists():
        return None
    check_readable(path)
    try:
        state = torch.load(path, weights_only=False)
        int(state["epoch"]), state["trainable"], state["optimizer"], state["result"]
        if model is not None:
            check_fit(state, path, model, opt, freezer)
    except Exception as e:  # noqa: BLE001 - whatever torch.load makes of a broken file, it cannot be resumed
        set_aside(path, f"{type(e).__name__}: {e}".splitlines()[0][:200] + "; the run starts over")
        return None
    return state


def check_fit(state: dict, path: Path, model: nn.Module, opt: MaskedOptimizer | None = None, freezer=None) -> None:
    """ValueError naming the first thing in which checkpoint `state` (read from `path`) is not the run's:
    checked before anything is restored, so that a model is never left half loaded."""
    if state.get("run", path.name) != path.name:   # files from before `run` was kept: the tensors decide
        raise ValueError(f"another run's checkpoint: {state['run']}")
    ours = {n: tuple(p.shape) for n, p in model.named_parameters() if p.requires_grad}
    theirs = {n: tuple(v.shape) for n, v in state["trainable"].items()}
    if set(ours) != set(theirs):
        names = sorted(set(ours) ^ set(theirs))
        raise ValueError(f"not the run's trainable tensors ({len(names)} differ, e.g. {names[0]})")
    if bad := [n for n in ours if ours[n] != theirs[n]]:
        raise ValueError(f"{bad[0]} has shape {list(theirs[bad[0]])}, the run's {list(ours[bad[0]])}")
    if opt is not None:
        groups = [len(g["params"]) for g in opt.state_dict()["param_groups"]]
        if [len(g["params"]) for g in state["optimizer"]["param_groups"]] != groups:
            raise ValueError("its optimiser's parameter groups are not the run's")
    if (state.get("freezer") is None) != (freezer is None):
        raise ValueError("adaptive freezer state " + ("missing" if freezer is not None else "of another mask"))


def training_state(model: nn.Module, opt: MaskedOptimizer, result: TrainResult, epoch: int, bad_epochs: int,
                   train_loader, freezer=None) -> dict:
    """What a checkpoint holds after `epoch`: the trainable parameters, the optimiser, the result so far,
    the early-stopping count and every RNG the next epoch draws from (torch's, the loader's, CUDA's), and
    the adaptive freezer's state."""
    return {
        "trainable": _trainable_state(model), "optimizer": opt.state_dict(), "result": result,
        "epoch": epoch, "bad_epochs": bad_epochs, "rng": torch.get_rng_state(),
        "loader_rng": train_loader.generator.get_state() if train_loader.generator is not None else None,
        "cuda_rng": torch.cuda.get_rng_state() if torch.cuda.is_available() else None,
        "freezer": freezer.state_dict() if freezer is not None else None,
    }


def resume(state: dict, model: nn.Module, opt: MaskedOptimizer, train_loader, freezer=None) -> tuple[TrainResult, int, int]:
    """Restore a checkpoint's training_state into the model, the optimiser, the RNGs and the freezer;
    returns (the result so far, the early-stopping count, the first epoch still to train)."""
    with torch.no_grad():
        params = dict(model.named_parameters())
        for n, v in state["trainable"].items():
            params[n].copy_(v)
    opt.load_state_dict(state["optimizer"])
    result = state["result"]
    result.resumed_from_epoch = int(state["epoch"])
    torch.set_rng_state(state["rng"])
    if train_loader.generator is not None:
        train_loader.generator.set_state(state["loader_rng"])
    if state.get("cuda_rng") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda_rng"])
    if freezer is not None:
        freezer.load_state_dict(state["freezer"])
    return result, state["bad_epochs"], state["epoch"] + 1


def train(model: nn.Module, train_loader, dev_loader, task: TaskSpec, settings: TrainSettings,
          masks: Mapping[str, torch.Tensor] | None = None, checkpoint: Path | None = None,
          on_epoch: Callable[[dict], None] | None = None, freezer=None, claim=None) -> TrainResult:
    """Train until early stopping or max_epochs; evaluate on dev after every epoch.

    With `checkpoint`, the trainable state, optimiser, epoch, early-stopping state and RNG are saved
    after every epoch, and an existing checkpoint is resumed: an interrupted run ends with the same
    result as an uninterrupted one (on CPU). `freezer` (mask=adaptive, fishtune.adaptive) sees every
    gradient before the optimiser step and may freeze parameter groups. With `claim` (claims.Claim), training
    stops (claims.ClaimLost) at the first step after the claim is found lost, and no checkpoint is written
    unless the claim, read again just before, is still this process's.
    """
    model.to(settings.device)
    opt = masked_adam(model, masks or {}, settings)
    # No sentinel score (-inf would reach a result file if no epoch ended): the first epoch sets it.
    result = TrainResult(best={"score": None, "epoch": 0})
    bad_epochs, start_epoch = 0, 1
    state = load_checkpoint(checkpoint, model, opt, freezer)
    if state is not None:
        result, bad_epochs, start_epoch = resume(state, model, opt, train_loader, freezer)

    # A checkpoint written by the stopping epoch means there is nothing left to train.
    epochs = range(start_epoch, settings.max_epochs + 1) if result.stop_reason != "early_stopping" else range(0)
    result.stop_reason = result.stop_reason or "max_epochs"
    if len(epochs):  # a dev batch: no draw from the training loader's RNG
        warn_if_emulated_bf16(model, next(iter(dev_loader)), task, settings)
    with frozen_linears_in_bf16(model, settings.bf16):
        for epoch in tqdm(epochs, desc=f"{task.name} epochs", disable=not settings.progress, initial=start_epoch - 1,
                          total=settings.max_epochs):
            model.train()
            t0, loss_sum, n_seen, tokens = time.perf_counter(), 0.0, 0, 0
            # Per-batch bars only on a terminal (disable=None): in a log file they would be thousands of lines.
            for step, batch in enumerate(tqdm(train_loader, desc=f"epoch {epoch}", leave=False,
                                              disable=None if settings.progress else True), start=1):
                if claim is not None:
                    claim.check(fresh=False)   # as the heartbeat last found it: stop at once, if lost
                y = batch["labels"]
                loss = _forward_backward(model, batch, task, settings).item()
                # Before the step: a NaN or infinite loss would carry over into every parameter it reaches.
                if not math.isfinite(loss):
                    raise Diverged(f"diverged: non-finite loss at epoch {epoch}, step {step}")
                if freezer is not None:
                    freezer.after_backward(opt.optimizer)
                opt.step()
                opt.zero_grad()
                loss_sum += loss * len(y)
                n_seen += len(y)
                mask = batch.get("attention_mask")
                tokens += int(mask.sum()) if mask is not None else batch["input_ids"].numel()
            seconds = time.perf_counter() - t0
            result.train_seconds += seconds
            result.samples_seen += n_seen
            result.tokens_seen += tokens

            dev = evaluate(model, dev_loader, task, settings)
            if not math.isfinite(dev["dev_loss"]):
                raise Diverged(f"diverged: non-finite dev loss at epoch {epoch}")
            predictions = dev.pop("predictions", None)  # kept for the best epoch only, not in the history
            record = {"epoch": epoch, "train_loss": loss_sum / max(n_seen, 1), **dev}
            result.throughput.append({"epoch": epoch, "train_seconds": seconds, "samples_per_second": n_seen / seconds,
                                      "tokens_per_second": tokens / seconds})
            if freezer is not None:
                record["active_ratio"] = freezer.active_ratio
            result.history.append(record)
            if result.best["score"] is None or dev["score"] > result.best["score"]:
                result.best = {"epoch": epoch, "score": dev["score"], "metrics": dev["metrics"],
                               "dev_loss": dev["dev_loss"]}
                result.best_predictions = predictions
                bad_epochs = 0
            else:
                bad_epochs += 1
            if on_epoch is not None:
                on_epoch(record)
            stop = bad_epochs >= settings.patience
            if stop:
                result.stop_reason = "early_stopping"
            if checkpoint is not None:
                save_checkpoint(checkpoint, training_state(model, opt, result, epoch, bad_epochs, train_loader,
                                                           freezer), claim.check if claim is not None else None)
            if stop:
                break
    return result
