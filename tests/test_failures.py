"""Runs that fail and files that break: a diverged run is recorded as failed and never as a result, no
file holds NaN or infinity, and a damaged result, mask or checkpoint never crashes a sweep or the
aggregator (the run sets it aside and starts over; the aggregator says what it skipped)."""
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import GLUE_FIXTURES, ROOT, run_config
from fishtune.reports.aggregate import aggregate
from fishtune.harness.metrics import glue_metrics
from fishtune.harness.results import load_failures, load_results, mask_path, write_json_atomic
from fishtune.reports.sweep_summary import format_summary, summarize
from fishtune.harness.tasks import TASKS

QUICK = ["model=tiny_bert", "peft=lora", "budget=1", "train.max_epochs=1", "train.batch_size=8", "fisher.samples=8",
         "data.train_samples=24", "data.dev_samples=12"]


def _strict_json(path):
    """The file's JSON, refusing the NaN/Infinity tokens Python's json would otherwise accept."""
    def refuse(token):
        raise AssertionError(f"{path} holds {token}")
    return json.loads(path.read_text(), parse_constant=refuse)


def _sweep(tmp_path, runs, *overrides):
    return subprocess.run([sys.executable, "-m", "fishtune.run", "-m", f"data.glue_dir={GLUE_FIXTURES}",
                           f"paths.runs_dir={runs}", *QUICK, *overrides],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)


def test_diverged_run_in_a_sweep_of_three(tmp_path, capsys):
    # Three runs of one sweep, one of them (SST-2) with a learning rate that blows the weights up. Each
    # case is a small config in a search path of its own, so the three share everything else.
    cases = tmp_path / "extra" / "case"
    cases.mkdir(parents=True)
    for name, text in (("rte", "task: {name: rte}"), ("mrpc", "task: {name: mrpc}"),
                       ("sst2", "task: {name: sst2}\ntrain: {lr: 1.0e12}")):
        (cases / f"{name}.yaml").write_text(f"# @package _global_\n{text}\n")
    runs = tmp_path / "runs"
    out = _sweep(tmp_path, runs, f"hydra.searchpath=[file://{tmp_path / 'extra'}]", "+case=rte,mrpc,sst2")
    assert out.returncode == 0, out.stderr[-3000:]
    assert "FAILED (diverged: non-finite loss at epoch 1, step 2)" in out.stderr

    assert sorted(r.task for r in load_results(runs)) == ["mrpc", "rte"]
    [failed] = load_failures(runs)
    assert failed.config["task"]["name"] == "sst2" and failed.config["train"]["lr"] == 1e12
    assert failed.reason == "diverged: non-finite loss at epoch 1, step 2"
    assert not Path(failed.path.removesuffix(".failed.json") + ".json").exists()  # never a result file
    for path in runs.glob("*.json"):
        _strict_json(path)

    summary = summarize(runs)
    assert [f["reason"] for f in summary["failed"]] == ["diverged: non-finite loss at epoch 1, step 2"]
    assert "    error: diverged: non-finite loss at epoch 1, step 2" in format_summary(summary)

    # Table 1's Original-LoRA b1 row (tiny_bert standing in for bert-base): RTE and MRPC filled, SST-2 blank
    # and listed with its reason.
    done = aggregate(runs, tmp_path / "results", ["1"], model_map={"bert_base": "tiny_bert"})
    row = done["1"].frame.query("row == 'original' and method == 'lora' and budget == 1").iloc[0]
    assert not math.isnan(row["RTE"]) and not math.isnan(row["MRPC"]) and math.isnan(row["SST-2"])
    assert "    sst2 failed: diverged: non-finite loss at epoch 1, step 2" in done["missing"]
    assert "sst2 failed: diverged: non-finite loss at epoch 1, step 2" in capsys.readouterr().out


def test_single_diverged_run_exits_nonzero_with_one_line(tmp_path, monkeypatch, capsys):
    from hydra.core.global_hydra import GlobalHydra

    from fishtune.harness.cli import main

    runs = tmp_path / "runs"
    monkeypatch.setattr(sys, "argv", ["fishtune.run", f"data.glue_dir={GLUE_FIXTURES}", f"paths.runs_dir={runs}",
                                      *QUICK, "task=rte", "train.lr=1e12"])
    GlobalHydra.instance().clear()
    with pytest.raises(SystemExit) as stop:
        main()
    err = capsys.readouterr().err
    assert stop.value.code == 1 and "Traceback" not in err
    # Besides the progress bar (tqdm, on stderr while a single run trains), one line says what happened.
    [line] = [l for l in err.strip().splitlines() if "epochs:" not in l]
    assert line.startswith("fishtune: FAILED: diverged: non-finite loss at epoch 1, step 2; details in ")
    assert not load_results(runs) and load_failures(runs)[0].reason.startswith("diverged")


@pytest.mark.parametrize("name", list(TASKS))
def test_metrics_of_constant_predictions_are_defined(name):
    """What a collapsed run predicts (one class, one score) gives numbers, not NaN: correlations 0."""
    task = TASKS[name]
    labels = np.array([0.5, 4.0, 2.5, 1.0]) if task.is_regression else np.array([0, 1, 1, 0])
    for preds in (np.zeros(4), np.ones(4), labels * 0 + labels[0]):
        metrics = glue_metrics(task, preds if task.is_regression else preds.astype(int), labels)
        assert all(math.isfinite(v) for v in metrics.values()), metrics
    constant = glue_metrics(task, np.zeros(4) if task.is_regression else np.zeros(4, int), labels)
    for key in ("pearson", "spearman", "matthews"):
        assert constant.get(key, 0.0) == 0.0
    if task.metric == "f1_acc":  # never predicting the positive class: F1 0, not undefined
        assert constant["f1"] == 0.0 and constant["accuracy"] == 50.0


def test_no_result_file_can_hold_nan(tmp_path):
    with pytest.raises(ValueError, match="Out of range float values are not JSON compliant"):
        write_json_atomic(tmp_path / "r.json", {"best": {"score": float("nan")}})
    assert not list(tmp_path.iterdir())  # nothing half-written left behind


def _truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def test_damaged_result_mask_and_checkpoint_never_crash_a_sweep(tmp_path, capsys):
    from fishtune.harness.run import plan, run

    runs = tmp_path / "runs"
    tasks = ("rte", "mrpc", "sst2")
    configs = {t: run_config(runs, f"task={t}", "mask=fish", *QUICK) for t in tasks}
    paths = {t: plan(c).path for t, c in configs.items()}
    for c in configs.values():
        run(c, progress=False)
    # RTE: its result file cut in half (a disk that filled up). MRPC: its mask file cut, its result gone
    # (the run was interrupted). SST-2: interrupted with a cut checkpoint (a real torch file, truncated).
    _truncate(paths["rte"])
    _truncate(mask_path(paths["mrpc"]))
    paths["mrpc"].unlink()
    checkpoint = paths["sst2"].with_suffix(".ckpt.pt")
    checkpoint.write_bytes(mask_path(paths["sst2"]).read_bytes()[:300])
    paths["sst2"].unlink()

    # The aggregator and the summary before the sweep: they skip the cut result file and say so.
    capsys.readouterr()
    done = aggregate(runs, tmp_path / "results", ["1"], model_map={"bert_base": "tiny_bert"})
    assert [u.split(": ")[0] for u in done["unreadable"]] == [str(paths["rte"])]
    assert f"skipped unreadable {paths['rte']}: JSONDecodeError" in capsys.readouterr().out
    assert summarize(runs)["unreadable"] and not summarize(runs)["ok"]

    out = _sweep(tmp_path, runs, "task=" + ",".join(tasks), "mask=fish")
    assert out.returncode == 0, out.stderr[-3000:]
    assert "FAILED" not in out.stderr
    for path, what in ((paths["rte"], "the run is redone"), (mask_path(paths["mrpc"]), "built again"),
                       (checkpoint, "the run starts over")):
        assert f"fishtune: warning: {path} is damaged (" in out.stderr and what in out.stderr, out.stderr[-3000:]
        assert path.with_name(path.name + ".damaged").exists()
    results = load_results(runs)
    assert sorted(r.task for r in results) == sorted(tasks) and not load_failures(runs)
    assert all(r.resumed_from_epoch is None for r in results)  # nothing resumed from a damaged file
    for t in tasks:
        _strict_json(paths[t])

    capsys.readouterr()
    done = aggregate(runs, tmp_path / "results", ["1"], model_map={"bert_base": "tiny_bert"})
    assert not done["unreadable"] and len(done["set_aside"]) == 3
    printed = capsys.readouterr().out
    for path in (paths["rte"], mask_path(paths["mrpc"]), checkpoint):
        assert f"set aside as damaged by its run (which started over): {path}.damaged" in printed
    assert len(summarize(runs)["set_aside"]) == 3


def test_damaged_failure_record_and_foreign_json_are_skipped(tmp_path, capsys):
    runs = tmp_path / "runs"
    runs.mkdir()
    (runs / "a.failed.json").write_text('{"status": "fail')
    (runs / "b.json").write_bytes(b"\xff\xfe\x00garbage")
    done = aggregate(runs, tmp_path / "results", ["5"])
    assert sorted(u.split(": ")[0] for u in done["unreadable"]) == [str(runs / "a.failed.json"), str(runs / "b.json")]
    s = summarize(runs)
    assert len(s["unreadable"]) == 2 and not s["ok"] and "unreadable (skipped):" in format_summary(s)
