"""The runs behind each paper table: expand an experiment config the way `fishtune.run -m` would.

An experiment (conf/experiment/<name>.yaml) lists its sweep under `hydra.sweeper.params`. Hydra's basic
sweeper launches the Cartesian product of those params and the command-line overrides (a command-line
sweep of the same key replaces the experiment's: `task=mrpc,rte` narrows a table to two tasks). This
module repeats that expansion with Hydra's own parser and product, then composes every job with the
compose API, so tests and `python -m fishtune.harness.sweeps` see exactly the configs a multirun would run.

Tables whose rows are not a product of config values (3 and 4) sweep `+row`, a group of small configs
(conf/row/) that each set a whole row's values; a row leaves no trace in the composed config, so a
run shared by two tables composes to the same config and the same result file.

    python -m fishtune.harness.sweeps table5                 # count and list the runs of Table 5
    python -m fishtune.harness.sweeps table5 task=mrpc,rte   # ... narrowed like `make table5 TASKS=mrpc,rte`
    python -m fishtune.harness.sweeps --all                  # every experiment, and the union of their runs
"""
from __future__ import annotations

import argparse
from typing import Any, Iterable, Sequence

from hydra import compose, initialize_config_dir
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf

from . import CONF_DIR
from .results import config_hash

EXPERIMENTS = ("table1", "table2", "table3", "table4", "table5", "figure3")   # the paper's tables and figure
# Our own sweeps (docs/STUDY.md, docs/BENCH.md): every other experiment file, so a new one needs no edit here.
STUDIES = tuple(sorted(p.stem for p in (CONF_DIR / "experiment").glob("*.yaml") if p.stem not in EXPERIMENTS))


class _Hydra:
    """Hydra's global state, initialised on our conf/ for the duration of a `with` block."""

    def __enter__(self):
        # A caller (a test, a notebook) may have left Hydra initialised; compose needs it clean.
        GlobalHydra.instance().clear()
        self._ctx = initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3")
        self._ctx.__enter__()
        return self

    def __exit__(self, *exc):
        self._ctx.__exit__(*exc)


def sweep_params(experiment: str) -> dict[str, str]:
    """The experiment's `hydra.sweeper.params`: override key -> comma-separated values."""
    with _Hydra():
        cfg = compose("config", overrides=[f"+experiment={experiment}"], return_hydra_config=True)
    return dict(OmegaConf.to_container(cfg.hydra.sweeper.params) or {})


def job_overrides(experiment: str, overrides: Sequence[str] = ()) -> list[list[str]]:
    """The override list of every job `python -m fishtune.run -m +experiment=<experiment> <overrides>`
    launches, in launch order."""
    params = [f"{k}={v}" for k, v in sweep_params(experiment).items()]
    # Same order as BasicSweeper.sweep: the config's params, then the command line (which wins).
    parsed = OverridesParser.create().parse_overrides([*params, f"+experiment={experiment}", *overrides])
    (jobs,) = BasicSweeper.split_arguments(parsed, max_batch_size=None)
    return jobs


def compose_run(overrides: Sequence[str]) -> dict[str, Any]:
    """The resolved config one job runs with (no `hydra` node), as a plain dict."""
    with _Hydra():
        return _compose(overrides)


def _compose(overrides: Sequence[str]) -> dict[str, Any]:
    from .train import resolve_precision

    cfg = OmegaConf.to_container(compose("config", overrides=list(overrides)), resolve=True)
    resolve_precision(cfg["train"])   # as fishtune.run's plan does: the run's identity on this machine
    return cfg


def run_configs(experiment: str, overrides: Sequence[str] = ()) -> list[dict[str, Any]]:
    """Resolved config of every run of an experiment (see `job_overrides`)."""
    jobs = job_overrides(experiment, overrides)
    with _Hydra():
        return [_compose(job) for job in jobs]


def unique_runs(configs: Iterable[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """config_hash -> config: the runs left once configs that share a result file are merged."""
    return {config_hash(c): c for c in configs}


def describe(config: dict[str, Any]) -> str:
    """One short line naming a run by the values the tables are defined by."""
    p, m = config["peft"], config["mask"]
    extra = "".join(f" {k}={v}" for k, v in (("layers", p.get("layers")), ("budget_rank", m.get("budget_rank")))
                    if v is not None)
    return (f"{config['model']['name']} {p['name']} r{p.get('rank', '-')} {m['mode']} b{config['budget']}"
            f"{extra} {config['task']['name']} seed={config['seed']}")


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("experiment", nargs="?", choices=EXPERIMENTS + STUDIES)
    ap.add_argument("overrides", nargs="*", help="Hydra overrides, as on the fishtune.run command line")
    ap.add_argument("--all", action="store_true", help="count every paper experiment and the union of their runs")
    args = ap.parse_args(argv)
    if args.all:
        union: dict[str, dict] = {}
        for name in EXPERIMENTS:
            runs = unique_runs(run_configs(name, args.overrides))
            new = len(set(runs) - set(union))
            union.update(runs)
            print(f"{name:8s} {len(runs):4d} runs, {new:4d} not in an experiment above")
        print(f"union    {len(union):4d} distinct runs")
    elif args.experiment:
        configs = run_configs(args.experiment, args.overrides)
        for c in configs:
            print(config_hash(c), describe(c))
        print(f"{args.experiment}: {len(configs)} runs ({len(unique_runs(configs))} distinct)")
    else:
        ap.error("name an experiment or pass --all")


if __name__ == "__main__":
    main()
