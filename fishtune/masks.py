"""Masks over a model's trainable parameters: which entries train.

Each mode is a ModeSpec in fishtune/modes.py (MODES): what scores the entries, how many train, which
it picks and where the budget goes; build_mask and fish_masks read it there. Among them: `none`
(train everything), `fish` (the k largest Fisher scores), `rev` (the k smallest), `rand` (k
uniformly at random, seeded). Selection is global over all candidate tensors. Two more take fish
apart into where the budget goes (entries per tensor) and which entries get it: `fish_shuffled`
keeps fish's count per tensor and draws the entries at random within each tensor; `fish_spread`
gives each tensor its share of k by size (rand's expected allocation, made exact) and takes the
highest-Fisher entries within each tensor.
`build_mask` ranks given scores; `fish_masks` computes them on a model and keeps its head trained.
"""
from __future__ import annotations

import re
import warnings
from pathlib import Path
from typing import Callable, Iterable, Mapping

import torch
from torch import nn

# Defined torch-free in the package, where config checks read them too.
from .modes import MODES, check_mode
from .families import FAMILIES
from .fisher import LossFn, check_loss_fn


class ZeroFisherWarning(UserWarning):
    """fish_masks had to choose candidate entries whose Fisher score (or the mode's own score,
    ModeSpec.score) is zero: k asked for more entries than have a non-zero score, so the rest were
    filled by position (the tie-break), not by any signal.

    Typical causes: LoRA with peft's default init (B = 0, so lora_A's gradient and Fisher are zero),
    VeRA with its default lambda_b = 0, a path the loss does not reach. Attributes: `needed` (the
    candidate entries k asks for, the head left out), `nonzero` (candidates with a non-zero score),
    `candidates` (all candidate entries), `filled` (chosen entries with a zero score) and `tensors`
    (name -> its chosen zero-score entries, for each tensor concerned). Turn it into an error with
    `warnings.simplefilter("error", fishtune.ZeroFisherWarning)`."""

    def __init__(self, needed: int, nonzero: int, candidates: int, tensors: dict[str, int], score: str = "Fisher"):
        self.needed, self.nonzero, self.candidates, self.tensors = needed, nonzero, candidates, dict(tensors)
        self.filled = sum(self.tensors.values())
        shown = ", ".join(f"{n} ({c})" for n, c in list(self.tensors.items())[:6])
        more = f" and {len(self.tensors) - 6} more" if len(self.tensors) > 6 else ""
        super().__init__(
            f"fish_masks: k asks for {needed} candidate entries but only {nonzero} of {candidates} have a non-zero "
            f"{score} score; {self.filled} zero-score entries were chosen by position, in {len(self.tensors)} "
            f"tensor{'s' if len(self.tensors) != 1 else ''}: {shown}{more}")


class StrayTrainableWarning(UserWarning):
    """fish_masks found trainable tensors that are neither the head nor a parameter of the PEFT method
    in the model, e.g. a base weight left trainable by mistake: they are mask candidates like the
    method's entries and may take part of k. Attribute `names`: those tensors' names, in model order.
    Only a model that carries a method warns (see method_parameter); a model whose trainable
    parameters you chose yourself, with no method in it, does not. Silence it with
    `warnings.simplefilter("ignore", fishtune.StrayTrainableWarning)` when that is what you meant."""

    def __init__(self, names: list[str]):
        self.names = list(names)
        shown = ", ".join(self.names[:6]) + (f" and {len(self.names) - 6} more" if len(self.names) > 6 else "")
        super().__init__(
            f"fish_masks: {len(self.names)} trainable tensor{'s are' if len(self.names) != 1 else ' is'} neither "
            f"the head nor part of the PEFT method; they are mask candidates like the method's entries: {shown}")


def zero_score_choices(scores: Mapping[str, torch.Tensor], chosen: Mapping[str, torch.Tensor],
                       mode: str) -> dict[str, int]:
    """Per tensor, the entries a scoring mode chose although their score is zero (only those tensors),
    as its ModeSpec.zero_score says: `chosen` counts its own chosen entries (fish and fish_spread rank
    by score, so a zero-score entry is chosen only when k, or a tensor's share, exceeds the non-zero
    scores); `allocation` counts those of the global top k its counts per tensor come from
    (fish_shuffled draws its entries at random by design); None counts none (rev takes the smallest
    scores on purpose; rand and none read none): empty."""
    policy = MODES[mode].zero_score
    if policy is None:
        return {}
    if policy == "allocation":
        names, sizes, flat = _flat(scores)
        k = sum(int(m.sum()) for m in chosen.values())
        chosen = _unflat(_keep_global(flat, k, "largest", None), names, sizes, scores)
    counts = {n: int((chosen[n] & (scores[n].detach().cpu() == 0)).sum()) for n in scores}
    return {n: c for n, c in counts.items() if c}


def build_mask(scores: Mapping[str, torch.Tensor], k: int, mode: str, seed: int = 42) -> dict[str, torch.Tensor]:
    """Boolean masks shaped like `scores`, with exactly k True entries in all (mode none: all True).

    The mode's ModeSpec (fishtune/modes.py) says which: its `pick` (largest, smallest, random) over one
    ranking of all tensors, or within each tensor by its `allocation` (fish: as many as the global top k
    has there; size: its share of k by size). Ties are broken deterministically by position: tensors
    in the order of `scores` (the model's parameter order), then row-major index. A random pick ignores
    the scores' values (seeded by `seed`); fish_shuffled reads them only for its counts per tensor.
    """
    spec = check_mode(mode)
    names, sizes, flat = _flat(scores)
    total = flat.numel()
    if spec.trains == "all":
        return _unflat(torch.ones(total, dtype=torch.bool), names, sizes, scores)
    if not 0 <= k <= total:
        raise ValueError(f"mask budget k={k} is impossible: there are {total} candidate entries (allowed 0..{total})")
    if spec.score is not None and torch.isnan(flat).any():
        raise ValueError(f"{spec.score.name} scores contain NaN; cannot rank them")
    generator = torch.Generator().manual_seed(seed)
    if spec.allocation == "global":
        keep = _keep_global(flat, k, spec.pick, generator)
    else:
        counts = ([int(part.sum()) for part in _keep_global(flat, k, "largest", None).split(sizes)]
                  if spec.allocation == "fish" else size_proportional(sizes, k))
        keep, start = torch.zeros(total, dtype=torch.bool), 0
        for n, c in zip(sizes, counts):  # one generator through the tensors in order: a seed draws them all
            keep[start + _pick(flat[start:start + n], c, spec.pick, generator)] = True
            start += n
    return _unflat(keep, names, sizes, scores)


def _flat(scores: Mapping[str, torch.Tensor]) -> tuple[list[str], list[int], torch.Tensor]:
    """(names, sizes, every score in one float64 CPU vector, in the order of `scores`)."""
    names = list(scores)
    flat = torch.cat([scores[n].detach().reshape(-1).to("cpu", torch.float64) for n in names]) if names \
        else torch.zeros(0, dtype=torch.float64)
    return names, [scores[n].numel() for n in names], flat


def _unflat(keep: torch.Tensor, names: list[str], sizes: list[int],
            like: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """One flat bool vector back into masks shaped like `like`'s tensors."""
    return {n: part.reshape(like[n].shape) for n, part in zip(names, keep.split(sizes))}


def _keep_global(flat: torch.Tensor, k: int, pick: str, generator: torch.Generator | None) -> torch.Tensor:
    """The flat mask of k entries picked over all tensors at once."""
    keep = torch.zeros(flat.numel(), dtype=torch.bool)
    keep[_pick(flat, k, pick, generator)] = True
    return keep


def _pick(values: torch.Tensor, k: int, pick: str, generator: torch.Generator | None) -> torch.Tensor:
    """Indices of k values: the largest, the smallest (a stable sort: ties in position order), or a
    random draw from `generator` (drawn even for k = 0, so that a seed gives the same draws whatever k)."""
    if pick == "random":
        return torch.randperm(values.numel(), generator=generator)[:k]
    return _top(values, k, largest=pick == "largest")


def _top(flat: torch.Tensor, k: int, largest: bool) -> torch.Tensor:
    """Indices of the k largest (or smallest) values; a stable sort keeps ties in position order."""
    return torch.sort(flat, descending=largest, stable=True).indices[:k]


def size_proportional(sizes: list[int], k: int) -> list[int]:
    """k split over tensors in proportion to their sizes, exactly k in all: floors first, then one more
    to the largest remainders (ties to the earlier tensor). Exact integer arithmetic, so deterministic."""
    total = sum(sizes)
    if total == 0:
        return [0] * len(sizes)
    counts = [k * n // total for n in sizes]
    remainders = sorted(range(len(sizes)), key=lambda i: (-(k * sizes[i] % total), i))
    for i in remainders[:k - sum(counts)]:
        counts[i] += 1
    return counts


# --- masks over a model: the public API (fishtune.fish_masks, apply_masks, ...) -----------------

# The classification head of each known family's *ForSequenceClassification, as its modules appear in
# parameter names (fishtune/families.py: FamilySpec.head_modules; DistilBERT's is pre_classifier and
# classifier). ELECTRA also calls its head `classifier`; GPT-2 `score`.
HEAD_MODULE = {name: f.head_modules for name, f in FAMILIES.items()}
# Without a family: any family's head module but `pooler`, which in BERT names a part of the body
# (DeBERTa-v2's head pooler is counted as head only when its family is given).
_ANY_HEAD = {m for modules in HEAD_MODULE.values() for m in modules} - {"pooler"}
# Written beside a peft adapter's files by save_masks.
MASK_FILE = "fish_mask.safetensors"


def is_head(name: str, family: str | None = None) -> bool:
    """Whether a parameter lies in the classification head: a module named like `family`'s head, or,
    without a family, like any known family's (the default of fish_masks)."""
    heads = _ANY_HEAD if family is None else HEAD_MODULE[family]
    return not set(name.split(".")).isdisjoint(heads)


def _peft_tuner_prefixes() -> tuple[str, ...]:
    """The prefixes of peft's tuner parameters (lora_, ia3_, vera_lambda_, hada_, oft_, ...), from
    peft's own table; a short list of the common ones when peft is absent."""
    try:
        from peft.mapping import PEFT_TYPE_TO_TUNER_MAPPING
        found = {getattr(tuner, "prefix", None) for tuner in PEFT_TYPE_TO_TUNER_MAPPING.values()}
        return tuple(sorted(p for p in found if isinstance(p, str) and p))
    except ImportError:
        return ("boft_", "hada_", "ia3_", "lokr_", "lora_", "oft_", "vera_lambda_")


def _adapter_names(model: nn.Module) -> set[str]:
    """The adapter names a model records: peft's (`peft_config`'s keys, e.g. 'default') and the
    adapters library's (`adapters_config.adapters`)."""
    names = set()
    if isinstance(config := getattr(model, "peft_config", None), Mapping):
        names |= {str(n) for n in config}
    if isinstance(adapters := getattr(getattr(model, "adapters_config", None), "adapters", None), Mapping):
        names |= {str(n) for n in adapters}
    return names


def _modules_to_save(model: nn.Module) -> set[str]:
    """The module names peft trains in full beside the method: `model.modules_to_save` and every
    adapter config's `modules_to_save` (peft adds the classifier / score of a SEQ_CLS model there)."""
    names = set()
    recorded = [getattr(model, "modules_to_save", None)]
    if isinstance(config := getattr(model, "peft_config", None), Mapping):
        recorded += [getattr(c, "modules_to_save", None) for c in config.values()]
    for r in recorded:
        if isinstance(r, (list, tuple, set)):
            names |= {str(n) for n in r}
    return names


def default_head(model: nn.Module) -> Callable[[str], bool]:
    """fish_masks' head when none is given: whether a parameter name is in a module that trains in
    full beside the method.

    That is every parameter of a module peft keeps a trainable copy of (`modules_to_save`: names
    containing `.modules_to_save.`, or under a module named in the modules_to_save peft records; on
    DistilBERT with task_type SEQ_CLS that is pre_classifier and classifier), and any module named
    like a known family's classification head, `classifier` or `score` (is_head)."""
    saved = _modules_to_save(model)

    def in_head(name: str) -> bool:
        dotted = f".{name}."
        return (".modules_to_save." in dotted or is_head(name)
                or any(f".{m}." in dotted for m in saved))
    return in_head


def head_names(model: nn.Module) -> list[str]:
    """The trainable parameters that fish_masks trains in full by default (default_head), in model
    order: k must be at least their size."""
    in_head = default_head(model)
    return [n for n, p in model.named_parameters() if p.requires_grad and in_head(n)]


def method_parameter(model: nn.Module) -> Callable[[str], bool]:
    """Whether a parameter name belongs to the PEFT method in `model`: one of its dot-separated parts
    is an adapter name the model records (peft's 'default', the adapters library's own names) or
    starts with one of peft's tuner prefixes (lora_, ia3_, vera_lambda_, hada_, oft_, ... as peft
    lists them). peft's prompt encoders and DoRA magnitudes carry the adapter name too."""
    adapters, prefixes = _adapter_names(model), _peft_tuner_prefixes()
    return lambda name: any(part in adapters or part.startswith(prefixes) for part in name.split("."))


# `.<blocks>.<index>.` with the block list's last name of any known family (layer, layers): other
# architectures that call theirs the same (RoBERTa, Mistral, ...) are read too.
_BLOCK_LISTS = sorted({f.layers_pattern for f in FAMILIES.values()})
_LAYER = re.compile(rf"\.(?:{'|'.join(map(re.escape, _BLOCK_LISTS))})\.(\d+)\.")


def describe_parameter(name: str) -> tuple[int | None, str]:
    """(layer index, module type) of a parameter name, e.g. (3, 'query.lora_A'); (None, 'other') outside layers."""
    m = _LAYER.search(name)
    if not m:
        return None, "other"
    parts = [p for p in name[m.end():].split(".") if p not in ("default", "weight", "bias")]
    return int(m.group(1)), ".".join(parts[-2:])


def mask_placement(masks: Mapping[str, torch.Tensor]) -> list[dict]:
    """Where a mask's entries are, per tensor: name, layer, module (as describe_parameter reads the
    name), chosen entries and the tensor's size. Small enough for a result file, so that placement
    claims can be checked without the mask itself."""
    out = []
    for name, m in masks.items():
        layer, module = describe_parameter(name)
        out.append({"name": name, "layer": layer, "module": module, "chosen": int(m.sum()), "entries": m.numel()})
    return out


def _check_names(model: nn.Module, masks: Mapping[str, torch.Tensor]) -> dict[str, nn.Parameter]:
    """The model's parameters by name, after checking that every mask names one of the same shape."""
    params = dict(model.named_parameters())
    for name, mask in masks.items():
        if name not in params:
            raise KeyError(f"mask {name!r} names no parameter of the model (masks are keyed by "
                           f"model.named_parameters() of the model they were made on)")
        if mask.shape != params[name].shape:
            raise ValueError(f"mask {name!r} has shape {tuple(mask.shape)}, the parameter {tuple(params[name].shape)}")
    return params


def fish_masks(model: nn.Module, batches: Iterable[Mapping[str, torch.Tensor]] | None, k: int | None,
               mode: str = "fish", num_samples: int | None = 128, seed: int = 42,
               head: Iterable[str] | Callable[[str], bool] | None = None,
               loss_fn: LossFn | None = None) -> dict[str, torch.Tensor]:
    """FISH-Tuning masks: which entries of the model's trainable parameters train, exactly k in all.

    `model` is any nn.Module whose trainable parameters (requires_grad) are the ones to choose
    from: a peft PeftModel, an adapters model after train_adapter, or a model whose parameters you
    froze yourself.

    `batches`: an iterable of batch dicts (a DataLoader with your collator); the first
    `num_samples` samples give the empirical Fisher F_i = sum_n (d loss_n / d theta_i)^2, each
    sample's gradient squared on its own, dropout off (all samples when None), or the mode's own
    score (ModeSpec.score). Shuffle with a seed for a random choice of samples. Modes rand and none
    do not read them (their ModeSpec has no score).

    `loss_fn(model, batch)`: one loss per sample, shape (batch,), for a batch dict on the model's
    device (fishtune.empirical_fisher says what it may receive and when the fast path is exact).
    None: fishtune.default_loss, from `model(**inputs).logits` and the batch's `labels`:
    cross-entropy for sequence classification, squared error for a one-output head
    (`model.config.num_labels == 1`), and for a token classifier or a causal LM (told apart by the
    model's class, fishtune.fisher.token_task) the cross-entropy summed over the sample's own label
    tokens (-100 and padding ignored; a causal LM's labels shifted by one as transformers does).
    Any other output is refused in one line that points to loss_fn.

    `head` (parameter names, or a predicate on names) is always trained in full and counts inside
    k: the masks choose k minus the head's size among the other trainable entries, as the original
    FISH code does. Default (default_head): every module peft trains in full beside the method
    (its modules_to_save, e.g. DistilBERT's pre_classifier and classifier) and modules named
    `classifier` or `score`. Trainable tensors that are neither head nor a parameter of the PEFT
    method in the model (method_parameter) are ranked with the method's entries, and fish_masks
    warns once with a StrayTrainableWarning naming them (a base weight left trainable by mistake).

    `mode`: one of fishtune.MASK_MODES, each a ModeSpec in fishtune/modes.py, e.g. fish (the
    largest Fisher scores), rev (the smallest), rand (uniformly at random, seeded by `seed`), none
    (everything trains; k may be None); fish_shuffled (fish's entries per tensor, drawn at random
    within each tensor) and fish_spread (each tensor's share of k by size, the highest Fisher scores
    within it). Selection is global over all tensors; ties go to the earlier parameter and the lower
    index, so masks are deterministic.

    Returns one bool mask per trainable parameter (the head's all True), on the CPU, in model
    order, with exactly k True entries in all. Then `apply_masks`, and train with MaskedOptimizer
    or FishMaskCallback. When a scoring mode has to choose entries whose score is zero (k exceeds the
    candidates with a non-zero score; ModeSpec.zero_score), it warns once with a ZeroFisherWarning that names the counts
    and the tensors. The model is left as it came: every module's training flag, every
    requires_grad, no hook and no .grad added.
    """
    spec = check_mode(mode)
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    if not params:
        raise ValueError("the model has no parameter that requires grad: insert the PEFT method (or choose the "
                         "trainable parameters) first")
    check_loss_fn(loss_fn)  # before any work: rand and none never reach a score
    if head is None:
        in_head = default_head(model)
    elif callable(head):
        in_head = head
    else:
        names = set(head)
        in_head = names.__contains__
        if unknown := sorted(names - set(params)):
            raise KeyError(f"head {unknown[0]!r} is no trainable parameter of the model")
    heads = {n: p for n, p in params.items() if in_head(n)}
    candidates = {n: p for n, p in params.items() if n not in heads}
    head_size, total = sum(p.numel() for p in heads.values()), sum(p.numel() for p in params.values())
    if spec.trains == "all":
        if k is not None and k != total:
            raise ValueError(f"mode {mode} trains all {total} trainable entries, not k={k}")
        k = total
    if k is None or not head_size <= k <= total:
        raise ValueError(f"budget k={k} is impossible: it counts the head's {head_size} entries, so it must lie "
                         f"between {head_size} and all {total} trainable entries")
    in_method = method_parameter(model)
    # A model with no method in it (you chose its trainable parameters yourself) has no stray tensors.
    if any(map(in_method, candidates)) and (stray := [n for n in candidates if not in_method(n)]):
        warnings.warn(StrayTrainableWarning(stray), stacklevel=2)
    scores = {n: torch.zeros_like(p) for n, p in candidates.items()}
    if spec.score is not None and candidates:
        for p in heads.values():  # always trained: no need to score it (requires_grad was True: in params)
            p.requires_grad_(False)
        try:
            scored = spec.score.compute(model, batches, num_samples, loss_fn)
        finally:
            for p in heads.values():
                p.requires_grad_(True)
        scores = {n: scored[n] for n in candidates}
    chosen = build_mask(scores, k - head_size, mode, seed)
    if zero := zero_score_choices(scores, chosen, mode):
        nonzero = sum(int((s != 0).sum()) for s in scores.values())
        warnings.warn(ZeroFisherWarning(k - head_size, nonzero, sum(s.numel() for s in scores.values()), zero,
                                        spec.score.name), stacklevel=2)
    return {n: chosen[n] if n in chosen else torch.ones(p.shape, dtype=torch.bool) for n, p in params.items()}


def trainable_entries(model: nn.Module, masks: Mapping[str, torch.Tensor] | None = None) -> int:
    """Entries that train: those of parameters with requires_grad, counting only the chosen ones
    of a masked parameter."""
    masks = masks or {}
    return sum(int(masks[n].sum()) if n in masks else p.numel() for n, p in model.named_parameters() if p.requires_grad)


def apply_masks(model: nn.Module, masks: Mapping[str, torch.Tensor]) -> int:
    """Freeze what the masks leave out; returns the trainable entries in all (k with fish_masks).

    A tensor with no chosen entry stops requiring grad, so no gradient is computed for it; a partly
    chosen one keeps requiring grad, and MaskedOptimizer or FishMaskCallback keep its masked-out
    entries fixed. Parameters without a mask are left as they are. Call it before the optimizer
    (or the Trainer) is made, so that the frozen tensors stay out of it.
    """
    params = _check_names(model, masks)
    for name, mask in masks.items():
        if not mask.any():
            params[name].requires_grad_(False)
    return trainable_entries(model, masks)


def original_k(build: Callable[[], nn.Module]) -> int:
    """The budget k of FISH-Tuning's budget matching: the trainable entries (head included) of the
    "original" configuration, the same PEFT method on fewer layers with all of it trainable.

    `build()` returns that model. It runs under torch.device("meta"), so only shapes are made: no
    weights are loaded or allocated, a 1B model costs nothing. Make the base model with
    `from_config` (transformers refuses `from_pretrained` on the meta device), e.g.

        k = original_k(lambda: get_peft_model(AutoModelForSequenceClassification.from_config(config),
                                              LoraConfig(..., layers_to_transform=[0])))
    """
    with torch.device("meta"):
        return trainable_entries(build())


def save_masks(masks: Mapping[str, torch.Tensor], directory: str | Path, **metadata: object) -> Path:
    """Write the masks to `directory`/fish_mask.safetensors, e.g. beside a peft adapter saved
    with save_pretrained, so that a trained FISH adapter is shared with its mask.

    One bool tensor per parameter name, as named by the model the masks were made on (a peft model
    loaded back with PeftModel.from_pretrained has the same names). The file's metadata holds
    `chosen` (the True entries) and any `metadata` you pass (mode, seed, num_samples, ...) as strings.
    """
    path = Path(directory) / MASK_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(mask_file_bytes(masks, **metadata))
    return path


def mask_file_bytes(masks: Mapping[str, torch.Tensor], **metadata: object) -> bytes:
    """The bytes of a mask file as save_masks writes it (safetensors, serialised in memory), for a
    writer that puts them in place itself (the harness writes `<run>.mask.safetensors` atomically)."""
    from safetensors.torch import save

    meta = {"format": "fishtune-masks", "chosen": str(sum(int(m.sum()) for m in masks.values())),
            **{key: str(value) for key, value in metadata.items()}}
    return save({n: m.detach().to("cpu", torch.bool).contiguous() for n, m in masks.items()}, metadata=meta)


def load_masks(path: str | Path) -> dict[str, torch.Tensor]:
    """The masks save_masks wrote (sorted by name): `path` is the directory, or the file itself."""
    from safetensors.torch import load_file

    path = Path(path)
    return load_file(str(path / MASK_FILE if path.is_dir() else path))
