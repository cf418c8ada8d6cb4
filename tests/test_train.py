import pytest
import torch

from conftest import loader, tiny_peft_model
from fishtune.fisher import empirical_fisher
from fishtune.masks import apply_masks, build_mask
from fishtune.harness.methods import split_trainable
from fishtune.harness.train import TrainSettings, train


def masked_setup(k=40, mode="fish", task="rte", seed=0):
    m, tok, spec = tiny_peft_model(task=task, seed=seed)
    head, cand = split_trainable(m, "bert")
    scores = {n: v for n, v in empirical_fisher(m, loader(tok, spec), 16).items() if n in cand}
    masks = build_mask(scores, k, mode, seed=42)
    return m, tok, spec, head, masks


def run_training(m, tok, spec, masks, **settings):
    s = TrainSettings(**{"lr": 1e-2, "max_epochs": 3, "patience": 10, "progress": False, **settings})
    apply_masks(m, masks)
    dl = loader(tok, spec, batch_size=8, shuffle=True, seed=0)
    return train(m, dl, loader(tok, spec, "dev"), spec, s, masks)


@pytest.mark.parametrize("weight_decay,bf16", [(0.0, False), (0.1, False), (0.0, True), (0.1, True)])
def test_masked_out_entries_bit_identical_and_exactly_k_trained(weight_decay, bf16):
    m, tok, spec, head, masks = masked_setup(k=40)
    before = {n: p.detach().clone() for n, p in m.named_parameters()}
    result = run_training(m, tok, spec, masks, weight_decay=weight_decay, bf16=bf16)
    assert all(p.dtype == torch.float32 for p in m.parameters())  # autocast leaves the weights fp32
    after = dict(m.named_parameters())
    changed = 0
    for n, mask in masks.items():
        assert torch.equal(after[n][~mask], before[n][~mask]), n  # bit for bit
        changed += int((after[n][mask] != before[n][mask]).sum())
    assert changed == 40  # every chosen entry moved (lr 1e-2), no other candidate did
    assert all(not torch.equal(after[n], before[n]) for n in head)  # the head trains in full
    frozen = [n for n in before if n not in masks and n not in head]
    assert all(torch.equal(after[n], before[n]) for n in frozen)
    # throughput per epoch: training tokens without padding, counted from the data
    batches = list(loader(tok, spec, batch_size=8))
    tokens, samples = sum(int(b["attention_mask"].sum()) for b in batches), sum(len(b["labels"]) for b in batches)
    assert [t["epoch"] for t in result.throughput] == [1, 2, 3]
    for t in result.throughput:
        assert t["tokens_per_second"] / t["samples_per_second"] == pytest.approx(tokens / samples)
    assert (result.tokens_seen, result.samples_seen) == (3 * tokens, 3 * samples)


def test_choose_precision_auto_follows_the_hardware(monkeypatch):
    import fishtune.harness.train as t

    assert t.choose_precision("fp32", "cpu") == (False, "train.precision=fp32")
    assert t.choose_precision("bf16", "cpu") == (True, "train.precision=bf16")
    for native in (True, False):
        monkeypatch.setattr(t, "cpu_has_native_bf16", lambda: native)
        bf16, why = t.choose_precision("auto", "cpu")
        assert bf16 is native and why.startswith("auto: CPU with" if native else "auto: CPU without")
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert t.choose_precision("auto", "cuda") == (False, "auto: CUDA GPU without bf16")
    # the flag torch reads is the CPU's own: on Linux, /proc/cpuinfo says the same
    flags = open("/proc/cpuinfo").read() if __import__("os").path.exists("/proc/cpuinfo") else None
    if flags is not None:
        monkeypatch.undo()
        assert t.cpu_has_native_bf16() == ("avx512_bf16" in flags or "amx_bf16" in flags)


def test_trainable_entries_equal_k():
    m, _, _, head, masks = masked_setup(k=57)
    trainable = apply_masks(m, masks)
    assert trainable == 57 + sum(p.numel() for p in head.values())
    assert all(m_.any() == p.requires_grad for n, p in m.named_parameters() if (m_ := masks.get(n)) is not None)


def test_early_stopping_after_patience_reports_best_epoch():
    m, tok, spec = tiny_peft_model()
    # lr 0: the dev score of epoch 1 is never beaten, so training stops after `patience` more epochs.
    out = train(m, loader(tok, spec), loader(tok, spec, "dev"), spec,
                TrainSettings(lr=0.0, max_epochs=50, patience=3, progress=False))
    assert out.stop_reason == "early_stopping"
    assert [h["epoch"] for h in out.history] == [1, 2, 3, 4]
    assert out.best["epoch"] == 1 and out.best["score"] == out.history[0]["score"]
    out = train(m, loader(tok, spec), loader(tok, spec, "dev"), spec,
                TrainSettings(lr=0.0, max_epochs=2, patience=3, progress=False))
    assert out.stop_reason == "max_epochs" and len(out.history) == 2


def test_stsb_regression_trains():
    m, tok, spec = tiny_peft_model(task="stsb")
    out = train(m, loader(tok, spec, shuffle=True), loader(tok, spec, "dev"), spec,
                TrainSettings(lr=1e-2, max_epochs=3, patience=5, progress=False))
    assert spec.is_regression and m.config.num_labels == 1
    assert {"pearson", "spearman", "score"} <= set(out.history[-1]["metrics"])
    assert out.history[-1]["train_loss"] < out.history[0]["train_loss"]


def test_resume_from_checkpoint_equals_uninterrupted(tmp_path):
    def fresh():
        m, tok, spec, _, masks = masked_setup(k=30)
        apply_masks(m, masks)
        return m, tok, spec, masks

    settings = TrainSettings(lr=1e-2, max_epochs=4, patience=10, progress=False)
    m, tok, spec, partial = fresh()
    full = train(m, loader(tok, spec, shuffle=True, seed=3), loader(tok, spec, "dev"), spec, settings, partial)
    expected = {n: p.detach().clone() for n, p in m.named_parameters()}

    ckpt = tmp_path / "run.ckpt.pt"
    m, tok, spec, partial = fresh()  # "killed" after epoch 2
    train(m, loader(tok, spec, shuffle=True, seed=3), loader(tok, spec, "dev"), spec,
          TrainSettings(lr=1e-2, max_epochs=2, patience=10, progress=False), partial, checkpoint=ckpt)
    m, tok, spec, partial = fresh()  # a new process picks the checkpoint up
    resumed = train(m, loader(tok, spec, shuffle=True, seed=3), loader(tok, spec, "dev"), spec, settings, partial,
                    checkpoint=ckpt)
    assert [h["score"] for h in resumed.history] == [h["score"] for h in full.history]
    assert [h["train_loss"] for h in resumed.history] == [h["train_loss"] for h in full.history]
    assert all(torch.equal(expected[n], p) for n, p in m.named_parameters())


def test_evaluate_returns_predictions_in_example_order(monkeypatch):
    # Sorted by length for evaluation, then split into length groups: `idx` puts them back.
    from fishtune.harness import data
    from fishtune.harness.train import evaluate
    from conftest import GLUE_FIXTURES

    monkeypatch.setattr("fishtune.harness.train.group_cost_tokens", lambda model: 8)
    m, tok, spec = tiny_peft_model(task="rte")
    encoded = data.encode(data.load_split(spec, "dev", GLUE_FIXTURES), tok, spec)
    for i, e in enumerate(encoded):
        e["idx"] = i
    out = evaluate(m, data.make_loader(encoded, tok, 8, sort_by_length=True), spec, TrainSettings(device="cpu"))
    with torch.no_grad():
        one_by_one = [int(m(**{k: torch.tensor([v]) for k, v in e.items() if k not in ("labels", "idx")}).logits.argmax())
                      for e in encoded]
    assert out["predictions"] == one_by_one


class LegacyMaskedAdam:
    """fishtune.harness.train's optimizer before the library API (commit f691492), verbatim in effect: the
    reference that keeps the harness's numbers unchanged."""

    def __init__(self, model, masks, lr, weight_decay=0.0):
        named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        self.params = [p for _, p in named]
        self.masked = [(p, masks[n]) for n, p in named if n in masks]
        self.lr, self.weight_decay = lr, weight_decay
        self.optimizer = torch.optim.Adam(self.params, lr=lr, weight_decay=0.0, foreach=True)

    @torch.no_grad()
    def step(self):
        grads = [p.grad for p, _ in self.masked if p.grad is not None]
        torch._foreach_mul_(grads, [m for p, m in self.masked if p.grad is not None])
        if self.weight_decay:
            masked_ids = {id(p) for p, _ in self.masked}
            for p, m in self.masked:
                p.mul_(1 - self.lr * self.weight_decay * m)
            for p in self.params:
                if id(p) not in masked_ids:
                    p.mul_(1 - self.lr * self.weight_decay)
        self.optimizer.step()


@pytest.mark.parametrize("lr,weight_decay", [(1e-2, 0.0), (1e-2, 0.1), (2e-3, 0.01)])
def test_masked_adam_equals_the_legacy_optimizer_bit_for_bit(lr, weight_decay):
    from fishtune.harness.train import masked_adam

    models = []
    for _ in range(2):
        m, tok, spec, head, masks = masked_setup(k=40)
        apply_masks(m, masks)
        models.append(m)
    partial = {n: mask.float() for n, mask in masks.items() if 0 < int(mask.sum()) < mask.numel()}
    opts = [LegacyMaskedAdam(models[0], partial, lr, weight_decay),
            masked_adam(models[1], masks, TrainSettings(lr=lr, weight_decay=weight_decay))]
    for batch in list(loader(tok, spec, batch_size=8, shuffle=True, seed=0)) * 2:
        for m, opt in zip(models, opts):
            torch.manual_seed(0)  # the same dropout masks in both
            logits = m(**{k: v for k, v in batch.items() if k != "labels"}).logits
            torch.nn.functional.cross_entropy(logits, batch["labels"]).backward()
            opt.step()
            opt.optimizer.zero_grad(set_to_none=True)
    for (n, a), b in zip(models[0].named_parameters(), models[1].parameters()):
        assert torch.equal(a, b), n


def test_frozen_linears_held_in_bf16_train_bit_for_bit_as_plain_autocast(monkeypatch):
    import contextlib

    import fishtune.harness.train as t

    runs = {}
    for hold in (True, False):
        m, tok, spec, head, masks = masked_setup(k=40)
        frozen = {n: p.detach().clone() for n, p in m.named_parameters() if not p.requires_grad}
        if not hold:  # autocast casting every frozen weight at every call, as before
            monkeypatch.setattr(t, "frozen_linears_in_bf16", lambda model, enabled: contextlib.nullcontext())
        result = run_training(m, tok, spec, masks, bf16=True)
        monkeypatch.undo()
        params = dict(m.named_parameters())
        # afterwards every frozen tensor is its fp32 self again, unchanged
        assert all(params[n].dtype == torch.float32 and torch.equal(params[n], v) for n, v in frozen.items())
        runs[hold] = (result.history, {n: p.detach().clone() for n, p in params.items()})
    assert runs[True][0] == runs[False][0]
    assert all(torch.equal(runs[True][1][n], runs[False][1][n]) for n in runs[False][1])
    m = masked_setup(k=40)[0]
    with t.frozen_linears_in_bf16(m, True):  # not vacuous: the base layers' weights are held as bf16
        held = [n for n, p in m.named_parameters() if p.dtype == torch.bfloat16]
    assert held and all("base_layer" in n or not p.requires_grad for n, p in m.named_parameters() if n in held)
