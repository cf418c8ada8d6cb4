"""Which layers a run inserts its method on: the paper's layer schedules (torch-free).

A method's config names the layers of its original runs per budget level (`peft.budget_layers`,
LoRA 1, 2, 3, 4; IA3 3, 5, 8, 10) and of its FISH runs (`peft.fish_layers`, 5; IA3 12). The
harness fits them to the model's depth (fishtune.run); the aggregator reads the nominal schedule,
the layers a paper row names (fishtune.aggregate), without importing torch.
"""
from __future__ import annotations

import math
from typing import Any, Mapping

from ..modes import MODES
from .checks import ConfigError


def layer_schedule(peft_cfg: Mapping[str, Any], depth: int | None = None) -> tuple[list[int], int]:
    """(budget_layers, fish_layers) of a method, fitted to a model of `depth` layers.

    The paper's schedules are for 12-layer BERT (IA3: originals on 3, 5, 8, 10, FISH on 12). When a
    schedule does not fit a shallower model (IA3 on the 6-layer MiniLM of the quick profile), every
    count is scaled by depth / deepest and rounded up, keeping the order of the budgets. A schedule that
    fits is used as written (LoRA's 1-4 and 5 on MiniLM, ModernBERT or LLaMA). Only the method's
    shipped schedule (conf/peft/<name>.yaml) is fitted: one set on the command line that does not fit
    is refused (ConfigError), never silently changed.
    """
    levels, fish = [int(x) for x in peft_cfg["budget_layers"]], int(peft_cfg["fish_layers"])
    deepest = max(levels + [fish])
    if depth is not None and deepest > depth:
        from .methods import METHODS

        spec = METHODS.get(peft_cfg.get("name"))
        if spec is None or spec.schedule() != (levels, fish):
            key, value = ("peft.fish_layers", fish) if fish > depth else ("peft.budget_layers", levels)
            raise ConfigError(f"{key}={value}: the model has {depth} layers (allowed 1..{depth}); only the shipped "
                              f"schedule of {peft_cfg.get('name')} is fitted to a shallower model")
        levels = [max(1, math.ceil(x * depth / deepest)) for x in levels]
        fish = depth
    return levels, fish


def original_layers(peft_cfg: Mapping[str, Any], budget: int, depth: int | None = None) -> int:
    """Layers of the original run at budget level `budget` (1-based into peft.budget_layers)."""
    levels, _ = layer_schedule(peft_cfg, depth)
    if not 1 <= budget <= len(levels):
        raise ConfigError(f"unknown budget level {budget}; choose one of: {', '.join(map(str, range(1, len(levels) + 1)))}")
    return levels[budget - 1]


def run_layers(peft_cfg: Mapping[str, Any], mask_mode: str, budget: int, depth: int | None = None) -> int:
    """Where this run inserts the method: explicit peft.layers, else the original run's layers (a mode
    whose ModeSpec.original_layers says so: none, head_only) or peft.fish_layers (a masked run), fitted
    to the model's depth."""
    if peft_cfg.get("layers") is not None:
        return int(peft_cfg["layers"])
    spec = MODES.get(mask_mode) if isinstance(mask_mode, str) else None  # a mode no spec knows (an old result file's) reads as a masked run, as before
    if spec is not None and spec.original_layers:
        return original_layers(peft_cfg, budget, depth)
    return layer_schedule(peft_cfg, depth)[1]
