"""Precision is part of a run's identity (issue 30): `auto` is resolved before the run is named, a cell
never mixes precisions, and bf16 forced on a CPU that emulates it warns with the slowdown it measured."""
import subprocess
import sys
import warnings

import pytest

from conftest import ROOT, run_config
import fishtune.harness.train as train_module
from fishtune.harness.run import ConfigError, plan, run
from fishtune.harness.train import EmulatedBf16Warning

QUICK = ["task=sst2", "mask=rand", "train.max_epochs=1", "data.train_samples=16", "data.dev_samples=8"]


@pytest.fixture
def cpu(monkeypatch):
    """cpu(native): make torch's bf16 checks say this CPU has native bf16, or not."""
    def set_native(native: bool) -> None:
        monkeypatch.setattr(train_module, "cpu_has_native_bf16", lambda: native)
        monkeypatch.setattr(train_module, "_WARNED_EMULATED", False)
    return set_native


def test_auto_on_a_bf16_cpu_and_on_an_avx2_cpu_are_two_runs(tmp_path, cpu):
    plans = {}
    for native in (True, False):
        cpu(native)
        plans[native] = plan(run_config(tmp_path, *QUICK, "train.device=cpu"))   # train.precision: auto
    assert plans[True].config["train"]["precision"] == "bf16" and plans[False].config["train"]["precision"] == "fp32"
    assert plans[True].path != plans[False].path
    assert "native bf16" in plans[True].precision_reason and "without native bf16" in plans[False].precision_reason
    # an explicit precision is the run auto resolves to on the same machine: one identity
    assert plan(run_config(tmp_path, *QUICK, "train.device=cpu", "train.precision=fp32")).path == plans[False].path


def test_a_folder_with_finished_runs_refuses_another_precision_in_one_line(tmp_path, cpu):
    cpu(False)
    run(run_config(tmp_path, *QUICK, "seed=1"), progress=False)            # auto -> fp32 here
    cpu(True)                                                              # the sweep resumed on a bf16 CPU
    with pytest.raises(ConfigError, match=r"already holds 1 finished fp32 run\(s\) of tiny_bert-sst2-lora .*"
                                          r"would train in bf16: pass train.precision=fp32"):
        plan(run_config(tmp_path, *QUICK, "seed=2"))
    # nor the other half of a pair: another mask or budget of the same runs
    with pytest.raises(ConfigError, match="pass train.precision=fp32"):
        plan(run_config(tmp_path, *QUICK, "seed=1", "mask=none", "budget=2"))
    assert plan(run_config(tmp_path, *QUICK, "seed=2", "train.precision=fp32")).config["train"]["precision"] == "fp32"
    # another task in the same folder is free to train in bf16
    assert plan(run_config(tmp_path, *QUICK, "task=rte")).config["train"]["precision"] == "bf16"
    # from the command line: exit 2 and one line, before any training
    cmd = [sys.executable, "-m", "fishtune.run", "model=tiny_bert", f"paths.runs_dir={tmp_path}",
           f"data.glue_dir={ROOT / 'tests' / 'fixtures' / 'glue'}", *QUICK, "seed=3", "train.precision=bf16"]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "pass train.precision=fp32" in proc.stderr
    # a sweep stops at the first such run: nothing more trains, one line at the end, exit 2
    quick = [o for o in QUICK if not o.startswith("mask=")]
    sweep = subprocess.run([sys.executable, "-m", "fishtune.run", "-m", "model=tiny_bert", f"paths.runs_dir={tmp_path}",
                            f"data.glue_dir={ROOT / 'tests' / 'fixtures' / 'glue'}", *quick, "seed=4,5", "mask=none,rand",
                            "train.precision=bf16", f"hydra.sweep.dir={tmp_path / 'sweep'}"],
                           capture_output=True, text=True, cwd=ROOT)
    assert sweep.returncode == 2
    assert sweep.stderr.count("fishtune: error: the sweep stopped:") == 1
    assert [p.name for p in tmp_path.glob("tiny_bert-*.json")] == [plan(run_config(tmp_path, *QUICK, "seed=1", "train.precision=fp32")).path.name]


def test_forced_bf16_on_an_emulating_cpu_warns_once_and_trains_as_without_the_probe(tmp_path, cpu):
    cfg = ["train.precision=bf16", *QUICK]
    cpu(True)
    with warnings.catch_warnings():
        warnings.simplefilter("error", EmulatedBf16Warning)
        native = run(run_config(tmp_path / "native", *cfg), progress=False)
    cpu(False)
    with pytest.warns(EmulatedBf16Warning, match=r"a step takes [0-9.]+x as long as in fp32"):
        emulated = run(run_config(tmp_path / "emulated", *cfg), progress=False)
    with warnings.catch_warnings():   # once per process
        warnings.simplefilter("error", EmulatedBf16Warning)
        run(run_config(tmp_path / "again", *cfg, "seed=2"), progress=False)
    # the probe draws no random number and leaves no gradient: the same training, step for step
    assert emulated["history"] == native["history"] and emulated["dev_predictions"] == native["dev_predictions"]
