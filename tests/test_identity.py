"""A run's identity is what it computes (issue 40): values as Hydra reads them unquoted, so `seed='42'` and
`seed=42` are one run with one file; the name's hash is checked against the config on every read, so a
renamed, copied or hand-edited result is named and never counted; every file that breaks the schema is set
aside by its run and named by the reports; a read-only runs folder still skips and rebuilds; the command
line's unknown keys and malformed overrides are one line and exit 2, before Hydra."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import GLUE_FIXTURES, ROOT, run_config
from fishtune.harness import run as run_module
from fishtune.harness.results import (config_hash, load_results, read_result, run_name, write_json_atomic)
from fishtune.reports.aggregate import aggregate
from fishtune.reports.report import build_page
from fishtune.reports.sweep_summary import format_summary, summarize
from results_factory import make_result, write_result

COMMITTED = sorted((ROOT / "results").rglob("runs/**/*.json"))
QUICK = ["train.max_epochs=1", "train.batch_size=8", "data.train_samples=16", "data.dev_samples=8"]


def named(runs: Path, seed=1, layers: int = 5, **fields) -> Path:
    """A result file named as fishtune.run names it: <run_name>-<config hash>.json, its run_id the same."""
    config = {"model": {"name": "minilm"}, "peft": {"name": "lora", "rank": 1}, "mask": {"mode": "none"},
              "task": {"name": "sst2"}, "budget": 1, "seed": seed}
    run_id = f"{run_name(config, layers)}-{config_hash(config)}"
    write_result(runs / f"{run_id}.json", make_result(config=config, run_id=run_id, seed=int(seed), layers=layers,
                                                      **fields))
    return runs / f"{run_id}.json"


def skipped_by_every_report(runs: Path, tmp_path: Path) -> dict[str, list[str]]:
    """{report: the lines of files it did not count}: load_results, aggregate, sweep_summary and the page."""
    damaged: list[str] = []
    load_results(runs, damaged)
    page: list[str] = []
    html = build_page(runs, n_resamples=10, skipped=page)
    summary = summarize(runs)
    assert "unreadable (skipped):" in format_summary(summary)
    out = {"load_results": damaged, "aggregate": aggregate(runs, tmp_path / "res", ["1"], verbose=False)["unreadable"],
           "sweep_summary": summary["unreadable"], "report": page}
    for line in page:   # and the page itself shows each under its file name
        assert Path(line.split(": ", 1)[0]).name in html
    return out


# ---- identity from what is computed -----------------------------------------------------------------

def test_a_quoted_seed_is_the_same_run_as_an_int_seed(tmp_path):
    quoted, plain = run_config(tmp_path, "seed='42'"), run_config(tmp_path, "seed=42")
    assert quoted["seed"] == "42" and plain["seed"] == 42            # Hydra hands them over differently
    assert config_hash(quoted) == config_hash(plain)
    assert run_module.plan(quoted).path == run_module.plan(plain).path
    assert run_module.plan(quoted).path.name.startswith("tiny_bert-rte-lora-L1-r1-none-s42-")
    # a learning rate typed in quotes too; a task name stays a name
    assert config_hash(run_config(tmp_path, "train.lr='5e-5'")) == config_hash(run_config(tmp_path, "train.lr=5e-5"))
    assert config_hash(run_config(tmp_path, "train.lr=5e-5")) != config_hash(run_config(tmp_path))


def test_every_committed_result_keeps_its_name():
    """The hash in each committed file's name is its stored config_hash and the hash of its config as
    computed now (so resuming a committed study trains nothing again)."""
    assert len(COMMITTED) >= 768
    for path in COMMITTED:
        data = json.loads(path.read_text())
        assert path.stem == data["run_id"] and path.stem.endswith(f"-{data['config_hash']}"), path
        assert config_hash(data["config"]) == data["config_hash"], path


def test_a_run_with_a_quoted_seed_skips_the_finished_run(tmp_path, capsys):
    first = run_module.run(run_config(tmp_path, "seed=3", *QUICK), progress=False)
    capsys.readouterr()
    again = run_module.run(run_config(tmp_path, "seed='3'", *QUICK), progress=False)
    assert capsys.readouterr() == ("", "") and again == first   # found, quietly
    assert len(load_results(tmp_path)) == 1


# ---- a result that is not its computation's --------------------------------------------------------

def test_renamed_copied_and_hand_edited_results_are_named_and_not_counted(tmp_path):
    runs = tmp_path / "runs"
    good = named(runs, seed=1)
    other = named(runs, seed=2)
    shutil.copy(good, runs / "renamed.json")                                   # renamed
    copied = other.with_name(other.name.replace("-s2-", "-s3-"))
    shutil.copy(good, copied)                                                   # copied onto another run's name
    relabelled = good.with_name(good.name.replace("-s1-", "-s9-"))
    shutil.copy(good, relabelled)                                               # its hash kept, its seed changed
    edited = named(runs, seed=4)
    data = json.loads(edited.read_text())
    data["config"]["seed"] = 5                                                  # its config edited by hand
    write_json_atomic(edited, data)
    rescored = named(runs, seed=6)
    data = json.loads(rescored.read_text())
    data["best"]["score"] = 99.0                                                # its score edited by hand
    write_json_atomic(rescored, data)

    reasons = {
        runs / "renamed.json": f"the same computation (config hash {good.stem[-10:]}) as {good.name}: not counted twice",
        copied: f"its name's hash {other.stem[-10:]} is not its config's ({good.stem[-10:]}): copied onto another",
        relabelled: "its name is not its run_id",
        edited: "is not the hash of its config",
        rescored: "best.score 99.0 is not what its history says of epoch 1 (70.0): edited by hand?",
    }
    for report, lines in skipped_by_every_report(runs, tmp_path).items():
        said = dict(line.split(": ", 1) for line in lines)
        assert set(said) == {str(p) for p in reasons}, (report, lines)
        for path, why in reasons.items():
            assert why in said[str(path)], (report, said[str(path)])
    assert sorted(r.seed for r in load_results(runs)) == [1, 2]
    # the run whose name a copy took sets it aside and is redone
    assert read_result(copied) is None and copied.with_name(copied.name + ".damaged").exists()
    assert read_result(good)["seed"] == 1


def test_two_files_of_one_computation_count_once(tmp_path):
    """A file from before values were normalised (seed '7' in its config, named by that config's hash) and
    the run's file since: one computation, counted once, the other named."""
    runs = tmp_path / "runs"
    new = named(runs, seed=7)
    config = {**json.loads(new.read_text())["config"], "seed": "7"}
    from fishtune.harness.results import _digest, _identity_of
    old_hash = _digest(_identity_of(config))
    assert old_hash != config_hash(config) == new.stem[-10:]
    run_id = f"{run_name(config, 5)}-{old_hash}"
    write_result(runs / f"{run_id}.json", make_result(config=config, config_hash=old_hash, run_id=run_id, seed=7))
    damaged = []
    [kept] = load_results(runs, damaged)
    assert kept.path == str(new)
    assert damaged == [f"{runs / run_id}.json: the same computation (config hash {config_hash(config)}) as "
                       f"{new.name}: not counted twice"]
    page: list[str] = []
    build_page(runs, n_resamples=10, skipped=page)
    assert page == damaged


# ---- damaged and foreign files ----------------------------------------------------------------------

BROKEN = {   # name -> (what the file holds, the reason a report gives)
    "null-best": (lambda d: {**d, "best": None}, "best is null, not dict"),
    "empty-best": (lambda d: {**d, "best": {}}, "best has no score"),
    "string-score": (lambda d: {**d, "best": {**d["best"], "score": "70.0"}}, "best.score is '70.0', not a number"),
    "nan-score": (lambda d: {**d, "best": {**d["best"], "score": float("nan")}},
                  "best.score is not a finite number (NaN or infinite)"),
    "list": (lambda d: [d], "not a fishtune result: a JSON list"),
    "schema-3": (lambda d: {**d, "schema": 3}, "unknown schema 3 (this fishtune reads 1, 2)"),
}


def _broken(runs: Path, name: str) -> Path:
    path = named(runs, seed=10 + sorted(BROKEN).index(name))
    data = json.loads(path.read_text())
    path.write_text(json.dumps(BROKEN[name][0](data)))   # json.dumps writes NaN as NaN, as a hand edit would
    return path


def test_files_that_break_the_schema_are_named_by_every_report(tmp_path):
    runs = tmp_path / "runs"
    named(runs, seed=1)
    paths = {name: _broken(runs, name) for name in BROKEN}
    (runs / "hydra" / "x").mkdir(parents=True)
    (runs / "hydra" / "x" / "left_to_another_sweep.json").write_text("{}")   # Hydra's folder: no result there
    for report, lines in skipped_by_every_report(runs, tmp_path).items():
        said = dict(line.split(": ", 1) for line in lines)
        assert set(said) == {str(p) for p in paths.values()}, (report, lines)
        for name, path in paths.items():
            assert said[str(path)] == BROKEN[name][1], (report, name, said[str(path)])


@pytest.mark.parametrize("name", sorted(BROKEN))
def test_a_run_sets_its_broken_result_aside_with_the_reason(tmp_path, capsys, name):
    path = _broken(tmp_path, name)
    assert read_result(path) is None and not path.exists()
    assert path.with_name(path.name + ".damaged").exists()
    assert f"is damaged ({BROKEN[name][1]}; the run is redone)" in capsys.readouterr().err


# ---- aggregate on a runs folder that is not one -----------------------------------------------------

def _cli(*args: str, cwd: Path = ROOT, **env) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(ROOT), **env})


def test_aggregate_refuses_a_missing_runs_folder_and_writes_nothing(tmp_path):
    out = tmp_path / "results"
    out.mkdir()
    (out / "table1.csv").write_text("the real table\n")
    before = sorted((p.name, p.stat().st_mtime_ns) for p in out.iterdir())
    done = _cli("-m", "fishtune.aggregate", "--runs-dir", "/nonexistent", "--out", str(out))
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.strip().splitlines() == ["fishtune.aggregate: error: --runs-dir /nonexistent: no such folder; "
                                                "nothing written"]
    (tmp_path / "empty").mkdir()
    done = _cli("-m", "fishtune.aggregate", "--runs-dir", str(tmp_path / "empty"), "--out", str(out))
    assert done.returncode == 2 and done.stderr.strip().splitlines() == [
        f"fishtune.aggregate: error: {tmp_path / 'empty'} holds no finished result files; nothing written to {out}"]
    assert sorted((p.name, p.stat().st_mtime_ns) for p in out.iterdir()) == before


# ---- a read-only runs folder ------------------------------------------------------------------------

def _read_only(folder: Path):
    """Make `folder` read-only (chmod; as root, whom chmod does not stop, a read-only bind mount); returns
    the undo. Skips when neither works."""
    files = [folder, *folder.rglob("*")]
    for p in files:
        p.chmod(p.stat().st_mode & ~0o222)

    def undo() -> None:
        for p in files:
            p.chmod(p.stat().st_mode | 0o200)
    if not os.access(folder, os.W_OK):
        return undo
    if subprocess.run(["mount", "--bind", str(folder), str(folder)], capture_output=True).returncode == 0:
        if subprocess.run(["mount", "-o", "remount,ro,bind", str(folder)], capture_output=True).returncode == 0:
            return lambda: (subprocess.run(["umount", str(folder)], check=True), undo())
        subprocess.run(["umount", str(folder)])
    undo()
    pytest.skip("this user can write a chmod-ed folder and cannot mount one read-only")


def test_a_read_only_runs_folder_skips_finished_runs_and_rebuilds_the_page(tmp_path):
    runs = tmp_path / "runs"
    for seed in (1, 2):
        run_module.run(run_config(runs, f"seed={seed}", *QUICK), progress=False)
    before = sorted(str(p.relative_to(runs)) for p in runs.rglob("*"))
    assert len(before) == 2
    undo = _read_only(runs)
    try:
        main = "import sys; sys.argv[0] = 'fishtune.run'; from fishtune.harness.cli import main; main()"
        sweep = _cli("-c", main, "-m", "model=tiny_bert", f"data.glue_dir={GLUE_FIXTURES}", f"paths.runs_dir={runs}",
                     "seed='1',2", *QUICK, cwd=tmp_path, XDG_CACHE_HOME=str(tmp_path / "cache"))
        assert sweep.returncode == 0, sweep.stderr[-3000:]
        # Every run finished: one line, and nothing launched, so nothing written, not even Hydra's own files.
        assert sweep.stdout == "fishtune: 2 of 2 finished, 0 to train\n" and sweep.stderr == ""
        assert not (tmp_path / "cache").exists()
        # One run to train: the sweep launches, Hydra's files go elsewhere; the run cannot be written there.
        sweep = _cli("-c", main, "-m", "model=tiny_bert", f"data.glue_dir={GLUE_FIXTURES}", f"paths.runs_dir={runs}",
                     "seed='1',2,3", *QUICK, cwd=tmp_path, XDG_CACHE_HOME=str(tmp_path / "cache"))
        assert sweep.returncode == 0, sweep.stderr[-3000:]
        assert "fishtune: sweep done: 3 runs: 0 trained, 2 finished before, 1 failed, 0 left to other live sweeps" \
            in sweep.stdout and "skip," not in sweep.stdout and "epochs:" not in sweep.stderr
        assert f"FAILED (paths.runs_dir: {runs} is not writable" in sweep.stderr
        assert f"fishtune: note: {runs} cannot be written; Hydra's own files go to {tmp_path / 'cache'}" \
            in sweep.stderr
        assert list((tmp_path / "cache" / "fishtune" / "hydra").glob("multirun_*"))
        # A run still to train cannot be written there: one line, exit 2, nothing trained.
        new = _cli("-m", "fishtune.run", "model=tiny_bert", f"data.glue_dir={GLUE_FIXTURES}", f"paths.runs_dir={runs}",
                   "seed=3", *QUICK, cwd=tmp_path, XDG_CACHE_HOME=str(tmp_path / "cache"))
        assert new.returncode == 2 and "epochs:" not in new.stderr, new.stderr[-3000:]
        assert [line for line in new.stderr.splitlines() if line.startswith("fishtune: error")] == [
            f"fishtune: error: paths.runs_dir: {runs} is not writable, and "
            f"{run_module.plan(run_config(runs, 'seed=3', *QUICK)).path.name} is not finished there "
            f"(a read-only runs folder serves only finished runs)"]
        page = _cli("-m", "fishtune.report", str(runs), "--out", str(tmp_path / "page.html"), cwd=tmp_path)
        assert page.returncode == 0 and (tmp_path / "page.html").stat().st_size > 0, page.stderr
    finally:
        undo()
    assert sorted(str(p.relative_to(runs)) for p in runs.rglob("*")) == before


# ---- the command line -------------------------------------------------------------------------------

@pytest.mark.parametrize("override,line", [
    ("trian.lr=1", "fishtune: error: unknown key 'trian.lr'; did you mean train.lr?"),
    ("+train.lrr=0.1", "fishtune: error: unknown key 'train.lrr' (+ adds a key that fishtune never reads); "
                       "did you mean train.lr?"),
    ("+train.foo=1", "fishtune: error: unknown key 'train.foo' (+ adds a key that fishtune never reads); train has: "
                     "batch_size, device, eval_batch_size, head_lr_scale, lr, lr_scale, max_epochs, patience, "
                     "precision, weight_decay"),
])
def test_an_unknown_key_is_one_line_naming_the_closest_known_one(tmp_path, override, line):
    """As typed: the real command, one line, exit 2, before Hydra (whose own message is six lines, exit 1)."""
    done = _cli("-m", "fishtune.run", override, f"paths.runs_dir={tmp_path / 'runs'}", cwd=tmp_path)
    assert done.returncode == 2 and done.stderr.strip().splitlines() == [line], done.stderr
    assert not (tmp_path / "runs").exists()


def test_make_report_quotes_a_runs_folder_with_a_space():
    if shutil.which("make") is None:
        pytest.skip("needs make")
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MAKELEVEL", "MFLAGS")}
    dry = subprocess.run(["make", "-n", "--no-print-directory", "report", "RUNS_DIR=a b", "REPORT=x y/it's.html"],
                         cwd=ROOT, capture_output=True, text=True, timeout=60, env=env)
    assert dry.returncode == 0, dry.stderr
    assert "-m fishtune.report 'a b' --out 'x y/it'\\''s.html'" in dry.stdout
