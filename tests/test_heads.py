"""model.head: what the classifier reads. The mean head against a hand-computed masked mean on a padded
batch, the pooler path unchanged, the head counted inside k by fish_masks, through peft and adapters."""
from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForSequenceClassification, BertConfig

from conftest import loader, model_cfg, peft_cfg, run_config
from fishtune.harness.methods import count_on_meta, insert_method, split_trainable
from fishtune.harness.models import (BertForSequenceClassificationPooled, build_on_meta, load_model, load_tokenizer,
                                     model_config, pool)
from fishtune.harness.results import config_hash
from fishtune.harness.tasks import get_task
from fishtune.masks import fish_masks


def tiny(head: str, num_labels: int = 2):
    cfg = dict(model_cfg("tiny_bert"), head=head)
    tok = load_tokenizer(cfg)
    torch.manual_seed(0)
    return load_model(cfg, num_labels, tok).eval(), tok


@pytest.mark.parametrize("num_labels", [1, 2])
def test_mean_head_is_the_masked_mean_of_a_padded_batch(num_labels):
    model, tok = tiny("mean", num_labels)
    batch = tok(["a b", "a much longer sentence than the first one"], padding=True, return_tensors="pt")
    assert batch["attention_mask"][0].sum() < batch["attention_mask"].shape[1]  # really padded
    with torch.no_grad():
        h = model.bert(**batch).last_hidden_state
        # one example at a time, padding cut off: nothing of the padded positions may leak in
        by_hand = torch.stack([h[i, :int(batch["attention_mask"][i].sum())].mean(0) for i in range(2)])
        alone = torch.stack([model.bert(input_ids=batch["input_ids"][i:i + 1, :int(batch["attention_mask"][i].sum())])
                             .last_hidden_state[0].mean(0) for i in range(2)])
        logits = model(**batch).logits
    torch.testing.assert_close(by_hand, alone, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(logits, model.classifier(by_hand), rtol=1e-5, atol=1e-6)
    assert model.bert.pooler is None
    assert model.classifier.weight.shape == (num_labels, model.config.hidden_size)


def test_cls_head_reads_the_first_state():
    model, tok = tiny("cls")
    batch = tok(["a b", "c d e f"], padding=True, return_tensors="pt")
    with torch.no_grad():
        h = model.bert(**batch).last_hidden_state
        torch.testing.assert_close(model(**batch).logits, model.classifier(h[:, 0]))


def test_the_pooler_path_is_transformers_own_for_bert_base():
    cfg = dict(model_cfg("bert_base_random"))
    assert cfg["head"] == "pooler"
    conf = model_config(cfg, 2, load_tokenizer(model_cfg("tiny_bert")))
    assert conf.num_hidden_layers == 12 and conf.hidden_size == 768  # bert-base's architecture
    ours = build_on_meta(conf)
    with torch.device("meta"):
        theirs = AutoModelForSequenceClassification.from_config(BertConfig(**conf.to_dict()))
    assert type(ours) is type(theirs) and not isinstance(ours, BertForSequenceClassificationPooled)
    assert [(n, p.shape) for n, p in ours.named_parameters()] == [(n, p.shape) for n, p in theirs.named_parameters()]
    assert "bert.pooler.dense.weight" in dict(ours.named_parameters())


def test_a_named_pooler_keeps_the_identity_of_runs_from_before_the_head_existed(tmp_path):
    config = run_config(tmp_path, "task=rte")
    before = {**config, "model": {k: v for k, v in config["model"].items() if k != "head"}}
    assert config["model"]["head"] == "pooler" and config_hash(config) == config_hash(before)
    assert config_hash(run_config(tmp_path, "task=rte", "model.head=mean")) != config_hash(config)


@pytest.mark.parametrize("method", ["lora", "adapter"])
def test_fish_masks_counts_the_mean_head_inside_k(method):
    model, tok = tiny("mean")
    spec = get_task("rte")
    model = insert_method(model, peft_cfg(method), 3, "bert")
    head, candidates = split_trainable(model, "bert")
    head_size = sum(p.numel() for p in head.values())
    assert head_size == model.config.hidden_size * 2 + 2
    k = head_size + 50
    masks = fish_masks(model, loader(tok, spec, n=16), k, "fish", num_samples=16)
    assert sum(int(m.sum()) for m in masks.values()) == k
    assert all(bool(masks[n].all()) for n in head)  # the head trains in full, inside k
    # the counts from the config alone agree with the real model
    conf = model_config(dict(model_cfg("tiny_bert"), head="mean"), 2, tok)
    counts = count_on_meta(conf, peft_cfg(method), 3, "bert")
    assert counts["head"] == head_size
    assert counts["trainable"] == head_size + sum(p.numel() for p in candidates.values())


def test_the_pilot_rule_takes_the_best_rate_that_beats_every_head_only_mean():
    import pandas as pd

    from fishtune.reports.pilot import choose_lr

    rows = [("sst2", "head only", 1e-3, 70.0), ("sst2", "head only", 5e-3, 74.0),
            ("stsb", "head only", 1e-3, 20.0), ("stsb", "head only", 5e-3, 10.0),
            ("sst2", "original", 1e-3, 75.0), ("stsb", "original", 1e-3, 21.0),   # beats 74 and 20: mean 48
            ("sst2", "original", 5e-3, 80.0), ("stsb", "original", 5e-3, 19.0)]   # misses 20 on STS-B
    table = pd.DataFrame(rows, columns=["task", "row", "lr", "mean"])
    assert choose_lr(table) == (1e-3, {"sst2": 74.0, "stsb": 20.0})
    table.loc[4, "mean"] = 73.0  # now no rate beats the reference on both tasks
    assert choose_lr(table)[0] is None
    # SmolLM2's rule: the bar is the trivial baseline + 10 per task; 5e-3 clears 60 and 15, 1e-3 misses 15
    assert choose_lr(table, {"sst2": 60.0, "stsb": 15.0}) == (5e-3, {"sst2": 60.0, "stsb": 15.0})


def test_the_trivial_baseline_averages_the_seeds_own_dev_subsets():
    from types import SimpleNamespace

    from fishtune.reports.stats import baselines_from

    runs = [SimpleNamespace(task="sst2", dev_labels=[1, 1, 1, 0]),      # majority 75 %
            SimpleNamespace(task="sst2", dev_labels=[1, 1, 1, 0]),      # the same subset counts once
            SimpleNamespace(task="sst2", dev_labels=[0, 1, 0, 1, 0]),   # majority 60 %
            SimpleNamespace(task="stsb", dev_labels=[1.0, 2.0, 4.5])]   # a constant prediction: 0
    assert baselines_from(runs) == {"sst2": (75.0 + 60.0) / 2, "stsb": 0.0}


def test_a_head_rate_of_its_own_moves_only_the_head_when_the_method_rate_is_zero(tmp_path):
    from fishtune.harness.train import TrainSettings, masked_adam

    model, tok = tiny("mean")
    model = insert_method(model, peft_cfg("lora"), 2, "bert")
    head, candidates = split_trainable(model, "bert")
    masks = {n: torch.ones_like(p, dtype=torch.bool) for n, p in candidates.items()}
    before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    opt = masked_adam(model, masks, TrainSettings(lr=0.0, head_lr=1e-2))
    batch = next(iter(loader(tok, get_task("rte"), n=8)))
    model(**batch).loss.backward()
    opt.step()
    moved = {n for n, p in model.named_parameters() if p.requires_grad and not torch.equal(p, before[n])}
    assert moved == set(head)
    # null keeps the identity of the runs from before the key; a value makes another run
    config = run_config(tmp_path, "task=rte")
    assert config["train"]["head_lr_scale"] is None
    older = {**config, "train": {k: v for k, v in config["train"].items() if k != "head_lr_scale"}}
    assert config_hash(config) == config_hash(older)
    assert config_hash(run_config(tmp_path, "task=rte", "train.head_lr_scale=400")) != config_hash(config)


def test_the_heads_report_pairs_each_cell_by_seed_at_the_same_rate_as_scipy_does():
    import numpy as np
    import pandas as pd
    from scipy import stats

    from fishtune.reports.heads import heads_table

    def frame(head, scores, lr=5e-3, row="fish", seeds=(1, 2, 3, 4)):
        return pd.DataFrame([{"head": head, "setting": "1000 ex, 3 ep", "task": "stsb", "budget": 1, "row": row,
                              "seed": s, "lr": lr, "score": v, "precision": "fp32", "pred_std": 1.0}
                             for s, v in zip(seeds, scores)])

    old = pd.concat([frame("pooler", [10.0, 20.0, 5.0, 8.0]),
                     frame("pooler", [90.0, 90.0, 90.0, 90.0], lr=2e-2),          # another rate: never compared
                     frame("pooler", [1.0, 2.0, 3.0], row="rand", seeds=(1, 2, 3))])
    new = pd.concat([frame("mean", [30.0, 25.0, 40.0, 21.0]),
                     frame("mean", [4.0, 9.0, 4.0, 1.0], row="rand", seeds=(2, 3, 4, 5))])   # seeds 2, 3 shared
    table = heads_table(old, new).set_index("row")
    assert table.loc["fish", "pairs"] == 4 and table.loc["rand", "pairs"] == 2
    assert table.loc["fish", "mean_diff"] == pytest.approx(np.mean([20, 5, 35, 13]))
    assert table.loc["fish", "p_ttest"] == pytest.approx(stats.ttest_rel([30, 25, 40, 21], [10, 20, 5, 8]).pvalue)
    assert table.loc["rand", "p_ttest"] == pytest.approx(stats.ttest_rel([4, 9], [2, 3]).pvalue)
    assert table.loc["fish", "pooler"] == pytest.approx(10.75)   # the 2e-2 runs left out
    p = sorted(table["p_ttest"])
    assert sorted(table["p_holm"]) == pytest.approx([min(1, 2 * p[0]), min(1, max(2 * p[0], p[1]))])


def test_the_original_row_is_paired_with_the_head_only_reference_by_seed():
    import pandas as pd
    from scipy import stats

    from fishtune.reports.heads import original_table

    def runs(head, row, scores, budget=1):
        return [{"head": head, "setting": "1000 ex, 3 ep", "task": "stsb", "budget": budget, "row": row, "seed": s,
                 "lr": 5e-3, "score": v, "precision": "fp32", "pred_std": 0.9} for s, v in enumerate(scores, 1)]

    new = pd.DataFrame(runs("mean", "original", [44.0, 45.0, 47.0]) + runs("mean", "head only", [34.0, 30.0, 36.0]))
    old = pd.DataFrame(runs("pooler", "original", [9.0, 8.0, 10.0]))
    probe = pd.DataFrame({"task": ["stsb", "stsb"], "head": ["mean", "mean"], "train": ["1000 (seed 1)", "all"],
                          "dev_score": [31.6, 46.5]})
    rec = original_table(old, new, probe).iloc[0]
    assert rec["vs_head_only_mean_diff"] == pytest.approx(12.0)
    assert rec["vs_head_only_p_ttest"] == pytest.approx(stats.ttest_rel([44, 45, 47], [34, 30, 36]).pvalue)
    assert (rec["mean"], rec["pooler"], rec["head_only"], rec["probe_ceiling"]) == pytest.approx((45.33333, 9.0, 33.33333, 31.6))


@pytest.mark.parametrize("side", ["left", "right"])
def test_the_last_head_reads_the_token_llamas_own_score_reads_on_either_padding_side(side):
    """pool(..., "last") is what LlamaForSequenceClassification classifies (the last non-pad token), on a
    padded batch of either side (SmolLM2's tokenizer pads on the left), and each prompt's own last state."""
    cfg = model_cfg("tiny_llama")
    tok = load_tokenizer(cfg)
    tok.padding_side = side
    torch.manual_seed(0)
    model = load_model(cfg, 2, tok).eval()
    texts = ["a b", "a much longer sentence than the first one", "c"]
    batch = tok(texts, padding=True, return_tensors="pt")
    assert (batch["attention_mask"] == 0).any()   # really padded
    with torch.no_grad():
        last = pool(model.model(**batch).last_hidden_state, batch["attention_mask"], "last")
        assert torch.allclose(model.score(last), model(**batch).logits, atol=1e-5)
        for text, row in zip(texts, last):
            alone = model.model(**tok([text], return_tensors="pt")).last_hidden_state[0, -1]
            assert torch.allclose(row, alone, atol=1e-4)
