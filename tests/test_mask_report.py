import math

import pytest
import torch
from safetensors.torch import load_file
from scipy.stats import ttest_rel

from fishtune.masks import describe_parameter
from fishtune.reports.mask_report import bootstrap_table, jaccard, main, mask_table, overlap, placement
from fishtune.harness.results import load_results, mask_path, save_mask_file
from results_factory import write_result

SCORES = {  # (mask, task, seed) -> best dev score
    **{("none", t, s): 50 + i + s for i, t in enumerate(("mrpc", "rte")) for s in (1, 2, 3)},
    **{("fish", t, s): 52 + i + s + 0.5 * s * (t == "rte") for i, t in enumerate(("mrpc", "rte")) for s in (1, 2, 3)},
    **{("rand", t, s): 49 + i + s for i, t in enumerate(("mrpc", "rte")) for s in (1, 2)},
}
NAMES = ["base_model.model.bert.encoder.layer.0.attention.self.query.lora_A.default.weight",
         "base_model.model.bert.encoder.layer.4.attention.self.value.lora_B.default.weight"]


def write_runs(tmp_path):
    for (mask, task, seed), score in SCORES.items():
        path = tmp_path / f"{mask}-{task}-{seed}.json"
        write_result(path, model="minilm", method="lora", rank=1, mask=mask, budget=1, task=task, seed=seed,
                     layers=1 if mask == "none" else 5, ratio_pct=0.01, budget_ratio_pct=0.01, score=score)
        if mask != "none":
            g = torch.Generator().manual_seed(seed + 10 * (task == "rte"))
            m = {n: torch.rand(4, 8, generator=g) > 0.5 for n in NAMES}
            if seed == 3:   # a run from before safetensors: its <run>.mask.pt (the earliest kind, the masks alone)
                torch.save(m, path.with_suffix(".mask.pt"))
            else:
                save_mask_file(mask_path(path), m)
    return load_results(tmp_path)


def test_mask_table_means_stds_and_paired_test(tmp_path):
    table = mask_table(write_runs(tmp_path)).set_index("row")
    assert list(table.index) == ["original", "fish", "rand"]
    fish = [SCORES[("fish", t, s)] for t in ("mrpc", "rte") for s in (1, 2, 3)]
    orig = [SCORES[("none", t, s)] for t in ("mrpc", "rte") for s in (1, 2, 3)]
    assert table.loc["fish", "p_value"] == pytest.approx(ttest_rel(fish, orig).pvalue)
    assert table.loc["fish", "diff_vs_original"] == pytest.approx(sum(fish) / 6 - sum(orig) / 6)
    assert table.loc["fish", "pairs"] == 6 and table.loc["rand", "pairs"] == 4  # rand has seeds 1, 2 only
    assert table.loc["original", "mrpc"] == pytest.approx(52) and table.loc["original", "mrpc_std"] == pytest.approx(1)
    assert table.loc["original", "avg"] == pytest.approx((52 + 53) / 2)
    assert math.isnan(table.loc["original"].get("p_value", math.nan))


def test_jaccard_placement_and_overlap(tmp_path):
    a = {"x": torch.tensor([True, True, False, False])}
    b = {"x": torch.tensor([True, False, True, False])}
    assert jaccard(a, b) == pytest.approx(1 / 3) and jaccard(a, a) == 1.0
    assert describe_parameter(NAMES[0]) == (0, "query.lora_A")
    assert describe_parameter("base_model.model.classifier.modules_to_save.default.weight") == (None, "other")
    results = write_runs(tmp_path)
    place = placement(results)
    assert set(place["layer"]) == {0, 4} and place["entries"].eq(32).all()
    lap = overlap(results, "fish")
    assert len(lap) == 15  # 6 fish masks (2 tasks x 3 seeds, two of them old .mask.pt files): 15 pairs
    assert set(lap["same"]) == {"seed", "task", "both"}
    masks = {(r.task, r.seed): load_file(tmp_path / f"fish-{r.task}-{r.seed}.mask.safetensors")
             for r in results if r.mask == "fish" and r.seed != 3}
    row = lap[(lap.task_a == "mrpc") & (lap.seed_a == 1) & (lap.task_b == "mrpc") & (lap.seed_b == 2)].iloc[0]
    assert row["jaccard"] == pytest.approx(jaccard(masks[("mrpc", 1)], masks[("mrpc", 2)]))


def test_cli_writes_every_file(tmp_path):
    write_runs(tmp_path / "runs")
    main(["--runs-dir", str(tmp_path / "runs"), "--out", str(tmp_path / "out")])
    for name in ("masks.csv", "masks.tex", "mask_placement.csv", "mask_overlap.csv", "mask_placement.png",
                 "mask_overlap.png", "mask_bootstrap.csv"):
        assert (tmp_path / "out" / name).stat().st_size > 0
    tex = (tmp_path / "out" / "masks.tex").read_text()
    assert "\\toprule" in tex and "\\bottomrule" in tex and "$\\pm$" in tex


def test_bootstrap_pairs_each_masked_run_with_its_original(tmp_path):
    labels = [0, 1] * 20
    runs = {"none": labels[:30] + [1 - y for y in labels[30:]],   # 30 of 40 right
            "fish": labels,                                       # all right
            "rand": [1 - y for y in labels]}                      # all wrong
    for mask, preds in runs.items():
        write_result(tmp_path / f"{mask}.json", mask=mask, task="sst2", seed=1, score=0.0, dev_labels=labels,
                     dev_predictions=preds)
    # from before predictions were kept: left out
    write_result(tmp_path / "old.json", mask="rev", task="sst2", seed=1, score=0.0)
    boot = bootstrap_table(load_results(tmp_path), n_resamples=200).set_index("row")
    assert sorted(boot.index) == ["fish", "rand"]
    assert boot.loc["fish", "diff"] == pytest.approx(25.0) and boot.loc["fish", "p_value"] < 0.05
    assert boot.loc["rand", "diff"] == pytest.approx(-75.0) and boot.loc["rand", "ci_high"] < 0
    assert (boot["examples"] == 40).all()
