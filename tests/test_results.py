"""RunResult, the one type of a result file: the committed result files (schema 1) load through it,
new files are schema 2 with the same keys in the same order, and what older files lack is filled in
by RunResult.from_json alone."""
import json

import pytest

from conftest import ROOT
from fishtune.harness.results import (SCHEMA, RunFailure, RunResult, finished_runs, load_failures, load_results,
                                      read_result, required_keys, write_json_atomic)
from results_factory import make_result, write_failure, write_result

COMMITTED = sorted((ROOT / "results").rglob("runs/**/*.json"))
STUDY_200 = sorted((ROOT / "results" / "study" / "runs").glob("*.json"))   # schema 1, before placement


def test_every_committed_result_file_loads_through_runresult():
    assert len(COMMITTED) >= 200
    for path in COMMITTED:
        data = json.loads(path.read_text())
        result = RunResult.from_json(data)
        out = result.to_json()
        # nothing of the file is lost or reordered (keys it lacks are added as null, after its own)
        assert {k: out[k] for k in data} == data, path
        assert [k for k in out if k in data] == list(data), path
        assert result.best["score"] is not None and result.budget_ratio_pct is not None


def test_the_loaders_read_every_committed_result_file_and_find_none_damaged():
    damaged = []
    results = load_results(ROOT / "results", damaged)
    assert len(results) == len(COMMITTED) and not damaged
    assert all(isinstance(r, RunResult) and r.path for r in results)
    assert len(finished_runs(results)) == len(results)   # every committed run reached a best epoch


def test_a_result_without_a_required_field_is_damaged_not_filled_in(tmp_path):
    whole = write_result(tmp_path, make_result(seed=1))
    cut = make_result(seed=2).to_json()
    del cut["train_seconds"]
    write_json_atomic(tmp_path / "cut.json", cut)
    write_json_atomic(tmp_path / "config.json", {"seed": 3})   # no result schema: some other file, named
    write_json_atomic(tmp_path / "hydra" / "x" / "left.json", {"run": "a"})   # Hydra's folder holds no results
    damaged = []
    assert load_results(tmp_path, damaged) == [whole]
    assert damaged == [f"{tmp_path / 'config.json'}: not a fishtune result: no `schema`",
                       f"{tmp_path / 'cut.json'}: lacks required field(s) train_seconds"]
    assert "train_seconds" in required_keys(RunResult) and "tokens_per_second" not in required_keys(RunResult)
    assert read_result(tmp_path / "cut.json") is None and (tmp_path / "cut.json.damaged").exists()


def test_failure_records_load_as_runfailures_and_incomplete_ones_are_damaged(tmp_path):
    written = write_failure(tmp_path / "a.failed.json", config={"seed": 1}, error="ValueError: x\ntrace")
    write_json_atomic(tmp_path / "b.failed.json", {"status": "failed", "config": {}, "error": "Diverged: nan"})
    write_json_atomic(tmp_path / "c.failed.json", {"status": "failed", "reason": "no config, no error"})
    damaged = []
    a, b = load_failures(tmp_path, damaged)
    assert a == written and a.reason == "ValueError: x" and isinstance(a, RunFailure)
    assert b.reason == "Diverged: nan"   # records from before `reason` was kept: the error's first line
    assert damaged == [f"{tmp_path / 'c.failed.json'}: lacks required field(s) config, error"]


def test_schema_1_and_2_load_and_others_do_not(tmp_path):
    [first] = STUDY_200[:1]
    data = json.loads(first.read_text())
    assert SCHEMA == 2 and data["schema"] == 1
    # each under its own name (a result's name is its run_id), in folders of their own
    one, two, three = (tmp_path / n / first.name for n in ("one", "two", "three"))
    write_json_atomic(one, data)
    write_json_atomic(two, {**data, "schema": 2})
    write_json_atomic(three, {**data, "schema": 3})
    damaged = []
    assert sorted(r.schema for r in load_results(tmp_path, damaged)) == [1, 2]
    assert damaged == [f"{three}: unknown schema 3 (this fishtune reads 1, 2)"]
    assert read_result(one)["run_id"] == data["run_id"]
    assert read_result(three) is None and three.with_name(three.name + ".damaged").exists()


def test_from_json_fills_in_what_the_earliest_files_lack():
    data = json.loads(STUDY_200[0].read_text())
    old = {k: v for k, v in data.items() if k != "budget_ratio_pct"}
    old.update(model={"name": "minilm", "family": "bert"}, mask={"mode": "fish"})
    result = RunResult.from_json(old)
    assert (result.model, result.mask, result.budget_ratio_pct) == ("minilm", "fish", data["ratio_pct"])
    assert result.placement is None and result.throughput is None and result.extra == {"migrated": data["migrated"]}
    with pytest.raises(ValueError, match="not a fishtune result"):
        RunResult.from_json({"status": "failed"})
