"""Every experiment config expands to exactly the runs behind its paper table, and runs shared by two
tables compose to one config (one result file). Counting uses Hydra's own sweep product; the configs
are composed per job with the compose API (about 0.1 s each), narrowed to one task and one budget level
to stay fast: tasks and budget levels only multiply the rows."""
import pytest

from fishtune.reports.paper import paper_tasks, paper_wide
from fishtune.harness.sweeps import EXPERIMENTS, CONF_DIR, compose_run, job_overrides, run_configs, unique_runs

# Table -> runs, as derived in docs/EXPERIMENTS.md.
COUNTS = {"table1": 288, "table2": 96, "table3": 120, "table4": 140, "table5": 96, "figure3": 12}


NARROW = ["task=rte", "budget=3"]   # a task every table has; IA3's budget 3 uses 8 layers, FISH 12


@pytest.fixture(scope="module")
def rte_configs():
    """Composed configs of every table's experiment, narrowed by NARROW."""
    return {name: run_configs(name, NARROW) for name in EXPERIMENTS if name.startswith("table")}


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_experiment_expands_to_its_tables_run_count(name):
    path = CONF_DIR / "experiment" / f"{name}.yaml"
    assert path.read_text().splitlines()[0] == "# @package _global_"
    assert len(job_overrides(name)) == COUNTS[name]


@pytest.mark.parametrize("n", [1, 2, 3, 4, 5])
def test_run_count_is_paper_rows_times_tasks(n):
    assert COUNTS[f"table{n}"] == len(paper_wide(n)) * len(paper_tasks(n))


def _row_key(c):
    """The values a paper row is defined by, with the run's layer count derived as fishtune.run does."""
    p, m = c["peft"], c["mask"]
    layers = p["layers"] or (p["budget_layers"][c["budget"] - 1] if m["mode"] == "none" else p["fish_layers"])
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
