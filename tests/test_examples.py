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


def test_demo_prints_its_table_and_the_runs_folder_it_wrote(tmp_path, monkeypatch, capsys):
    """`make demo` on the tiny model and the fixtures: four rows after the baseline, and the folder it
    names at the end is the one given on its command line, holding the four result files."""
    import importlib

    monkeypatch.setenv("GLUE_DIR", str(GLUE_FIXTURES))
    monkeypatch.syspath_prepend(str(ROOT / "scripts"))
    runs = tmp_path / "demo-runs"
    monkeypatch.setattr(sys, "argv", ["demo.py", "model=tiny_bert", "data.train_samples=16", "data.dev_samples=8",
                                      "train.max_epochs=1", "fisher.samples=8", f"paths.runs_dir={runs}"])
    importlib.import_module("demo").main()
    out = capsys.readouterr().out
    table = [line for line in out.splitlines() if line.startswith("sst2 ")]
    assert [line.split()[1] for line in table] == ["trivial", "original", "fish", "rand", "rev"]
    assert out.rstrip().splitlines()[-1].startswith(f"Result files: {runs.resolve()} ")
    assert len(list(runs.glob("*.json"))) == 4
