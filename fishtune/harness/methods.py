"""PEFT methods: one MethodSpec each, and inserting them on the bottom L transformer layers.

A `MethodSpec` says everything about one method: the library that inserts it, its defaults (its
config, conf/peft/<name>.yaml), the checks of its own config values, the widths that may not exceed
the model's hidden size, and how it is inserted (its insert function receives the spec, and reads
every option through `spec.option`).
Validation (validate.py), the run (run.py), the ratios and the aggregator read it here; adding a
method means one spec below and one yaml. What a method needs to know about a model family (its layer
names, head, default targets) and which methods a family cannot take, with the reason (`refused`), is in
the family's FamilySpec (fishtune/families.py); `MethodSpec.families` and SUPPORT_MATRIX derive from it.

`insert_method(model, peft_cfg, layers, family)` returns the model with the method inserted, the base
frozen and the classification head trainable. Downstream code sees only named parameters:
`split_trainable(model, family)` separates the head (always trained, inside the budget) from the
method's parameters, which are the candidates a mask chooses from.

Two libraries do the inserting (docs/METHODS.md says why each method uses which):

* peft: LoRA, DoRA (PiSSA init), IA3 and VeRA. The model comes back wrapped in a PeftModel; the head is
  trained through `modules_to_save` (peft keeps a frozen copy of it, `original_module`, which
  `count_parameters` leaves out).
* adapters: Houlsby adapters, flat prefix tuning and UniPELT. `adapters.init` adds the adapter hooks
  to the model in place, so it stays the same *ForSequenceClassification object.

Layers are always the bottom L: indices 0..L-1 of the model's block list (FamilySpec.layer_prefix).

This module imports no torch (the specs are read by torch-free config checks): the functions that
build or count models import torch, peft and adapters where they run.
"""
from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass, field
from functools import lru_cache
from typing import TYPE_CHECKING, Any, Callable, Mapping

from ..families import FAMILIES
from . import CONF_DIR
from .checks import ConfigError, check_choice, check_float, check_int

if TYPE_CHECKING:
    import torch

# The adapters library names every inserted module after the adapter; one adapter per model.
ADAPTER_NAME = "fishtune"

# (spec, model, peft config, layers, family) -> the model with the method inserted
Insert = Callable[["MethodSpec", "torch.nn.Module", Mapping[str, Any], int, str], "torch.nn.Module"]
# (spec, peft config, the model's transformers config, layers left out) -> an adapters-library config
AdaptersConfig = Callable[["MethodSpec", Mapping[str, Any], Any, list[int]], Any]


@lru_cache(maxsize=None)
def _defaults(name: str) -> dict[str, Any]:
    from omegaconf import OmegaConf

    return OmegaConf.to_container(OmegaConf.load(CONF_DIR / "peft" / f"{name}.yaml"), resolve=True)


@dataclass(frozen=True)
class MethodSpec:
    """One PEFT method: where it can go, its defaults and checks, how it is inserted."""
    name: str
    library: str                                  # peft | adapters
    insert: Insert                                # (spec, model, peft config, layers, family) -> model
    check: Callable[[Mapping[str, Any]], None]    # its own values of a run config (ConfigError)
    widths: tuple[str, ...] = ()                  # peft.<key>s that may not exceed the hidden size
    # Fixed keywords of the library's config that make this method what it is (DoRA: LoRA with use_dora).
    library_kwargs: Mapping[str, Any] = field(default_factory=dict)
    adapters_config: AdaptersConfig | None = None  # adapters methods: the library's config of the method
    prefix: bool = False                          # reads a prefix of virtual tokens (FamilySpec.prefix_attention)
    # Attributes of the method's layers that are computed from the base layer's weight in fp32 (DoRA's
    # magnitude divides by the weight's norm): train.py keeps those base layers out of bf16.
    fp32_base: tuple[str, ...] = ()

    @property
    def families(self) -> tuple[str, ...]:
        """The model families it can be inserted in: those whose FamilySpec does not refuse it."""
        return tuple(n for n, f in FAMILIES.items() if self.name not in f.refused)

    @property
    def unsupported(self) -> dict[str, str]:
        """Family -> why it cannot take this method (FamilySpec.refused)."""
        return {n: f.refused[self.name] for n, f in FAMILIES.items() if self.name in f.refused}

    @property
    def defaults(self) -> dict[str, Any]:
        """The method's config as shipped (conf/peft/<name>.yaml), a copy."""
        return dict(_defaults(self.name))

    def option(self, peft_cfg: Mapping[str, Any], key: str) -> Any:
        """peft_cfg[key], or the shipped default where it is absent or null."""
        value = peft_cfg.get(key)
        return _defaults(self.name).get(key) if value is None else value

    def schedule(self) -> tuple[list[int], int]:
        """(budget_layers, fish_layers) as shipped: the layers of the original runs per budget level and
        of the masked runs, before they are fitted to a model's depth (schedules.py)."""
        d = _defaults(self.name)
        return [int(x) for x in d["budget_layers"]], int(d["fish_layers"])


# --- each method's own config checks --------------------------------------------------------------

def _check_rank_alpha(config: Mapping[str, Any]) -> None:
    check_int(config, "peft.rank", 1, optional=True)
    check_float(config, "peft.alpha", 0, above=True, null="2 x rank", optional=True)


def _check_lora(config: Mapping[str, Any]) -> None:
    _check_rank_alpha(config)
    check_float(config, "peft.dropout", 0, above=False, hi=1, below=True, null="none", optional=True)
    check_choice(config, "peft.init", ("pissa", "default"), optional=True)


def _check_prefix(config: Mapping[str, Any]) -> None:
    check_int(config, "peft.prefix_length", 1, optional=True)


def _check_unipelt(config: Mapping[str, Any]) -> None:
    _check_rank_alpha(config)
    _check_prefix(config)
    check_int(config, "peft.bottleneck", 1, optional=True)


def _check_adapter(config: Mapping[str, Any]) -> None:
    check_float(config, "peft.reduction_factor", 0, above=True,
                null=f"{_defaults('adapter')['reduction_factor']:g}", optional=True)


def _check_vera(config: Mapping[str, Any]) -> None:
    check_int(config, "peft.rank", 1, optional=True)
    check_float(config, "peft.dropout", 0, above=False, hi=1, below=True, null="none", optional=True)
    check_choice(config, "peft.init", ("residual", "default"), optional=True)
    check_float(config, "peft.d_initial", 0, above=True, optional=True)
    check_float(config, "peft.b_initial", 0, above=True, optional=True)
    check_int(config, "peft.projection_seed", 0, optional=True)


def _check_nothing(config: Mapping[str, Any]) -> None:
    """IA3 has no values of its own beyond the layer schedule."""


# --- peft methods -------------------------------------------------------------------------------

def _rank(spec: MethodSpec, p: Mapping[str, Any]) -> int:
    rank = int(spec.option(p, "rank"))
    if rank < 1:
        raise ConfigError(f"{spec.name} rank must be at least 1, got {rank}")
    return rank


def _targets(spec: MethodSpec, p: Mapping[str, Any], model: torch.nn.Module, layers: int, family: str) -> list[str]:
    """The modules a LoRA-style method wraps: peft.targets, else the family's (Table 6). A target that
    names no linear module of the chosen layers is refused in one line (peft's own error is a traceback
    that lists nothing to choose from). peft matches a name itself or its last dotted parts."""
    import torch

    fam = FAMILIES[family]
    given = spec.option(p, "targets") or fam.lora_targets
    targets = [given] if isinstance(given, str) else [str(t) for t in given]
    inside = set()  # the linear modules' names within their layer, in the chosen layers
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear) and (m := fam.layer_regex.search(name)) and int(m.group(1)) < layers:
            inside.add(name[m.end():])
    for target in targets:
        if not any(n == target or n.endswith(f".{target}") for n in inside):
            raise ConfigError(f"peft.targets: {target!r} names no linear module in the bottom {layers} layer(s) of this "
                              f"{family} model; its layers' linear modules are: {', '.join(sorted(inside))}")
    return targets


def _insert_lora(spec: MethodSpec, model: torch.nn.Module, p: Mapping[str, Any], layers: int,
                 family: str) -> torch.nn.Module:
    """LoRA on the family's targets (Table 6) of the bottom `layers` layers; DoRA is LoRA with
    `use_dora` among its spec's library_kwargs (one magnitude per output feature)."""
    from peft import LoraConfig, TaskType, get_peft_model

    fam = FAMILIES[family]
    rank = _rank(spec, p)
    conf = LoraConfig(
        task_type=TaskType.SEQ_CLS,
        r=rank,
        lora_alpha=spec.option(p, "alpha") or 2 * rank,
        lora_dropout=spec.option(p, "dropout") or 0.0,
        target_modules=_targets(spec, p, model, layers, family),
        layers_to_transform=list(range(layers)),
        layers_pattern=fam.layers_pattern,
        # PiSSA starts B != 0, so lora_A has a non-zero gradient (and Fisher) at initialisation.
        init_lora_weights="pissa" if spec.option(p, "init") == "pissa" else True,
        modules_to_save=list(fam.head_modules),
        **spec.library_kwargs,
    )
    return get_peft_model(model, conf)


def _insert_ia3(spec: MethodSpec, model: torch.nn.Module, p: Mapping[str, Any], layers: int,
                family: str) -> torch.nn.Module:
    """IA3 vectors l_k, l_v, l_ff on the bottom `layers` layers, selected by one full-match regex
    (IA3Config has no layers_to_transform). l_ff scales the *input* of the FFN's down projection:
    peft's "feedforward" mode."""
    from peft import IA3Config, TaskType, get_peft_model

    fam = FAMILIES[family]
    attn, ff = fam.ia3_targets
    layer = rf".*{re.escape(fam.layer_prefix)}\.({'|'.join(map(str, range(layers)))})\."
    conf = IA3Config(
        task_type=TaskType.SEQ_CLS,
        target_modules=rf"{layer}({attn}|{ff})",
        feedforward_modules=rf"{layer}{ff}",
        modules_to_save=list(fam.head_modules),
    )
    return get_peft_model(model, conf)


def _insert_vera(spec: MethodSpec, model: torch.nn.Module, p: Mapping[str, Any], layers: int,
                 family: str) -> torch.nn.Module:
    """VeRA on the family's LoRA targets of the bottom `layers` layers. peft sizes the shared A and B
    for the largest target and slices them per module, so targets of different shapes (ModernBERT's
    two W_O) share one pair.

    peft starts lambda_b at 0 (the update is 0), which leaves every lambda_d with a gradient, and so a
    Fisher, of exactly 0. init=residual starts lambda_b at b_initial instead and subtracts the initial
    update from the frozen base weight, as PiSSA keeps the model's function: the model computes what it
    did before insertion, and every lambda has a non-zero Fisher."""
    import torch
    from peft import TaskType, VeraConfig, get_peft_model
    from peft.tuners.vera.layer import VeraLayer

    fam = FAMILIES[family]
    conf = VeraConfig(
        task_type=TaskType.SEQ_CLS,
        r=_rank(spec, p),
        target_modules=_targets(spec, p, model, layers, family),
        layers_to_transform=list(range(layers)),
        layers_pattern=fam.layers_pattern,
        vera_dropout=spec.option(p, "dropout") or 0.0,
        d_initial=float(spec.option(p, "d_initial")),
        projection_prng_key=int(spec.option(p, "projection_seed")),
        modules_to_save=list(fam.head_modules),
    )
    model = get_peft_model(model, conf)
    if spec.option(p, "init") == "residual":
        with torch.no_grad():
            for module in model.modules():
                if isinstance(module, VeraLayer):
                    for adapter, lambda_b in module.vera_lambda_b.items():
                        lambda_b.fill_(float(spec.option(p, "b_initial")))
                        module.get_base_layer().weight -= module.get_delta_weight(adapter)
    return model


# --- adapters methods ---------------------------------------------------------------------------

def _adapter_config(spec: MethodSpec, p: Mapping[str, Any], conf, leave_out: list[int]):
    """Houlsby: a bottleneck adapter after attention and one after the FFN ("double_seq_bn")."""
    from adapters import DoubleSeqBnConfig

    return DoubleSeqBnConfig(reduction_factor=float(spec.option(p, "reduction_factor")), leave_out=leave_out)


def _prefix_config(spec: MethodSpec, p: Mapping[str, Any], conf, leave_out: list[int]):
    """Flat prefix: the trainable parameters are the prefix keys and values themselves (no
    reparameterisation MLP), so what is counted is what is trained and masked."""
    from adapters import PrefixTuningConfig

    return PrefixTuningConfig(prefix_length=int(spec.option(p, "prefix_length")), flat=True, leave_out=leave_out)


def _unipelt_config(spec: MethodSpec, p: Mapping[str, Any], conf, leave_out: list[int]):
    """UniPELT (Mao et al. 2022): gated LoRA + gated flat prefix + gated sequential adapter, sized
    down to the paper's ~21.5 k parameters per bert-base layer (derivation in docs/METHODS.md)."""
    from adapters import LoRAConfig, PrefixTuningConfig, SeqBnConfig, UniPELTConfig

    rank = _rank(spec, p)
    bottleneck = int(spec.option(p, "bottleneck"))
    return UniPELTConfig(  # sets use_gating=True on each component
        prefix_tuning=PrefixTuningConfig(prefix_length=int(spec.option(p, "prefix_length")), flat=True,
                                         leave_out=leave_out),
        # adapters sizes a bottleneck as hidden // reduction_factor: ask for the width directly.
        adapter=SeqBnConfig(reduction_factor=conf.hidden_size / bottleneck, leave_out=leave_out),
        # init "bert" (A, B ~ N(0, 0.02)) rather than the library's "lora" (B = 0): with B = 0 the
        # gradient of lora_A and of the LoRA gates is exactly 0 at insertion, so their Fisher would be 0
        # (PiSSA, the paper's LoRA init, does not exist in adapters and is not function-preserving
        # under a gate).
        lora=LoRAConfig(r=rank, alpha=spec.option(p, "alpha") or 2 * rank, dropout=0.0,
                        init_weights=spec.option(p, "lora_init"), attn_matrices=list(spec.option(p, "lora_matrices")),
                        leave_out=leave_out),
    )


def _insert_adapters(spec: MethodSpec, model: torch.nn.Module, p: Mapping[str, Any], layers: int,
                     family: str) -> torch.nn.Module:
    """An adapters-library method (its spec's adapters_config) on layers 0..layers-1 (`leave_out`
    names the others)."""
    import adapters

    from ..masks import is_head

    leave_out = list(range(layers, model.config.num_hidden_layers))
    config = spec.adapters_config(spec, p, model.config, leave_out)
    if spec.prefix and (attention := FAMILIES[family].prefix_attention):
        model.set_attn_implementation(attention)
    adapters.init(model)  # in place: ModernBERT goes through the library's plugin interface
    # Activating resets the adapter inside a dummy forward context that warns "none are activated".
    mixin_log = logging.getLogger("adapters.model_mixin")
    level = mixin_log.level
    mixin_log.setLevel(logging.ERROR)
    try:
        model.add_adapter(ADAPTER_NAME, config=config, set_active=True)
    finally:
        mixin_log.setLevel(level)
    model.train_adapter(ADAPTER_NAME)  # freezes the base model and activates the adapter
    # train_adapter freezes whatever the library counts as the model body; make the split exact:
    # trainable = the adapter's own parameters + the head, nothing else.
    for name, param in model.named_parameters():
        param.requires_grad_(is_head(name, family) or f".{ADAPTER_NAME}." in f".{name}.")
    return model


# --- the specs ------------------------------------------------------------------------------------

METHODS: dict[str, MethodSpec] = {m.name: m for m in [
    MethodSpec("lora", "peft", _insert_lora, _check_lora, widths=("rank",)),
    MethodSpec("dora", "peft", _insert_lora, _check_lora, widths=("rank",),
               library_kwargs={"use_dora": True}, fp32_base=("lora_magnitude_vector",)),
    MethodSpec("adapter", "adapters", _insert_adapters, _check_adapter, adapters_config=_adapter_config),
    MethodSpec("prefix", "adapters", _insert_adapters, _check_prefix, adapters_config=_prefix_config, prefix=True),
    MethodSpec("ia3", "peft", _insert_ia3, _check_nothing),
    MethodSpec("unipelt", "adapters", _insert_adapters, _check_unipelt, widths=("rank", "bottleneck"),
               adapters_config=_unipelt_config, prefix=True),
    # Not one of the paper's six: after them, so that their order (and every message listing them) stays.
    MethodSpec("vera", "peft", _insert_vera, _check_vera, widths=("rank",)),
]}
# family -> the methods it can take, in the order of the specs; the families in FAMILIES' order.
SUPPORT_MATRIX: dict[str, tuple[str, ...]] = {
    family: tuple(n for n in METHODS if n not in spec.refused) for family, spec in FAMILIES.items()}


def check_method(name: str, family: str) -> MethodSpec:
    """The spec of method `name`, or ConfigError naming the known methods, or saying why `family` cannot
    take it and what each supports."""
    if name not in METHODS:
        raise ConfigError(f"unknown PEFT method {name!r}; choose one of: {', '.join(METHODS)}")
    spec = METHODS[name]
    if family not in spec.families:
        why = spec.unsupported.get(family)
        raise ConfigError(f"PEFT method {name!r} does not support the {family} model family"
                          + (f": {why}" if why else "")
                          + f" ({name} supports {', '.join(spec.families)}; "
                            f"{family} supports {', '.join(SUPPORT_MATRIX.get(family, ()))})")
    return spec


# --- inserting and counting -----------------------------------------------------------------------

def insert_method(model: torch.nn.Module, peft_cfg: Mapping[str, Any], layers: int, family: str) -> torch.nn.Module:
    """Insert `peft_cfg['name']` on the bottom `layers` layers; the head stays trainable.

    Everything else is frozen. The result is still called as `model(**batch).logits`.
    """
    spec = check_method(peft_cfg["name"], family)
    check_layers(spec.name, layers, model.config.num_hidden_layers)
    return spec.insert(spec, model, peft_cfg, layers, family)


def check_layers(method: str, layers: int, depth: int, model: str = "the model") -> None:
    """ConfigError unless `method` can go on `layers` layers of a `depth`-layer model (1..depth)."""
    if not 1 <= layers <= depth:
        raise ConfigError(f"cannot insert {method} on {layers} layers: {model} has {depth} (allowed 1..{depth})")


def split_trainable(model: torch.nn.Module, family: str) -> tuple[dict[str, torch.nn.Parameter], dict[str, torch.nn.Parameter]]:
    """(head, candidates): the trainable parameters of the classification head and of the method."""
    from ..masks import is_head

    head, candidates = {}, {}
    for name, p in model.named_parameters():
        if p.requires_grad:
            (head if is_head(name, family) else candidates)[name] = p
    return head, candidates


def count_parameters(model: torch.nn.Module) -> tuple[int, int]:
    """(trainable, total). peft keeps a frozen copy of the head (`original_module`) that a deployed
    model does not carry; it is left out of the total."""
    trainable = total = 0
    for name, p in model.named_parameters():
        if ".original_module." in name:
            continue
        total += p.numel()
        trainable += p.numel() if p.requires_grad else 0
    return trainable, total


# Counts depend on the configs only: a sweep's process (or a study skipping its finished runs)
# builds each shape once instead of twice per run.
_COUNTS: dict[tuple, dict[str, int]] = {}


def count_on_meta(conf, peft_cfg: Mapping[str, Any], layers: int, family: str) -> dict[str, int]:
    """Trainable, head and total parameter counts of a method on `layers` layers, from the config
    alone (meta device: no weights, no download)."""
    import torch

    from .models import build_on_meta

    key = (conf.to_json_string(), json.dumps(dict(peft_cfg), sort_keys=True, default=str), layers, family)
    if key not in _COUNTS:
        cfg = dict(peft_cfg, init="default")  # PiSSA's SVD needs real weights; counts do not
        model = build_on_meta(conf)
        with torch.device("meta"):  # the inserted parameters too: a 1B model's adapters stay unallocated
            model = insert_method(model, cfg, layers, family)
        head, _ = split_trainable(model, family)
        trainable, total = count_parameters(model)
        _COUNTS[key] = {"trainable": trainable, "head": sum(p.numel() for p in head.values()), "total": total}
    return dict(_COUNTS[key])
