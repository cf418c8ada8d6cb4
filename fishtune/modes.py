"""The mask modes of build_mask and fish_masks, torch-free, so that config checks can read them too."""
from __future__ import annotations

# fish_shuffled and fish_spread split fish into where the budget goes and which entries get it (docs/STUDY.md).
MASK_MODES = ("none", "fish", "rand", "rev", "fish_shuffled", "fish_spread")
# The modes that rank entries by an empirical Fisher (and so need its samples).
FISHER_MODES = ("fish", "rev", "fish_shuffled", "fish_spread")


def check_mode(mode: str) -> None:
    """Reject a mask mode build_mask does not know (ValueError naming the known ones)."""
    if mode not in MASK_MODES:
        raise ValueError(f"unknown mask mode {mode!r}; choose one of: {', '.join(MASK_MODES)}")
