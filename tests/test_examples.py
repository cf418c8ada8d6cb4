"""`make examples` in a short form: both example scripts end to end on the embedded MiniLM and the
GLUE fixtures, tiny sizes. They report exactly k trainable entries (LoRA on 1 layer of MiniLM)."""
import sys

import pytest

from conftest import GLUE_FIXTURES, ROOT

sys.path.insert(0, str(ROOT / "examples"))

TINY = ["--glue-dir", str(GLUE_FIXTURES), "--train-samples", "16", "--dev-samples", "8", "--epochs", "1",
        "--batch-size", "8", "--fisher-samples", "8"]
K_BUDGET_1 = 3 * (384 + 384) + 384 * 2 + 2  # LoRA r1 on Q, K, V of one MiniLM layer, plus the head


@pytest.mark.parametrize("script", ["trainer_fish", "plain_loop"])
def test_example_runs_offline_with_exactly_k_trainable(script, tmp_path):
    import importlib

    extra = ["--save", str(tmp_path)] if script == "trainer_fish" else []
    out = importlib.import_module(script).main(TINY + extra)
    assert out["trainable"] == K_BUDGET_1
    assert 0 <= out["accuracy"] <= 100 and len(out["per_epoch"]) == 1
    if extra:
        import fishtune

        masks = fishtune.load_masks(tmp_path)
        assert sum(int(m.sum()) for m in masks.values()) == K_BUDGET_1
        assert (tmp_path / "adapter_config.json").exists()
