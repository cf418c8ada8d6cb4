"""The runs behind each paper table: expand an experiment config the way `fishtune.run -m` would.

An experiment (conf/experiment/<name>.yaml) lists its sweep under `hydra.sweeper.params`. Hydra's basic
sweeper launches the Cartesian product of those params and the command-line overrides (a command-line
sweep of the same key replaces the experiment's: `task=mrpc,rte` narrows a table to two tasks). This
module repeats that expansion with Hydra's own parser and product, then composes every job with the
compose API, so tests and `python -m fishtune.harness.sweeps` see exactly the configs a multirun would run.
Jobs that differ only in values (seed, budget, train.lr), not in a group's option, share one composition
(`compose_jobs`): Hydra composes a config in about a quarter of a second, a sweep of 300 runs in over a minute.

Before a sweep is launched, fishtune.run asks `finished_jobs` whether every one of its runs is finished
already: then it says so in one line and launches nothing (a rebuild of committed runs takes seconds).

Tables whose rows are not a product of config values (3 and 4) sweep `+row`, a group of small configs
(conf/row/) that each set a whole row's values; a row leaves no trace in the composed config, so a
run shared by two tables composes to the same config and the same result file.

    python -m fishtune.harness.sweeps table5                 # count and list the runs of Table 5
    python -m fishtune.harness.sweeps table5 task=mrpc,rte   # ... narrowed like `make table5 TASKS=mrpc,rte`
    python -m fishtune.harness.sweeps --all                  # every experiment, and the union of their runs
"""
from __future__ import annotations

import argparse
import copy
from typing import Any, Iterable, Iterator, Sequence

from hydra import compose, initialize_config_dir
from hydra._internal.config_loader_impl import ConfigLoaderImpl
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
    with _Hydra():
        return _sweep_jobs([f"+experiment={experiment}", *overrides])


def _sweep_jobs(overrides: Sequence[str]) -> list[list[str]] | None:
    """The job override lists of `fishtune.run -m OVERRIDES` in launch order, expanded as Hydra's basic
    sweeper does (its config's hydra.sweeper.params, then the command line, which wins); None when the
    config names another sweeper. Within `_Hydra`."""
    from hydra.types import RunMode

    loader = GlobalHydra.instance().config_loader()
    cfg = loader.load_configuration("config", list(overrides), run_mode=RunMode.MULTIRUN)
    if cfg.hydra.sweeper.get("_target_") != f"{BasicSweeper.__module__}.{BasicSweeper.__name__}":
        return None
    params = cfg.hydra.sweeper.get("params") or {}
    params = [f"{k}={v}" for k, v in params.items()]
    # Same order as BasicSweeper.sweep: the config's params, then the command line's (not Hydra's own) overrides.
    parsed = OverridesParser.create(config_loader=loader).parse_overrides([*params, *cfg.hydra.overrides.task])
    return [job for batch in BasicSweeper.split_arguments(parsed, max_batch_size=None) for job in batch]


def compose_run(overrides: Sequence[str]) -> dict[str, Any]:
    """The resolved config one job runs with (no `hydra` node), as a plain dict."""
    with _Hydra():
        return _compose(overrides)


def _compose(overrides: Sequence[str]) -> dict[str, Any]:
    return next(compose_jobs([overrides]))


def compose_jobs(jobs: Iterable[Sequence[str]], resolve_precision: bool = True) -> Iterator[dict[str, Any]]:
    """The resolved config (no `hydra` node; train.precision as this machine resolves it, unless
    `resolve_precision` is off: torch is imported for it) of each job's override list, as `compose` gives it,
    within `_Hydra`. Jobs with the same group options (task=, peft=,
    +experiment=, ...) share one composition, to which each job's value overrides are then applied the
    way Hydra applies them after composing (ConfigLoaderImpl._apply_overrides_to_config)."""
    loader = GlobalHydra.instance().config_loader()
    parser = OverridesParser.create(config_loader=loader)
    composed: dict[tuple[str, ...], Any] = {}
    known: dict[str, Any] = {}   # each override parsed once: a sweep repeats them job after job
    for job in jobs:
        parsed = [known.get(text) or known.setdefault(text, parser.parse_overrides([text])[0]) for text in job]
        # Hydra's own test (defaults_list.Overrides): an override of a group's option, else of a value.
        is_group = [loader.repository.group_exists(o.key_or_group) and not isinstance(o.value(), dict)
                    for o in parsed]
        groups = tuple(o.input_line for o, g in zip(parsed, is_group) if g)
        if groups not in composed:
            composed[groups] = compose("config", overrides=list(groups))
        cfg = copy.deepcopy(composed[groups])
        ConfigLoaderImpl._apply_overrides_to_config([o for o, g in zip(parsed, is_group) if not g], cfg)
        config = OmegaConf.to_container(cfg, resolve=True)
        if resolve_precision:   # as fishtune.run's plan does: the run's identity on this machine
            from .train import resolve_precision as resolve

            resolve(config["train"])
        yield config


def run_configs(experiment: str, overrides: Sequence[str] = ()) -> list[dict[str, Any]]:
    """Resolved config of every run of an experiment (see `job_overrides`)."""
    with _Hydra():
        return list(compose_jobs(_sweep_jobs([f"+experiment={experiment}", *overrides])))


def finished_jobs(overrides: Sequence[str]) -> int | None:
    """The number of jobs `python -m fishtune.run -m OVERRIDES` would launch when the run of every one is
    finished (its result file there and valid: fishtune.harness.run.finished_file), found without
    launching a job or loading a model; None at the first job that is not, or when the sweep cannot be
    expanded here (another sweeper, a composition Hydra would refuse: the launch then says why)."""
    from .run import finished_file

    try:
        with _Hydra():
            jobs = _sweep_jobs(overrides)
            if not jobs:
                return None
            for config in compose_jobs(jobs, resolve_precision=False):
                if finished_file(config) is None:
                    return None
    except Exception:  # noqa: BLE001 - a composition Hydra refuses: the launch says why, as it always has
        return None
    return len(jobs)


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
