"""The studies and the paper's tables, each named once: its arms (which experiment's sweep goes into which runs
folder, with which extra overrides) and its reports (the `python -m` commands that rebuild its result files).

    python -m fishtune.studies list                         # every study: its arms and runs folders
    python -m fishtune.studies run mean [--arms core,reference] [--launcher basic] [seed=4,5 ...]   # Hydra overrides
    python -m fishtune.studies report mean                  # only rebuild results/study/mean/, training nothing
    python -m fishtune.studies run table5 --profile quick task=mrpc,rte   # a paper table (docs/TABLES.md)

`run` runs each arm's sweep (`python -m fishtune.run -m +experiment=E paths.runs_dir=D ...`, which skips every
run whose result file exists), then the study's reports, also when a sweep failed (its cells stay blank), and
exits with the first failing status. `report` runs the reports only. The paths are relative to the working
directory (the repository root under make). `make study NAME=...` and `make report NAME=...` call these.

Adding a study is one `Study` entry in STUDIES (its experiments in conf/experiment/). Launchers:
`basic` (Hydra's own, one run after another), `parallel` (FISHTUNE_JOBS local workers, default 2, nproc /
workers torch threads each unless OMP_NUM_THREADS says otherwise) or `slurm` (one array, docs/SLURM.md).
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
from dataclasses import dataclass
from typing import Sequence

from . import CONF_DIR
from .checks import ConfigError


@dataclass(frozen=True)
class Arm:
    """One sweep of a study: conf/experiment/<experiment>.yaml into `runs_dir`, with `overrides` after it."""
    name: str
    experiment: str
    runs_dir: str
    overrides: tuple[str, ...] = ()


@dataclass(frozen=True)
class Study:
    """A study: its arms, run in order, then its reports, each a module and its arguments (`python -m ...`).
    `committed`: its result files are in git, so `report` rebuilds the committed tables byte for byte."""
    name: str
    about: str
    arms: tuple[Arm, ...]
    reports: tuple[tuple[str, ...], ...]
    launcher: str = "parallel"
    committed: bool = True


def page(runs_dir: str | tuple[str, ...], out: str, *options: str) -> tuple[str, ...]:
    """The results page of a runs folder, or of several on one page (fishtune.report)."""
    return ("fishtune.report", *((runs_dir,) if isinstance(runs_dir, str) else runs_dir), "--out", out, *options)


STUDY_RUNS = "results/study/runs"
WHY_RUNS = "results/study/why/runs"
MEAN_RUNS = "results/study/mean/runs"
METHODS_RUNS = "results/study/methods/runs"
ADAPTIVE_RUNS = "results/study/adaptive/runs"
SMOLLM2_RUNS = "results/study/smollm2/runs"
PARITY_METHODS = "results/bf16-parity/methods"
# The methods study's pilot and the bf16 parity of the five methods: its sweeps narrowed to these cells.
METHODS_PILOT = ("seed=1,2", "budget=1", "mask=none", "task=sst2")
PARITY_METHODS_CELLS = ("seed=1,2,3", "budget=1", "mask=none", "task=sst2")


def methods_arms(runs_dir: str, overrides: tuple[str, ...] = (), suffix: str = "") -> tuple[Arm, ...]:
    """The methods study's two sweeps (IA3 has its own file: its layer counts differ) into one folder."""
    return (Arm("methods" + suffix, "study_methods", runs_dir, overrides),
            Arm("ia3" + suffix, "study_methods_ia3", runs_dir, overrides))


METHODS_REPORTS = (
    ("fishtune.reports.methods_study", "--runs-dir", METHODS_RUNS, "--runs-dir", f"{MEAN_RUNS}/core",
     "--out", "results/study/methods"),
    ("fishtune.report", METHODS_RUNS, "--table1-runs", f"{MEAN_RUNS}/core", "--out", "results/study/methods/index.html",
     "--title", "fishtune: FISH in all six PEFT methods (LoRA, DoRA, Adapter, Prefix, IA3, UniPELT)"),
)

STUDIES = (
    Study("pooler", "original, fish, rand, rev and adaptive LoRA on the embedded MiniLM (pooler head), 200 runs "
          "(docs/STUDY_POOLER.md)",
          (Arm("core", "study", STUDY_RUNS),),
          (("fishtune.study", "--runs-dir", STUDY_RUNS, "--out", "results/study"),
           page(STUDY_RUNS, "results/study/index.html"))),
    Study("pooler-why", "why rand beats fish under the pooler head: mechanism, lr and converged arms",
          tuple(Arm(arm, f"study_{arm}", f"{WHY_RUNS}/{arm}") for arm in ("mechanism", "lr", "converged")),
          (("fishtune.study_why", "--study-runs", STUDY_RUNS, "--runs-dir", WHY_RUNS, "--out", "results/study/why"),
           page(WHY_RUNS, "results/study/why/index.html",
                "--title", "fishtune study: why rand beats fish (mechanism, lr and converged arms)"))),
    # The mean-head pilot's result files were not kept (docs/STUDY.md): only its tables are committed.
    Study("mean-pilot", "the mean-head study's lr pilot on original rows (stage 1)",
          (Arm("pilot", "study_mean_pilot", f"{MEAN_RUNS}/pilot"),),
          (("fishtune.reports.pilot", "--runs-dir", f"{MEAN_RUNS}/pilot", "--out", "results/study/mean/pilot",
            "--reference-runs", f"{MEAN_RUNS}/pilot"),), committed=False),
    Study("mean-pilot-head", "the pilot's stage 2: the head at a rate of its own",
          (Arm("pilot_head", "study_mean_pilot_head", f"{MEAN_RUNS}/pilot_head"),),
          (("fishtune.reports.pilot", "--runs-dir", f"{MEAN_RUNS}/pilot_head",
            "--out", "results/study/mean/pilot_head", "--reference-runs", f"{MEAN_RUNS}/pilot"),), committed=False),
    Study("mean", "the study under the mean head: core, reference, mechanism and converged arms (docs/STUDY.md)",
          tuple(Arm(arm, f"study_mean_{arm}", f"{MEAN_RUNS}/{arm}")
                for arm in ("core", "reference", "mechanism", "converged")),
          (("fishtune.study", "--runs-dir", f"{MEAN_RUNS}/core", "--out", "results/study/mean/core"),
           ("fishtune.study_why", "--study-runs", f"{MEAN_RUNS}/core", "--runs-dir", MEAN_RUNS,
            "--out", "results/study/mean/why"),
           ("fishtune.reports.heads", "--new", MEAN_RUNS, "--out", "results/study/mean"),
           page(MEAN_RUNS, "results/study/mean/index.html", "--title",
                "fishtune study under the mean head: core, reference, mechanism and converged arms"))),
    Study("adaptive", "FisherAdapTune under the mean head, budget-matched: adaptive_fish and adaptive from all "
          "entries against the mean study's core arm (docs/STUDY.md)",
          (Arm("calibration1", "study_mean_adaptive_all1", f"{ADAPTIVE_RUNS}/calibration", ("seed=6",)),
           Arm("calibration2", "study_mean_adaptive_all2", f"{ADAPTIVE_RUNS}/calibration", ("seed=6",)),
           Arm("fish", "study_mean_adaptive_fish", f"{ADAPTIVE_RUNS}/fish"),
           Arm("all1", "study_mean_adaptive_all1", f"{ADAPTIVE_RUNS}/all"),
           Arm("all2", "study_mean_adaptive_all2", f"{ADAPTIVE_RUNS}/all")),
          (("fishtune.reports.adaptive_study", "--runs-dir", ADAPTIVE_RUNS, "--core-runs", f"{MEAN_RUNS}/core",
            "--out", "results/study/adaptive"),
           page(ADAPTIVE_RUNS, "results/study/adaptive/index.html", "--title",
                "fishtune: FisherAdapTune under the mean head (adaptive_fish, adaptive from all entries)"))),
    Study("smollm2", "Table 2's LLaMA rows on SmolLM2-135M: the pilot and head-only reference on original rows, "
          "then original, fish and rand at the chosen rate beside the paper's values (docs/STUDY.md)",
          (Arm("pilot", "study_smollm2_pilot", f"{SMOLLM2_RUNS}/pilot"),
           Arm("reference", "study_smollm2_reference", f"{SMOLLM2_RUNS}/reference"),
           Arm("core", "study_smollm2", f"{SMOLLM2_RUNS}/core")),
          (("fishtune.reports.pilot", "--runs-dir", f"{SMOLLM2_RUNS}/pilot", "--out", "results/study/smollm2/pilot",
            "--reference-runs", f"{SMOLLM2_RUNS}/reference", "--rule", "clears-trivial"),
           ("fishtune.reports.paper_rows", "--runs-dir", f"{SMOLLM2_RUNS}/core", "--paper-model", "llama32_1b",
            "--out", "results/study/smollm2/core", "--cost-beside", f"{MEAN_RUNS}/core"),
           page(SMOLLM2_RUNS, "results/study/smollm2/index.html", "--title",
                "fishtune: Table 2's LLaMA rows on SmolLM2-135M (pilot, head-only reference; original, fish and "
                "rand LoRA on W_O)"),
           # The second model and the second method on one page: this study, and FisherAdapTune with the core arm
           # it is paired with.
           page((SMOLLM2_RUNS, ADAPTIVE_RUNS, f"{MEAN_RUNS}/core"), "results/study/second/index.html", "--title",
                "fishtune: a second model (SmolLM2-135M, Table 2's LLaMA rows) and a second method (FisherAdapTune "
                "on MiniLM, with the mean study's core arm)"))),
    Study("methods", "FISH in DoRA, Adapter, Prefix, IA3 and UniPELT, Table 1's layout with the mean study's LoRA "
          "rows (make table1 PROFILE=study)", methods_arms(METHODS_RUNS), METHODS_REPORTS),
    Study("methods-pilot", "the methods study narrowed to the original rows at budget 1 on SST-2, seeds 1-2",
          methods_arms(METHODS_RUNS, METHODS_PILOT), METHODS_REPORTS),
    Study("bf16-parity", "the pooler study's original and fish rows at budget 1 on SST-2 and STS-B in bf16, each "
          "paired with its fp32 run (docs/BENCH.md)",
          (Arm("bf16", "bf16_parity", "results/bf16-parity/runs"),),
          (("fishtune.parity", "--a", "results/bf16-parity/runs", "--b", STUDY_RUNS, "--out", "results/bf16-parity"),)),
    # Both precisions on one machine: fp32 kernels may differ between CPU kinds (docs/STUDY.md), so the
    # methods study's own fp32 files are not the twins.
    Study("bf16-parity-methods", "the five methods' original rows (SST-2, budget 1, seeds 1-3) in bf16 and fp32",
          methods_arms(f"{PARITY_METHODS}/runs/bf16", (*PARITY_METHODS_CELLS, "train.precision=bf16"), "-bf16")
          + methods_arms(f"{PARITY_METHODS}/runs/fp32", PARITY_METHODS_CELLS, "-fp32"),
          (("fishtune.parity", "--a", f"{PARITY_METHODS}/runs/bf16", "--b", f"{PARITY_METHODS}/runs/fp32",
            "--out", PARITY_METHODS),)),
)
BY_NAME = {s.name: s for s in STUDIES}

# The paper's tables (docs/TABLES.md): the aggregator's --tables value of each. `tables` sweeps nothing.
TABLES = {"table1": "1", "table2": "2", "table3": "3", "table4": "4", "table5": "5", "figure3": "figure3",
          "tables": "all"}
PROFILES = ("quick", "paper", "study")
# Outside the paper profile, stand-ins that need no hub take the paper's models' places (the aggregator maps
# them back): the embedded MiniLM (6 layers: rows that need more fail and stay blank) and tiny random models.
STAND_INS = {"bert_base": "minilm", "modernbert_base": "tiny_modernbert", "llama32_1b": "tiny_llama"}


def paper_table(name: str, profile: str = "quick", runs_dir: str | None = None, results_dir: str | None = None,
                models: dict[str, str] | None = None, agg_args: Sequence[str] = ()) -> Study:
    """A paper table (or figure3, or `tables`: all of them, aggregating only) as a study of one arm:
    conf/experiment/<name>.yaml under `profile` into runs/<profile>, then fishtune.aggregate. The study
    profile is the methods study (table1 only: results/study/ holds the LoRA study's own tables)."""
    if profile not in PROFILES:
        raise ConfigError(f"profile {profile!r}: choose one of {', '.join(PROFILES)}")
    if profile == "study":
        if name != "table1":
            raise ConfigError(f"{name}: profile study builds table1 only (the methods study, docs/STUDY.md); "
                              f"{name} takes profile quick or paper")
        return BY_NAME["methods"]
    models = {**({m: m for m in STAND_INS} if profile == "paper" else STAND_INS), **(models or {})}
    runs_dir = runs_dir or f"runs/{profile}"
    results_dir = results_dir or ("results" if profile == "paper" else f"results/{profile}")
    used = ("modernbert_base", "llama32_1b") if name == "table2" else ("bert_base",)
    arms = () if name == "tables" else (
        Arm(name, name, runs_dir, (f"profile={profile}", "model=" + ",".join(models[m] for m in used))),)
    model_map = ",".join(f"{paper}={ours}" for paper, ours in models.items())
    report = ("fishtune.aggregate", "--runs-dir", runs_dir, "--out", results_dir, "--model-map", model_map,
              *agg_args, "--tables", TABLES[name])
    return Study(name, f"the paper's {name} under profile {profile}", arms, (report,), launcher="basic",
                 committed=False)


def known() -> str:
    """Every name `run` and `report` take, comma-separated."""
    return ", ".join([*BY_NAME, *TABLES])


def get_study(name: str, **table_options) -> Study:
    """The study `name`, or a paper table built with `table_options` (paper_table); ConfigError otherwise."""
    if name in TABLES:
        return paper_table(name, **table_options)
    if name not in BY_NAME:
        raise ConfigError(f"unknown study {name!r}: choose one of {known()}")
    if any(v for v in table_options.values()):
        raise ConfigError(f"{name}: --profile, --runs-dir, --results-dir, --model and --agg-args are for the "
                          f"paper's tables ({', '.join(TABLES)})")
    return BY_NAME[name]


def pick_arms(study: Study, names: str | None) -> tuple[Arm, ...]:
    """The arms named in the comma list `names` (all when None), in the study's order."""
    if names is None:
        return study.arms
    wanted = [n for n in names.split(",") if n]
    bad = [n for n in wanted if n not in {a.name for a in study.arms}]
    if bad or not wanted:
        raise ConfigError(f"--arms {names!r}: {study.name}'s arms are {', '.join(a.name for a in study.arms)}")
    return tuple(a for a in study.arms if a.name in wanted)


def launchers() -> list[str]:
    """basic (Hydra's own) and every conf/hydra/launcher/ file."""
    return ["basic", *sorted(p.stem for p in (CONF_DIR / "hydra" / "launcher").glob("*.yaml"))]


def sweep_env(launcher: str) -> dict[str, str]:
    """The environment of a sweep: local workers split the cores between them instead of each taking them all
    (torch reads OMP_NUM_THREADS when it starts; workers inherit it)."""
    env = dict(os.environ)
    if launcher == "parallel":
        jobs = env.get("FISHTUNE_JOBS") or "2"
        if not jobs.isdigit() or int(jobs) < 1:
            raise ConfigError(f"FISHTUNE_JOBS={jobs!r}: a number of worker processes, 1 or more")
        env["FISHTUNE_JOBS"] = jobs
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        env["OMP_NUM_THREADS"] = env.get("OMP_NUM_THREADS") or str(max(cores // int(jobs), 1))
    return env


def sweep_command(arm: Arm, launcher: str, overrides: Sequence[str] = ()) -> list[str]:
    """fishtune.run's multirun of one arm; `overrides` (the user's) come last, so they win."""
    hydra_launcher = [f"hydra/launcher={launcher}"] if launcher != "basic" else []
    return [sys.executable, "-m", "fishtune.run", "-m", *hydra_launcher,
            f"+experiment={arm.experiment}", f"paths.runs_dir={arm.runs_dir}", *arm.overrides, *overrides]


def report(study: Study) -> int:
    """Run the study's reports in order, stopping at the first that fails; its status (0: all done)."""
    # matplotlib names a PDF's font subsets by hash() of glyph names, which Python salts per process: a fixed
    # seed makes a rebuilt figure.pdf byte-identical to the committed one.
    env = {**os.environ, "PYTHONHASHSEED": os.environ.get("PYTHONHASHSEED", "0")}
    for command in study.reports:
        status = subprocess.run([sys.executable, "-m", *command], env=env).returncode
        if status:
            return status
    return 0


def run(study: Study, arms: Sequence[Arm], launcher: str, overrides: Sequence[str] = ()) -> int:
    """Each arm's sweep, then the reports, also when a sweep failed; the first failing status (0: all done)."""
    env = sweep_env(launcher)
    statuses = [subprocess.run(sweep_command(arm, launcher, overrides), env=env).returncode for arm in arms]
    statuses.append(report(study))
    return next((s for s in statuses if s), 0)


def describe(study: Study) -> str:
    """A study as `list` prints it: its name and what it is, then one line per arm."""
    arms = "".join(f"\n    {a.name}: +experiment={a.experiment} -> {a.runs_dir}"
                   f"{' ' + ' '.join(a.overrides) if a.overrides else ''}" for a in study.arms)
    return f"{study.name}: {study.about}{arms}"


def main(argv: Sequence[str] | None = None) -> int:
    """The command line (module docstring); the exit status."""
    ap = argparse.ArgumentParser(prog="python -m fishtune.studies", description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="every study, its arms and their runs folders; the paper's tables")
    for command in ("run", "report"):
        p = sub.add_parser(command, help="sweep what is missing, then report" if command == "run"
                           else "only rebuild the study's result files from its runs, training nothing")
        p.add_argument("name", nargs="?", help="a study (see list) or a paper table: " + ", ".join(TABLES))
        if command == "run":
            p.add_argument("--arms", help="comma list: only these arms' sweeps (the reports cover every arm)")
            p.add_argument("--launcher", help="basic, parallel or slurm (a conf/hydra/launcher/ name); "
                                              "default parallel for a study, basic for a table")
        p.add_argument("--profile", help="a table's profile: quick (default), paper or study")
        p.add_argument("--runs-dir", help="a table's runs folder (default runs/PROFILE)")
        p.add_argument("--results-dir", help="a table's output folder (default results, or results/PROFILE)")
        p.add_argument("--model", action="append", default=[], metavar="PAPER=OURS",
                       help="a table's model in place of the paper's, e.g. bert_base=minilm (repeatable)")
        p.add_argument("--agg-args", default="", help="a table's aggregator options, e.g. --paper")
    # Hydra overrides (key=value, +key=value, ~key) are what argparse does not know; they may come anywhere.
    args, overrides = ap.parse_known_args(argv)
    try:
        bad = [o for o in overrides if o.startswith("-") or args.command != "run"]
        if bad:
            takes = "options and Hydra overrides (key=value)" if args.command == "run" else "no overrides"
            raise ConfigError(f"unknown argument {bad[0]!r}: {args.command} takes {takes}")
        if args.command == "list":
            print("\n".join(describe(s) for s in STUDIES))
            print(f"paper tables (docs/TABLES.md): {', '.join(TABLES)}; --profile quick, paper or study")
            return 0
        if not args.name:
            raise ConfigError(f"{args.command} needs a study's name: one of {known()}")
        models = dict(m.split("=", 1) for m in args.model if "=" in m)
        bad = [m for m in args.model if "=" not in m or m.split("=", 1)[0] not in STAND_INS]
        if bad:
            raise ConfigError(f"--model {bad[0]!r}: PAPER=OURS with PAPER one of {', '.join(STAND_INS)}")
        study = get_study(args.name, **{k: v for k, v in dict(
            profile=args.profile, runs_dir=args.runs_dir, results_dir=args.results_dir, models=models,
            agg_args=tuple(args.agg_args.split())).items() if v})
        if args.command == "report":
            return report(study)
        launcher = args.launcher or study.launcher
        if launcher not in launchers():
            raise ConfigError(f"--launcher {launcher!r}: choose one of {', '.join(launchers())}")
        arms = pick_arms(study, args.arms)
        sweep_env(launcher)   # a bad FISHTUNE_JOBS before any work
    except ConfigError as e:
        print(f"fishtune.studies: error: {e}", file=sys.stderr)
        return 2
    try:
        return run(study, arms, launcher, overrides)
    except KeyboardInterrupt:   # the sweep in the foreground got it too and has stopped; no traceback
        return 130
