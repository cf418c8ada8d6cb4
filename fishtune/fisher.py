"""Empirical Fisher diagonal: F_i = sum over samples n of (d loss_n / d theta_i)^2.

Each sample's gradient is squared on its own (the square of a batch-mean gradient is a different,
wrong quantity). loss_n is one sample's loss: `loss_fn(model, batch)` when you give one (one loss
per sample of the batch), else `default_loss`, which reads the model's output and the labels
(sequence classification, regression, token classification, causal language modelling). Two exact
ways to get per-sample gradients:

* Linear hooks (fast path): when every trainable parameter is the weight or bias of an nn.Linear
  (LoRA's A and B, the classification head, ...), one batched forward/backward of the summed
  per-sample losses gives them all: for y = x W^T + b the gradient of sample n is
  sum_t g[n,t] x[n,t]^T and sum_t g[n,t], where g is the gradient of the summed loss with respect
  to y. This is sample n's own gradient only because sample n's loss depends on sample n's rows
  alone (true of a transformer with its attention mask, no batch-norm). Padded positions get zero
  gradient, so padding does not change the result; left padding is moved to the right first (so
  that a sample's positions start at 0 as when it is alone), and on CPU a batch is split into
  groups of similar length, so that little padding is computed (fishtune.batching).
* Per-sample loop (any parameter: DoRA magnitudes, prefix embeddings, IA3 vectors, gates, GPT-2's
  Conv1D weights): one forward/backward per sample with its padding trimmed.
"""
from __future__ import annotations

from typing import Callable, Iterable, Iterator, Mapping

import torch
from torch import nn

from .batching import NOT_INPUTS, group_cost_tokens, length_groups, right_aligned

# loss_fn(model, batch) -> one loss per sample, shape (batch,); the batch is a dict of tensors on the
# model's device, as the data loader gives it (labels included).
LossFn = Callable[[nn.Module, Mapping[str, torch.Tensor]], torch.Tensor]


def classification_loss(logits: torch.Tensor, labels: torch.Tensor, regression: bool,
                        reduction: str = "mean") -> torch.Tensor:
    """Cross-entropy, or mean squared error for a one-output regression head (STS-B)."""
    logits = logits.float()
    if regression:
        return torch.nn.functional.mse_loss(logits.squeeze(-1), labels.float(), reduction=reduction)
    return torch.nn.functional.cross_entropy(logits, labels.long(), reduction=reduction)


def _class_names(model: nn.Module) -> set[str]:
    """The class names of the model, of every class it derives from, and of the model a PEFT wrapper
    holds (peft's get_base_model; an adapters-library model is the transformers model itself)."""
    models = [model]
    if callable(getattr(model, "get_base_model", None)):
        models.append(model.get_base_model())
    return {c.__name__ for m in models for c in type(m).__mro__}


def token_task(model: nn.Module) -> str | None:
    """'causal_lm', 'token_classification' or None: what a model with logits of shape (batch, tokens,
    classes) predicts, read from its class, as transformers' task tables name it.

    Causal LM: a class (the model's, one it derives from, or that of the model inside a PeftModel)
    named `...ForCausalLM` or listed in transformers' MODEL_FOR_CAUSAL_LM_MAPPING_NAMES
    (GPT2LMHeadModel, ...), or peft's PeftModelForCausalLM. Token classification: likewise
    `...ForTokenClassification`, MODEL_FOR_TOKEN_CLASSIFICATION_MAPPING_NAMES, or
    PeftModelForTokenClassification. The class, not `config.model_type`: one model type (llama) has
    both a causal LM and a sequence classifier, and `config.is_decoder` is unset on GPT-2 and LLaMA.
    """
    try:
        from transformers.models.auto import modeling_auto as auto
        causal = set(auto.MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values())
        token = set(auto.MODEL_FOR_TOKEN_CLASSIFICATION_MAPPING_NAMES.values())
    except ImportError:  # transformers absent: the class names' endings still tell
        causal, token = set(), set()
    names = _class_names(model)
    if any(n.endswith("ForCausalLM") or n in causal for n in names):
        return "causal_lm"
    if any(n.endswith("ForTokenClassification") or n in token for n in names):
        return "token_classification"
    return None


TASK_NAMES = {"causal_lm": "a causal LM", "token_classification": "a token classifier"}


def _refuse(what: str) -> ValueError:
    return ValueError(f"fishtune's default loss cannot score this model: {what}; pass "
                      f"loss_fn=lambda model, batch: <one loss per sample, shape (batch,)>")


def default_loss(model: nn.Module, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """One loss per sample (shape (batch,)), from `model(**inputs).logits` and `batch["labels"]`.

    * logits (B, C), labels (B,): sequence classification, cross-entropy; with one output
      (`model.config.num_labels == 1`) regression, squared error.
    * logits (B, T, C), labels (B, T), token classification (see token_task): cross-entropy of each
      labelled token, summed over the sample's tokens.
    * logits (B, T, V), labels (B, T), causal LM (see token_task): labels shifted by one as
      transformers does (logits at t predict labels[t + 1]), cross-entropy summed over the sample's
      own label tokens, i.e. -log p(answer | prompt) for supervised fine-tuning labels.

    Labels of -100 are ignored, and so is every position the attention mask hides, whatever its
    label: a sample's loss is the same padded or not. Summed, not averaged, over a sample's tokens:
    transformers trains on the mean over all label tokens of a batch, which weighs every token alike;
    the sum per sample does too (up to one constant factor, which no mask ranking sees), while a mean
    per sample would weigh a token of a short answer more than one of a long answer. So a long answer
    contributes more to the Fisher than a short one (its gradient is a sum over more tokens).
    Anything else (no logits, logits of another rank, labels of another shape, a (B, T, C) output the
    class does not tell) is refused with a ValueError that names the shapes; pass your own loss_fn.
    """
    if "labels" not in batch:
        raise _refuse(f"the batch has no labels (keys: {', '.join(batch)})")
    labels = batch["labels"]
    out = model(**{k: v for k, v in batch.items() if k not in NOT_INPUTS})
    logits = getattr(out, "logits", None)
    if not isinstance(logits, torch.Tensor):
        raise _refuse(f"its output ({type(out).__name__}) has no logits tensor")
    shapes = f"logits {tuple(logits.shape)}, labels {tuple(labels.shape)}"
    if logits.dim() == 2:
        if labels.shape != logits.shape[:1]:
            raise _refuse(f"{shapes}; sequence classification needs labels of shape ({logits.shape[0]},)")
        regression = getattr(getattr(model, "config", None), "num_labels", None) == 1
        return classification_loss(logits, labels, regression, reduction="none")
    if logits.dim() != 3:
        raise _refuse(f"{shapes}; the default reads logits of shape (batch, classes) or (batch, tokens, classes)")
    task = token_task(model)
    if task is None:
        raise _refuse(f"{shapes} from {type(model).__name__}, which is neither a causal LM nor a token "
                      f"classifier by its class")
    if labels.shape != logits.shape[:2]:
        raise _refuse(f"{shapes}; {TASK_NAMES[task]} needs labels shaped like input_ids "
                      f"{tuple(logits.shape[:2])}")
    labels = labels.long()
    mask = batch.get("attention_mask")
    if mask is not None and mask.shape == labels.shape:
        labels = labels.masked_fill(mask == 0, -100)
    if task == "causal_lm":
        logits, labels = logits[:, :-1], labels[:, 1:]
    ce = torch.nn.functional.cross_entropy(logits.float().transpose(1, 2), labels, ignore_index=-100, reduction="none")
    return ce.sum(1)


def check_loss_fn(loss_fn: LossFn | None) -> None:
    """ValueError unless `loss_fn` is None (default_loss) or callable, before any work starts."""
    if loss_fn is not None and not callable(loss_fn):
        raise ValueError(f"loss_fn must be callable as loss_fn(model, batch), not {type(loss_fn).__name__}")


def _per_sample(loss_fn: LossFn, model: nn.Module, batch: Mapping[str, torch.Tensor], n: int) -> torch.Tensor:
    """loss_fn's losses for a batch of n samples, checked to be one per sample."""
    losses = loss_fn(model, batch)
    if not isinstance(losses, torch.Tensor) or losses.shape != (n,):
        got = tuple(losses.shape) if isinstance(losses, torch.Tensor) else type(losses).__name__
        raise ValueError(f"loss_fn must return one loss per sample, shape ({n},); it returned {got}")
    return losses


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


def _batch_size(batch: Mapping[str, torch.Tensor]) -> int:
    """The samples in a batch: its labels' rows, else those of its input_ids or its first tensor."""
    for key in ("labels", "input_ids"):
        if isinstance(batch.get(key), torch.Tensor):
            return len(batch[key])
    for v in batch.values():
        if isinstance(v, torch.Tensor) and v.dim():
            return len(v)
    raise ValueError(f"cannot tell how many samples a batch holds: no tensor among its keys {list(batch)}")


def _take_samples(batches: Iterable[Mapping[str, torch.Tensor]], num_samples: int | None) -> Iterator[dict]:
    """Yield batches until `num_samples` samples are consumed (the last batch cut to fit)."""
    seen = 0
    for batch in batches:
        n = _batch_size(batch)
        if num_samples is not None:
            if seen >= num_samples:
                return
            if seen + n > num_samples:
                size, n = n, num_samples - seen
                batch = {k: v[:n] if isinstance(v, torch.Tensor) and v.dim() and len(v) == size else v
                         for k, v in batch.items()}
        seen += n
        yield dict(batch)


def _to(batch: Mapping[str, torch.Tensor], device: torch.device) -> dict:
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


@torch.no_grad()
def _accumulate_squares(fisher: dict[str, torch.Tensor], name: str, per_sample: torch.Tensor) -> None:
    fisher[name] += per_sample.float().pow(2).sum(0)


def _fisher_linear_hooks(model, params, owners, batches, loss_fn: LossFn) -> dict[str, torch.Tensor]:
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
        # Left padding moved to the right (a sample's positions then start at 0, as when it is alone);
        # on CPU each batch runs as groups of similar length cut to their own longest sample: the
        # per-sample gradients are the same, the padding computed is less (fishtune.batching).
        cost = group_cost_tokens(model)
        for group in (g for batch in batches for g in length_groups(right_aligned(batch), device, cost)):
            # The sum: each sample's loss reaches only its own rows, so the hooks see its own gradient.
            loss = _per_sample(loss_fn, model, _to(group, device), _batch_size(group)).sum()
            # autograd.grad fires the hooks without touching any .grad the caller may hold.
            torch.autograd.grad(loss, list(params.values()), allow_unused=True)
            for name, g in per_sample.items():
                _accumulate_squares(fisher, name, g)
            per_sample.clear()
    finally:
        for h in handles:
            h.remove()
    return fisher


def _fisher_loop(model, params, batches, loss_fn: LossFn) -> dict[str, torch.Tensor]:
    fisher = {n: torch.zeros_like(p, dtype=torch.float32) for n, p in params.items()}
    device = next(iter(params.values())).device
    for batch in batches:
        batch, n = _to(batch, device), _batch_size(batch)
        mask = batch.get("attention_mask")
        keep = mask.bool() if isinstance(mask, torch.Tensor) and mask.dim() == 2 else None
        for i in range(n):
            # Trim this sample's padding, wherever it is (left or right), from every tensor laid out
            # like the attention mask (input_ids, labels, token_type_ids, ...): the same loss, less work.
            one = {k: (v if not isinstance(v, torch.Tensor) else
                       v[i:i + 1, keep[i]] if keep is not None and v.shape[:2] == keep.shape else
                       v[i:i + 1] if v.dim() and len(v) == n else v)
                   for k, v in batch.items()}
            loss = _per_sample(loss_fn, model, one, 1).sum()
            grads = torch.autograd.grad(loss, list(params.values()), allow_unused=True)
            for (name, _), g in zip(params.items(), grads):
                if g is not None:
                    _accumulate_squares(fisher, name, g.unsqueeze(0))
    return fisher


def empirical_fisher(model: nn.Module, batches: Iterable[Mapping[str, torch.Tensor]],
                     num_samples: int | None = None, method: str = "auto",
                     loss_fn: LossFn | None = None) -> dict[str, torch.Tensor]:
    """Empirical Fisher diagonal of every parameter with requires_grad, shaped like it (fp32):
    F_i = sum over samples n of (d loss_n / d theta_i)^2.

    `batches` yields tokenised batch dicts (as the data loader gives them, `labels` included for the
    default loss); at most `num_samples` samples are used (all when None). True labels, dropout off
    (eval mode for the duration; every module's training flag is then put back as it was, the
    model's parameters, their requires_grad and .grad are not touched, and no hook stays behind).

    `loss_fn(model, batch)`: one loss per sample, a tensor of shape (batch,), for a batch dict of
    tensors on the model's device; None: `default_loss` (sequence classification, regression, token
    classification, causal LM; it refuses other outputs in one line). The batch it gets has left
    padding moved to the right and, on CPU, may be a group of the samples cut to their longest
    (hooks), or one sample with its padding trimmed (loop): give a sample the same loss whatever
    the padding around it. The hooks path sums the losses and reads each sample's gradient off the
    Linear layers, which is exact only when sample n's loss depends on sample n's rows alone (no
    term mixing samples, such as a batch mean of a contrastive loss); use method='loop' otherwise.

    `method`: auto (Linear hooks when every trainable parameter lives in an nn.Linear, else the
    per-sample loop), hooks, or loop.
    """
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    if not params:
        raise ValueError("the model has no trainable parameters to score")
    check_loss_fn(loss_fn)
    loss_fn = loss_fn or default_loss
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
            return _fisher_linear_hooks(model, params, owners, samples, loss_fn)
        return _fisher_loop(model, params, samples, loss_fn)
    finally:
        for m, training in modes:
            m.training = training
