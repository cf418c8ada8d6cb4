"""`make demo`: original LoRA vs fish, rand and rev masks at the same budget, on the embedded model.

Four real runs on SST-2 with the study's settings (profile=study: 1,000 training examples, 3 epochs,
lr 5e-3 and the classifier at 2e-2, the full dev set; docs/STUDY.md) in train.precision=auto (bf16 on a CPU with it), so the
original row learns well above the trivial baseline; prints one comparison table with that baseline.
Uses ../shared/glue_data or $GLUE_DIR when present, else the few rows shipped as test fixtures (which learn nothing: a plumbing check).
"""
from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from fishtune.harness import CONF_DIR
from fishtune.harness.run import run
from fishtune.reports.stats import trivial_baseline

ROOT = Path(__file__).resolve().parent.parent
TASKS = ("sst2",)   # the task the embedded model learns at CPU scale (docs/STUDY.md)
# The mean-head study's settings (conf/experiment/study_mean_core.yaml: the classifier at its own
# 2e-2), but train.precision=auto (bf16 where the CPU has it) where the study says fp32.
DEMO = ["profile=study", "budget=1", "train.head_lr_scale=400", "train.precision=auto"]
ROWS = (("original (1 layer)", "none"), ("fish (5 layers)", "fish"), ("rand (5 layers)", "rand"),
        ("rev (5 layers)", "rev"))


def glue_dir() -> Path:
    for candidate in (os.environ.get("GLUE_DIR"), ROOT.parent / "shared" / "glue_data"):
        if candidate and Path(candidate).is_dir():
            return Path(candidate)
    print("demo: no GLUE folder found (set GLUE_DIR); using the few rows in tests/fixtures/glue")
    return ROOT / "tests" / "fixtures" / "glue"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="scripts/demo.py", description=__doc__.split("\n\n")[0])
    ap.add_argument("overrides", nargs="*", help="Hydra overrides for every run, e.g. paths.runs_dir=runs/mine")
    overrides = ap.parse_args(argv).overrides
    glue = glue_dir()
    rows = []
    t0 = time.time()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        for task in TASKS:
            for label, mode in ROWS:
                cfg = compose("config", overrides=[*DEMO, f"task={task}", f"mask={mode}", f"data.glue_dir={glue}",
                                                   "paths.runs_dir=runs/demo", *overrides])
                print(f"demo: {task} {label} ...", flush=True)
                r = run(OmegaConf.to_container(cfg, resolve=True), progress=False)
                rows.append((task, label, r))
    runs_dir = Path(cfg.paths.runs_dir).resolve()   # the last override wins: paths.runs_dir=... moves it
    first = rows[0][2]
    print(f"\nFISH-Tuning demo: {first['model']} + LoRA r1, budget = the 1-layer original's trainable count "
          f"({first['train_examples']} training examples, {len(first['history'])} epochs, full dev set of "
          f"{first['dev_examples']}, seed {first['seed']}, {first['precision']}; {time.time() - t0:.0f} s)\n")
    print(f"{'task':6} {'row':20} {'trainable':>9} {'ratio %':>8} {'best dev':>9} {'epoch':>5}")
    for task in TASKS:
        labels = next(r["dev_labels"] for t, _, r in rows if t == task)
        print(f"{task:6} {'trivial baseline':20} {'':>9} {'':>8} {trivial_baseline(task, labels):9.2f} {'':>5}")
        for _, label, r in (row for row in rows if row[0] == task):
            print(f"{task:6} {label:20} {r['trainable']:9d} {r['ratio_pct']:8.4f} {r['best']['score']:9.2f} "
                  f"{r['best']['epoch']:5d}")
    print("\nOne seed: single runs differ by a few points; results/study/ has 5 seeds per cell with intervals.")
    print(f"Result files: {runs_dir}  (rerunning skips finished runs; `make clean` starts over)")


if __name__ == "__main__":
    main()
