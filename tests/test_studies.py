"""The study registry (fishtune/harness/studies.py) and the Makefile targets that read it: every study names
experiments that exist and, where its runs are committed, folders that hold them; `report` rebuilds a committed
study's files byte for byte and trains nothing; `run` sweeps the chosen arms, then reports also when a sweep failed,
and exits with the sweep's status; bad names are one line and exit 2; the make targets expand to the runner."""
from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from fishtune.harness import studies

ROOT = Path(__file__).resolve().parents[1]
EXPERIMENTS = ROOT / "fishtune" / "conf" / "experiment"
ALL = [pytest.param(s, id=s.name) for s in studies.STUDIES] + [
    pytest.param(studies.paper_table(name, profile), id=f"{name}-{profile}")
    for name in studies.TABLES for profile in ("quick", "paper")]


def _cli(*args: str, cwd: Path = ROOT, env: dict | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    return subprocess.run([sys.executable, "-m", "fishtune.studies", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=120, env=env)


def _make_n(*args: str) -> str:
    # not the flags of a make that runs these tests (make test): this make is a top-level one
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MAKELEVEL", "MFLAGS")}
    dry = subprocess.run(["make", "-n", "--no-print-directory", *args], cwd=ROOT, capture_output=True, text=True,
                         timeout=60, env=env)
    assert dry.returncode == 0, dry.stderr
    return dry.stdout


@pytest.mark.parametrize("study", ALL)
def test_every_study_names_experiments_and_report_modules_that_exist(study):
    for arm in study.arms:
        assert (EXPERIMENTS / f"{arm.experiment}.yaml").is_file(), arm
    assert study.reports and all(importlib.util.find_spec(command[0]) for command in study.reports)
    assert len({a.name for a in study.arms}) == len(study.arms)


def test_the_committed_studies_runs_folders_hold_their_runs_and_every_committed_runs_folder_is_registered():
    committed = [s for s in studies.STUDIES if s.committed]
    assert {s.name for s in committed} >= {"pooler", "pooler-why", "mean", "methods", "bf16-parity",
                                           "bf16-parity-methods", "adaptive", "smollm2"}
    folders = {arm.runs_dir for s in committed for arm in s.arms}
    for folder in folders:
        assert list((ROOT / folder).glob("*.json")), f"{folder}: no committed result file"
    # every folder of committed result files is some arm's (a study still running included): a new study's runs
    # cannot be left out of the registry
    registered = {arm.runs_dir for s in studies.STUDIES for arm in s.arms}
    tracked = subprocess.run(["git", "ls-files", "results"], cwd=ROOT, capture_output=True, text=True).stdout.split()
    holding = {str(Path(f).parent) for f in tracked if f.endswith(".json") and "/runs" in f}
    assert holding and holding <= registered, holding - registered


def _copy(tmp_path: Path, folder: str) -> Path:
    shutil.copytree(ROOT / folder, tmp_path / folder)
    return tmp_path / folder


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_report_rebuilds_the_committed_files_and_trains_nothing(tmp_path):
    """bf16-parity-methods on a copy of its committed folder: the same files, byte for byte, no new one, and none of
    the training loop imported in any process (PYTHONPROFILEIMPORTTIME logs every import of every child)."""
    folder = _copy(tmp_path, studies.PARITY_METHODS)
    (folder / "parity.csv").unlink()
    (folder / "parity.md").unlink()
    done = _cli("report", "bf16-parity-methods", cwd=tmp_path, env={"PYTHONPROFILEIMPORTTIME": "1"})
    assert done.returncode == 0, done.stderr[-2000:]
    assert _files(folder) == _files(ROOT / studies.PARITY_METHODS)
    imported = set(re.findall(r"\|\s+([\w.]+)\s*$", done.stderr, re.M))
    assert {"fishtune.harness.studies", "fishtune.reports.parity"} <= imported   # the runner, and the report in a child
    assert not imported & {"fishtune.run", "fishtune.harness.run", "fishtune.harness.train", "fishtune.harness.sweeps"}
    assert not (tmp_path / "runs").exists()


def test_run_sweeps_the_chosen_arms_then_reports_even_when_they_fail_and_exits_with_their_status(tmp_path):
    """Two of the four arms, each refused by fishtune.run's config check (task given twice: the arm narrows it to
    sst2) before any training: one line each, then the report as if nothing failed, and the sweeps' exit 2."""
    folder = _copy(tmp_path, studies.PARITY_METHODS)
    (folder / "parity.md").unlink()
    done = _cli("run", "bf16-parity-methods", "--arms", "ia3-fp32,methods-bf16", "--launcher", "basic", "task=rte",
                cwd=tmp_path)
    refusals = [line for line in done.stderr.splitlines() if line.startswith("fishtune: error: task is given twice")]
    assert done.returncode == 2 and len(refusals) == 2, done.stderr[-2000:]
    assert _files(folder) == _files(ROOT / studies.PARITY_METHODS)


@pytest.mark.parametrize("args,line", [
    (["run", "nope"], f"fishtune.studies: error: unknown study 'nope': choose one of {studies.known()}"),
    (["report", "nope"], f"fishtune.studies: error: unknown study 'nope': choose one of {studies.known()}"),
    (["run"], f"fishtune.studies: error: run needs a study's name: one of {studies.known()}"),
    (["run", "mean", "--arms", "core,nope"],
     "fishtune.studies: error: --arms 'core,nope': mean's arms are core, reference, mechanism, converged"),
    (["run", "mean", "--launcher", "local"],
     "fishtune.studies: error: --launcher 'local': choose one of basic, parallel, slurm"),
    (["run", "mean", "--profile", "paper"], "fishtune.studies: error: mean: --profile, --runs-dir, --results-dir, "
     "--model and --agg-args are for the paper's tables (table1, table2, table3, table4, table5, figure3, tables)"),
    (["run", "table2", "--profile", "study"], "fishtune.studies: error: table2: profile study builds table1 only "
     "(the methods study, docs/STUDY.md); table2 takes profile quick or paper"),
    (["report", "tables", "--profile", "fast"], "fishtune.studies: error: profile 'fast': choose one of quick, paper, "
     "study"),
    (["run", "table1", "--model", "bert=minilm"], "fishtune.studies: error: --model 'bert=minilm': PAPER=OURS with "
     "PAPER one of bert_base, modernbert_base, llama32_1b"),
    (["report", "mean", "seed=1"], "fishtune.studies: error: unknown argument 'seed=1': report takes no overrides"),
])
def test_bad_input_is_one_line_and_exit_2_before_any_work(tmp_path, args, line):
    done = _cli(*args, cwd=tmp_path)
    assert done.returncode == 2 and done.stderr.splitlines() == [line] and done.stdout == ""
    assert list(tmp_path.iterdir()) == []


def test_a_bad_worker_count_is_refused_before_any_sweep(tmp_path):
    done = _cli("run", "mean", cwd=tmp_path, env={"FISHTUNE_JOBS": "0"})
    assert done.returncode == 2 and done.stderr.splitlines() == [
        "fishtune.studies: error: FISHTUNE_JOBS='0': a number of worker processes, 1 or more"]


def test_local_workers_split_the_cores_and_keep_a_given_thread_count(monkeypatch):
    cores = int(subprocess.run(["nproc"], capture_output=True, text=True).stdout)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setenv("FISHTUNE_JOBS", "2")
    env = studies.sweep_env("parallel")
    assert env["FISHTUNE_JOBS"] == "2" and env["OMP_NUM_THREADS"] == str(max(cores // 2, 1))
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert studies.sweep_env("parallel")["OMP_NUM_THREADS"] == "3"
    assert studies.sweep_env("basic") == dict(os.environ)


def test_a_sweep_is_fishtune_run_on_the_arm_with_the_users_overrides_last():
    arm = studies.BY_NAME["methods-pilot"].arms[1]
    assert studies.sweep_command(arm, "parallel", ["train.lr=1e-3"])[1:] == [
        "-m", "fishtune.run", "-m", "hydra/launcher=parallel", "+experiment=study_methods_ia3",
        "paths.runs_dir=results/study/methods/runs", "seed=1,2", "budget=1", "mask=none", "task=sst2", "train.lr=1e-3"]
    table2 = studies.paper_table("table2", "quick")
    assert studies.sweep_command(table2.arms[0], "basic")[4:] == [
        "+experiment=table2", "paths.runs_dir=runs/quick", "profile=quick", "model=tiny_modernbert,tiny_llama"]
    assert table2.reports == (("fishtune.aggregate", "--runs-dir", "runs/quick", "--out", "results/quick",
                               "--model-map", "bert_base=minilm,modernbert_base=tiny_modernbert,llama32_1b=tiny_llama",
                               "--tables", "2"),)
    paper = studies.paper_table("table1", "paper", models={"bert_base": "roberta"}, agg_args=["--paper"])
    assert paper.arms[0].overrides == ("profile=paper", "model=roberta") and paper.reports[0][3:] == (
        "--out", "results", "--model-map", "bert_base=roberta,modernbert_base=modernbert_base,llama32_1b=llama32_1b",
        "--paper", "--tables", "1")
    assert studies.paper_table("tables").arms == ()


def test_make_study_and_report_expand_to_the_runner():
    assert ("HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 .venv/bin/python -m fishtune.studies run "
            "mean --arms core --launcher basic seed=4,5") in _make_n("study", "NAME=mean", "ARMS=core",
                                                                    "STUDY_LAUNCHER=basic", "ARGS=seed=4,5")
    assert ".venv/bin/python -m fishtune.studies report pooler-why" in _make_n("report", "NAME=pooler-why")
    # without NAME, the one-page report of a runs folder, quoted
    assert "-m fishtune.report 'results/study/runs' --out 'results/study/index.html'" in _make_n("report")


def test_table1_under_the_study_profile_is_the_methods_study():
    dry = _make_n("table1", "PROFILE=study")
    assert re.search(r"OFFLINE=1 \.venv/bin/python -m fishtune\.studies run table1 +--profile study", dry)
    assert studies.paper_table("table1", "study") is studies.BY_NAME["methods"]
    for profile in ("quick", "paper"):
        assert "methods_study" not in str(studies.paper_table("table1", profile))


def test_the_table_targets_pass_their_variables_to_the_runner():
    dry = " ".join(_make_n("table5", "PROFILE=paper", "LAUNCHER=slurm", "TASKS=mrpc,rte", "BERT=roberta",
                           "AGG_ARGS=--paper", "ARGS=seed=1").split())
    assert ("-m fishtune.studies run table5 --launcher slurm --profile paper --model bert_base=roberta "
            "--agg-args='--paper' task=mrpc,rte seed=1") in dry
    assert "-m fishtune.studies report tables --runs-dir 'x' --results-dir 'y'" in " ".join(
        _make_n("tables", "RUNS_DIR=x", "RESULTS_DIR=y").split())
