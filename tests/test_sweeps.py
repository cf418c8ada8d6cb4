"""Every experiment config expands to exactly the runs behind its paper table, and runs shared by two
tables compose to one config (one result file). The expansion (fishtune.harness.sweeps) is checked
against references it does not share code with: run counts from the yaml text and the paper's tables,
and the jobs a real `python -m fishtune.run -m` launches (Hydra's own sweeper and launcher, with the
training replaced by a recorder). The configs are composed per job with the compose API (about 0.1 s
each), narrowed to one task and one budget level to stay fast: tasks and budget levels only multiply
the rows."""
import json
import math
import subprocess
import sys

import pytest

from conftest import ROOT
from fishtune.reports.paper import paper_tasks, paper_wide
from fishtune.harness.results import config_hash
from fishtune.harness.schedules import run_layers
from fishtune.harness.sweeps import EXPERIMENTS, CONF_DIR, compose_run, job_overrides, run_configs, unique_runs

# Table -> runs, as derived in docs/EXPERIMENTS.md.
COUNTS = {"table1": 288, "table2": 96, "table3": 120, "table4": 140, "table5": 96, "figure3": 12}


NARROW = ["task=rte", "budget=3"]   # a task every table has; IA3's budget 3 uses 8 layers, FISH 12


def yaml_sweep_product(name):
    """The number of runs an experiment lists, read from its yaml text with plain string handling (no
    Hydra, no OmegaConf): the product of the number of comma-separated values of each key under
    hydra.sweeper.params. Table 4 sweeps +row values that are each a whole row, so it too is a product."""
    lines = (CONF_DIR / "experiment" / f"{name}.yaml").read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.strip() == "params:")
    indent = len(lines[start + 1]) - len(lines[start + 1].lstrip())
    counts = []
    for line in lines[start + 1:]:
        text = line.split("#", 1)[0]
        if not text.strip() or len(text) - len(text.lstrip()) < indent:
            break
        key, values = text.split(":", 1)
        counts.append(len([v for v in values.split(",") if v.strip()]))
    return math.prod(counts)


# `python -m fishtune.run -m` with its training replaced, once per sweep given as a JSON list of
# [log file, command-line arguments]: each job appends its Hydra overrides and its config hash to the
# sweep's log, and reports a dummy result. Hydra's sweeper, launcher and config composition are the real
# ones. One process for all the sweeps, and no torch in it (importing it costs more than the jobs): the
# sweeps fix train.precision=fp32, the one value plan() resolves per machine before it takes the hash.
RECORDER = r"""
import json, sys
from pathlib import Path
sys.path.insert(0, sys.argv[1])   # this checkout, not whichever fishtune the venv has installed
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
import fishtune.harness.run as run_module
from fishtune.harness.cli import main
from fishtune.harness.results import config_hash

def record(config, progress=True):   # as run_module.train_or_find: (the result, trained)
    with log.open("a") as f:
        f.write(json.dumps({"overrides": list(HydraConfig.get().overrides.task), "hash": config_hash(config)}) + "\n")
    return {"best": {"score": 0.0, "epoch": 0}, "run_id": "recorded", "task": config["task"]["name"],
            "stop_reason": "not trained", "trainable": 0, "ratio_pct": 0.0}, True

run_module.train_or_find = record
for log, args in json.loads(sys.argv[2]):
    log = Path(log)
    sys.argv = ["fishtune.run", "-m", *args]
    GlobalHydra.instance().clear()
    main()
"""

# Narrowed sweeps (a few jobs each) that exercise what the expansion must get right.
SWEEPS = {
    "rows": ("table3", ["task=rte", "budget=3"]),                          # +row configs
    "replace": ("table5", ["task=mrpc,rte", "budget=1"]),                  # a command-line sweep replaces the yaml's
    "fixed": ("table1", ["peft=lora,ia3", "task=cola", "budget=2", "train.max_epochs=1"]),  # ... a fixed one rides along
}
FIXED = ["train.precision=fp32"]   # see RECORDER


@pytest.fixture(scope="module")
def launched(tmp_path_factory):
    """case -> (its command line, then per job in launch order: the job's overrides, its config hash) of
    the jobs `python -m fishtune.run -m` launches."""
    tmp = tmp_path_factory.mktemp("multirun")
    plan = {case: (tmp / f"{case}.jsonl", [f"+experiment={experiment}", *overrides, *FIXED,
                                                      f"paths.runs_dir={tmp / 'runs'}"])
            for case, (experiment, overrides) in SWEEPS.items()}
    out = subprocess.run([sys.executable, "-c", RECORDER, str(ROOT), json.dumps([[str(log), args] for log, args in plan.values()])],
                         cwd=tmp, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    result = {}
    for case, (log, args) in plan.items():
        jobs = [json.loads(line) for line in log.read_text().splitlines()]
        result[case] = (args[1:], [job["overrides"] for job in jobs], [job["hash"] for job in jobs])
    return result


@pytest.fixture(scope="module")
def rte_configs():
    """Composed configs of every table's experiment, narrowed by NARROW."""
    return {name: run_configs(name, NARROW) for name in EXPERIMENTS if name.startswith("table")}


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_experiment_expands_to_its_tables_run_count(name):
    path = CONF_DIR / "experiment" / f"{name}.yaml"
    assert path.read_text().splitlines()[0] == "# @package _global_"
    assert yaml_sweep_product(name) == COUNTS[name]
    assert len(job_overrides(name)) == COUNTS[name]


@pytest.mark.parametrize("case", SWEEPS)
def test_jobs_are_those_a_real_multirun_launches(case, launched):
    """The same jobs, in the same order, with the same config (hash) each, as Hydra's real multirun."""
    experiment = SWEEPS[case][0]
    command_line, overrides, hashes = launched[case]
    assert len(overrides) >= 4  # the narrowed sweep still launches several jobs
    assert all(o[-1].startswith("paths.runs_dir=") for o in overrides)
    assert job_overrides(experiment, command_line) == overrides
    assert [config_hash(c) for c in run_configs(experiment, command_line)] == hashes


@pytest.mark.parametrize("n", [1, 2, 3, 4, 5])
def test_run_count_is_paper_rows_times_tasks(n):
    assert COUNTS[f"table{n}"] == len(paper_wide(n)) * len(paper_tasks(n))


def _row_key(c):
    """The values a paper row is defined by, with the run's layer count from the function fishtune.run uses."""
    p, m = c["peft"], c["mask"]
    layers = run_layers(p, m["mode"], c["budget"], depth=12)   # bert-base: 12 layers, every schedule fits
    rank = p.get("rank") if p["name"] in ("lora", "dora") else None
    budget_rank = (m.get("budget_rank") or rank) if m["mode"] != "none" and rank else None
    return c["model"]["name"], p["name"], m["mode"], c["budget"], layers, rank, budget_rank


@pytest.mark.parametrize("n", [1, 2, 3, 4, 5])
def test_runs_are_exactly_the_paper_rows(n, rte_configs):
    got = sorted(map(_row_key, rte_configs[f"table{n}"]), key=str)
    mask = {"original": "none", "fish": "fish", "rand": "rand", "rev": "rev"}
    want = sorted(((r.model, r.method, mask[r.row], r.budget, r.layers,
                    int(r.rank) if r.method in ("lora", "dora") else None,
                    1 if r.row != "original" and r.method in ("lora", "dora") else None)
                   for r in paper_wide(n).itertuples() if r.budget == 3), key=str)
    assert got == want
    assert all(c["task"]["name"] == "rte" and c["seed"] == 42 for c in rte_configs[f"table{n}"])


def test_shared_runs_compose_to_one_config(rte_configs):
    runs = {name: unique_runs(configs) for name, configs in rte_configs.items()}
    t1 = set(runs["table1"])
    assert len(runs["table1"]) == 12 and len(runs["table5"]) == 4
    assert len(set(runs["table5"]) & t1) == 2           # original + fish
    assert len(set(runs["table3"]) & t1) == 2           # original + lay5
    assert len(set(runs["table4"]) & t1) == 2           # original + rk1
    assert len(set(runs["table3"]) & set(runs["table4"])) == 2
    union = set().union(*runs.values())
    # Per task and budget: T1 12 + T2 4 + T3 4 new + T4 5 new + T5 2 new; x 4 budgets x tasks = 612.
    assert len(union) == 12 + 4 + 4 + 5 + 2


def test_figure3_runs_are_table1_runs():
    fig = unique_runs(run_configs("figure3", ["task=rte"]))
    assert len(fig) == 2
    assert set(fig) == set(unique_runs(run_configs("table1", ["task=rte", "peft=lora", "budget=1"])))


def test_row_configs_leave_no_trace():
    assert compose_run(["+row=fish", "task=rte"]) == compose_run(["mask=fish", "task=rte"])
    assert compose_run(["+row=original", "budget=3"]) == compose_run(["mask=none", "budget=3"])
    rank8 = compose_run(["+row=fish_rank8"])
    assert rank8["peft"]["rank"] == 8 and rank8["mask"]["budget_rank"] == 1 and rank8["peft"]["layers"] is None


def test_command_line_narrows_a_sweep():
    assert len(job_overrides("table5", ["task=mrpc,rte"])) == 4 * 4 * 2
    assert len(job_overrides("table1", ["peft=lora,ia3", "task=cola"])) == 2 * 4 * 2
    # Extra fixed overrides ride along on every job without multiplying the sweep.
    jobs = job_overrides("table3", ["train.max_epochs=1"])
    assert len(jobs) == 120 and all("train.max_epochs=1" in j for j in jobs)


def test_every_run_of_every_table_passes_the_config_check(rte_configs):
    """The checks refuse no run a paper table needs (fishtune/harness/validate.py reads these very configs)."""
    from fishtune.harness.validate import check_config

    for configs in rte_configs.values():
        for c in configs:
            check_config(c)
    check_config(compose_run(["+experiment=table1", "profile=quick", "task=rte", "peft=ia3", "mask=fish"]))


@pytest.mark.parametrize("experiment,overrides", [
    ("study_methods_ia3", ["seed=1,2", "task=stsb"]),            # a list value (peft.budget_layers=[3,5]) per job
    ("table3", ["task=rte", "budget=3", "train.lr=1e-4"]),         # +row groups, and a value on the command line
])
def test_a_shared_composition_is_hydras_own_of_each_job(experiment, overrides):
    """compose_jobs composes once per set of group options and applies each job's values to a copy: the same
    config, value for value, as Hydra's compose of each job's whole override list."""
    from hydra import compose
    from omegaconf import OmegaConf

    from fishtune.harness.sweeps import _Hydra, compose_jobs
    from fishtune.harness.train import resolve_precision

    jobs = job_overrides(experiment, overrides)
    assert len(jobs) >= 6 and len({tuple(j) for j in jobs}) == len(jobs)
    with _Hydra():
        ours = list(compose_jobs(jobs))
        theirs = [OmegaConf.to_container(compose("config", overrides=job), resolve=True) for job in jobs]
    for config in theirs:
        resolve_precision(config["train"])
    assert ours == theirs
