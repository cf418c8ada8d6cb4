"""`make demo`: original LoRA vs fish, rand and rev masks at the same budget, on the embedded model.

Real runs (quick profile: subsampled GLUE, few epochs) on two tasks; prints one comparison table.
Uses ../shared/glue_data or $GLUE_DIR when present, else the few rows shipped as test fixtures.
"""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from fishtune.run import run

ROOT = Path(__file__).resolve().parent.parent
TASKS = ("sst2", "stsb")  # short sentences: the demo stays within minutes on 2 CPU cores
# The quick profile, smaller still: a demonstration of the pipeline, not a reproduction of the paper.
DEMO = ["profile=quick", "data.train_samples=256", "data.dev_samples=200", "train.max_epochs=3", "train.patience=3",
        "train.batch_size=8",  # more, smaller steps: the same compute learns visibly more
        "train.lr_scale=100", "fisher.samples=32"]
ROWS = (("original (1 layer)", "none"), ("fish (5 layers)", "fish"), ("rand (5 layers)", "rand"),
        ("rev (5 layers)", "rev"))


def glue_dir() -> Path:
    for candidate in (os.environ.get("GLUE_DIR"), ROOT.parent / "shared" / "glue_data"):
        if candidate and Path(candidate).is_dir():
            return Path(candidate)
    print("demo: no GLUE folder found (set GLUE_DIR); using the few rows in tests/fixtures/glue")
    return ROOT / "tests" / "fixtures" / "glue"


def main() -> None:
    glue = glue_dir()
    rows = []
    t0 = time.time()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        for task in TASKS:
            for label, mode in ROWS:
                cfg = compose("config", overrides=[
                    *DEMO, f"task={task}", f"mask={mode}", "budget=1", f"data.glue_dir={glue}",
                    "paths.runs_dir=runs/demo", *sys.argv[1:]])
                r = run(OmegaConf.to_container(cfg, resolve=True))
                rows.append((task, label, r))
    print(f"\nFISH-Tuning demo: {rows[0][2]['model']} + LoRA r1, budget = the 1-layer original's trainable count "
          f"(256 training examples, batch 8, 3 epochs, {time.time() - t0:.0f} s)\n")
    print(f"{'task':6} {'row':20} {'trainable':>9} {'ratio %':>8} {'best dev':>9} {'epoch':>5} {'metric'}")
    for task, label, r in rows:
        metrics = ", ".join(f"{k} {v:.1f}" for k, v in r["best"]["metrics"].items() if k != "score")
        print(f"{task:6} {label:20} {r['trainable']:9d} {r['ratio_pct']:8.4f} {r['best']['score']:9.2f} "
              f"{r['best']['epoch']:5d} {metrics}")
    print(f"\nResult files: {ROOT / 'runs' / 'demo'}  (rerunning skips finished runs; `make clean` starts over)")


if __name__ == "__main__":
    main()
