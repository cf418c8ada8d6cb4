"""The harness: runs the paper's experiments from Hydra configs (`python -m fishtune.run ...`).

tasks (the GLUE task table), data (GLUE files, tokenising, batches), models (the model registry),
methods (one MethodSpec per PEFT method), schedules (which layers a run inserts on), train (the masked
Adam loop), run (one run, config to result file), cli (the command line and Hydra), signals (SIGTERM,
SIGINT, a gone launcher), results (the result file and its RunResult type),
metrics (GLUE metrics), tracking (wandb), sweeps (an experiment's runs), validate (config checks
without torch), studies (each study's arms and reports, and their runner). It imports the library (the package root), never the reports.
"""
from __future__ import annotations

from pathlib import Path

# The Hydra configs live in the repository's top-level conf/ and ship inside the package as
# fishtune/conf (pyproject's package-data), so that an installed fishtune finds them wherever it runs
# from. In a checkout fishtune/conf is a symlink to ../conf; resolve() names the folder itself.
CONF_DIR = (Path(__file__).resolve().parents[1] / "conf").resolve()
