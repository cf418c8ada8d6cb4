"""The benchmark runs end to end on a tiny model and checks what it must check. No timing is
asserted here (speed is measured by `make bench`, never in a test): only that every comparison
runs on the same data and the Fisher equality check passes."""
import json
import sys

import pytest

from conftest import GLUE_FIXTURES, ROOT

sys.path.insert(0, str(ROOT / "benchmarks"))
import bench  # noqa: E402


def test_bench_runs_on_a_tiny_model_and_fishers_agree(tmp_path, monkeypatch):
    monkeypatch.setattr(bench, "cpu_has_native_bf16", lambda: True)   # the full bf16 comparison, on any CPU
    rc = bench.main(["--model", "tiny_bert", "--glue-dir", str(GLUE_FIXTURES), "--fisher-samples", "16",
                     "--chunk-size", "8", "--batch-size", "4", "--train-steps", "3", "--fixed-steps", "2",
                     "--bf16-models", "tiny_bert,tiny_bert", "--out", str(tmp_path)])
    assert rc == 0
    result = json.loads((tmp_path / "bench.json").read_text())
    assert result["checks"]["fisher_rel_err"] and result["figures"]["fisher_rel_err"] <= 1e-4
    assert result["fisher"]["samples"] == 16
    assert result["train"]["same_batches_as_trainer"]
    # every loop of a comparison ran the same number of steps
    steps = result["train"]["steps"]
    assert steps["mask_none"] == steps["mask_fish"] == steps["trainer_none"] == steps["trainer_trainer"] == 3
    assert steps["padding_fixed"] == steps["padding_dynamic"] == steps["padding_ours"] == 2
    assert set(result["figures"]) >= set(bench.TARGETS)
    assert "| fisher_speedup |" in (tmp_path / "bench.md").read_text()
    # bf16 against fp32: both sides the same number of steps, each with its peak memory
    for name in ("cpu_bf16_speedup", "cpu_bf16_speedup_tiny_bert"):
        r = result["bf16"][name]
        assert r["steps"] == 2 and result["figures"][name] == r["median"] > 0
        assert set(r["peak_mb"]) == {"fp32", "bf16"}
    assert "| cpu_bf16_speedup |" in (tmp_path / "bench.md").read_text()
    assert result["machine"]["cpu"]["capability"] and "torch CPU capability" in (tmp_path / "bench.md").read_text()


def test_without_native_bf16_the_bench_probes_a_few_steps_instead(tmp_path, monkeypatch):
    monkeypatch.setattr(bench, "cpu_has_native_bf16", lambda: False)
    rc = bench.main(["--only", "bf16", "--glue-dir", str(GLUE_FIXTURES), "--batch-size", "4", "--train-steps", "3",
                     "--emulated-steps", "2", "--bf16-models", "tiny_bert,tiny_bert", "--out", str(tmp_path)])
    assert rc == 0
    result = json.loads((tmp_path / "bench_bf16.json").read_text())
    probe = result["bf16"]["cpu_bf16_emulated_slowdown"]
    assert set(result["bf16"]) == {"cpu_bf16_emulated_slowdown"}   # no full comparison, on no model
    assert probe["steps"] == 2 and probe["slowdown"] == pytest.approx(probe["bf16_seconds"] / probe["fp32_seconds"])
    assert set(result["machine"]["cpu"]) >= {"capability", "avx512_bf16", "amx_tile", "native_bf16"}
    assert "| cpu_bf16_emulated_slowdown |" in (tmp_path / "bench_bf16.md").read_text()
