"""Trainable-parameter ratios of every budget row of Tables 1 and 2, from architecture configs alone.

    python -m fishtune.ratios [--out results/ratios.csv]

For each row of fishtune/reports/paper_data/ratios.csv (model, method, budget level, layers, the paper's
printed ratio) the method is inserted on the original run's layers of a model built on the meta
device from the architecture config kept in conf/model/arch/: no weights, no network. An original
row and its FISH row share the budget, so one row stands for both.

  ratio_pct = 100 x trainable / total
  trainable = the method's parameters + the classification head (a 2-class head)
  total     = every parameter of the model with the method inserted (peft's frozen copy of the
              head, `original_module`, is not part of the model and is left out)
  rel_diff  = ratio_pct / paper_ratio_pct - 1
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import pandas as pd
from omegaconf import OmegaConf

from ..harness import CONF_DIR
from ..harness.methods import METHODS, count_on_meta
from ..harness.models import arch_config
from ..harness.schedules import original_layers

PAPER_RATIOS = Path(__file__).resolve().parent / "paper_data" / "ratios.csv"
COLUMNS = ["model", "method", "layers", "rank", "trainable", "total", "ratio_pct", "paper_ratio_pct", "rel_diff"]
TOLERANCE = 0.02  # relative, the acceptance bound


def _yaml(group: str, name: str) -> dict:
    return OmegaConf.to_container(OmegaConf.load(CONF_DIR / group / f"{name}.yaml"), resolve=True)


def compute_ratios(paper: pd.DataFrame | None = None) -> pd.DataFrame:
    """One row per budget row of the paper, with our count next to the printed ratio."""
    paper = pd.read_csv(PAPER_RATIOS) if paper is None else paper
    rows = []
    for r in paper.itertuples(index=False):
        model_cfg, peft_cfg = _yaml("model", r.model), METHODS[r.method].defaults
        layers = original_layers(peft_cfg, int(r.budget))
        if layers != r.layers:  # the yaml's budget schedule must be the paper's
            raise ValueError(f"{r.method}: budget {r.budget} is {layers} layers in conf/peft, {r.layers} in the paper")
        counts = count_on_meta(arch_config(model_cfg, num_labels=2), peft_cfg, layers, model_cfg["family"])
        ratio = 100 * counts["trainable"] / counts["total"]
        rows.append({"model": r.model, "method": r.method, "layers": layers, "rank": peft_cfg.get("rank"),
                     "trainable": counts["trainable"], "total": counts["total"], "ratio_pct": round(ratio, 6),
                     "paper_ratio_pct": r.paper_ratio_pct, "rel_diff": round(ratio / r.paper_ratio_pct - 1, 4)})
    out = pd.DataFrame(rows, columns=COLUMNS)
    out["rank"] = out["rank"].astype("Int64")  # blank for methods without a rank
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="results/ratios.csv")
    args = parser.parse_args(argv)
    t0 = time.perf_counter()
    table = compute_ratios()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(out, index=False)
    print(table.to_string(index=False))
    far = table[table["rel_diff"].abs() > TOLERANCE]
    print(f"\nwrote {out} ({len(table)} rows, {time.perf_counter() - t0:.1f} s); "
          f"max |rel_diff| {table['rel_diff'].abs().max():.2%}; rows beyond {TOLERANCE:.0%}: {len(far)}")
    if len(far):
        print("beyond the tolerance (see docs/METHODS.md for the arithmetic):\n" + far.to_string(index=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
