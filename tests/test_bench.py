"""The benchmark runs end to end on a tiny model and checks what it must check. No timing is
asserted here (speed is measured by `make bench`, never in a test): only that every comparison
runs on the same data and the Fisher equality check passes."""
import json
import sys

from conftest import GLUE_FIXTURES, ROOT

sys.path.insert(0, str(ROOT / "benchmarks"))
import bench  # noqa: E402


def test_bench_runs_on_a_tiny_model_and_fishers_agree(tmp_path):
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
