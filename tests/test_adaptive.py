import numpy as np
import pytest
import torch
from scipy.spatial.distance import jensenshannon

from conftest import loader, run_config, tiny_peft_model
from fishtune.adaptive import AdaptiveFreezer, AdaptiveSettings, js_distance
from fishtune.harness.methods import split_trainable
from fishtune.harness.run import run
from fishtune.harness.train import TrainSettings, train


@pytest.mark.parametrize("p,q", [
    ([0.1, 0.4, 0.5], [0.8, 0.15, 0.05]),
    ([1, 0, 0], [0, 1, 0]),            # disjoint: the maximum, sqrt(ln 2)
    ([3.0, 1.0, 0.0, 2.0], [6.0, 2.0, 0.0, 4.0]),  # same shape, other scale: 0
    (np.random.default_rng(0).random(50), np.random.default_rng(1).random(50)),
])
def test_js_distance_equals_scipy(p, q):
    assert js_distance(torch.tensor(p, dtype=torch.float64), torch.tensor(q, dtype=torch.float64)) == \
        pytest.approx(jensenshannon(np.asarray(p, float), np.asarray(q, float)), abs=1e-12)


def eager_freezer(model):
    """Settings that freeze quickly, so a few tiny epochs show several decisions."""
    _, cand = split_trainable(model, "bert")
    start = {n: torch.ones_like(p, dtype=torch.bool) for n, p in cand.items()}
    settings = AdaptiveSettings(granularity="rows:2", fisher_interval=1, freeze_interval=3, threshold_std=-10.0,
                                max_freeze_fraction=0.3, min_active_ratio=0.2)
    return AdaptiveFreezer(model, start, settings)


def test_frozen_groups_stay_frozen_bit_identical_with_state_dropped():
    m, tok, spec = tiny_peft_model()
    freezer = eager_freezer(m)
    frozen_at = {}  # group index -> parameter rows at the moment of freezing
    original = freezer._freeze_group

    def spy(g, optimizer):
        frozen_at[freezer.groups.index(g)] = freezer.params[g.name][g.rows].detach().clone()
        original(g, optimizer)
    freezer._freeze_group = spy

    active_seen = []
    real_after = freezer.after_backward

    def watch(optimizer):
        real_after(optimizer)
        active_seen.append({i for i, g in enumerate(freezer.groups) if g.active})
    freezer.after_backward = watch

    settings = TrainSettings(lr=1e-2, max_epochs=4, patience=10, progress=False)
    out = train(m, loader(tok, spec, batch_size=4, shuffle=True), loader(tok, spec, "dev"), spec, settings,
                freezer=freezer)
    assert frozen_at, "nothing was frozen"
    assert all(later <= earlier for earlier, later in zip(active_seen, active_seen[1:]))  # only shrinks
    opt_state = {}
    for i, before in frozen_at.items():
        g = freezer.groups[i]
        p = freezer.params[g.name]
        assert not g.active and not freezer.allowed[g.name][g.rows].any()
        assert torch.equal(p[g.rows], before), g.name  # bit for bit after freezing
        opt_state[g.name] = g
    assert out.history[-1]["active_ratio"] == freezer.active_ratio < 1


def test_optimizer_state_of_frozen_groups_is_dropped():
    m, tok, spec = tiny_peft_model()
    freezer = eager_freezer(m)
    from fishtune.harness.train import TrainSettings, masked_adam
    opt = masked_adam(m, {}, TrainSettings(lr=1e-2))
    dl = loader(tok, spec, batch_size=4)
    from fishtune.fisher import classification_loss
    for _ in range(3):
        for batch in dl:
            loss = classification_loss(m(**{k: v for k, v in batch.items() if k != "labels"}).logits, batch["labels"],
                                       False)
            loss.backward()
            freezer.after_backward(opt.optimizer)
            opt.step()
            opt.zero_grad()
    frozen = [g for g in freezer.groups if not g.active]
    assert frozen
    for g in frozen:
        p = freezer.params[g.name]
        state = opt.optimizer.state.get(p)
        if not freezer.allowed[g.name].any():
            assert state is None or not state and not p.requires_grad
        else:
            assert torch.all(state["exp_avg"][g.rows] == 0) and torch.all(state["exp_avg_sq"][g.rows] == 0)


def test_adaptive_run_records_active_ratio_matching_trainable_entries(tmp_path):
    cfg = run_config(tmp_path, "task=rte", "mask=adaptive", "mask.fisher_interval=1", "mask.freeze_interval=2",
                     "mask.threshold_std=-10", "train.max_epochs=3", "train.batch_size=4", "data.train_samples=24",
                     "data.dev_samples=12")
    result = run(cfg, progress=False)
    total_candidates = result["trainable"] - 66  # everything inserted on 5 tiny layers, head 66
    assert result["layers"] == 5 and total_candidates == 5 * 3 * 64
    assert len(result["active_ratio_history"]) == 3
    final = result["active_ratio_history"][-1]
    assert result["trainable_final"] == 66 + round(final * total_candidates) < result["trainable"]
    assert result["ratio_pct_final"] == pytest.approx(100 * result["trainable_final"] / result["total"])
    assert result["ratio_pct_final"] <= result["ratio_pct_mean"] <= result["ratio_pct"]
