import pytest
import torch

from conftest import loader, tiny_peft_model
from fishtune.batching import length_groups
from fishtune.fisher import classification_loss
from fishtune.harness.tasks import get_task
from fishtune.harness.train import TrainSettings, _forward_backward


def padded_batch(batch_size=16):
    m, tok, spec = tiny_peft_model()
    return m, spec, next(iter(loader(tok, spec, batch_size=batch_size)))


def unpadded_rows(batch):
    return [tuple(ids[mask.bool()].tolist()) for ids, mask in zip(batch["input_ids"], batch["attention_mask"])]


def test_groups_hold_every_sample_once_cut_to_their_longest():
    _, _, batch = padded_batch()
    groups = length_groups(batch, "cpu", cost_tokens=8)
    assert len(groups) > 1
    rows = [r for g in groups for r in unpadded_rows(g)]
    assert sorted(rows) == sorted(unpadded_rows(batch))
    for g in groups:
        assert g["input_ids"].shape == g["attention_mask"].shape == g["token_type_ids"].shape
        assert g["attention_mask"][:, -1].any()  # no all-padding column left
        assert len(g["labels"]) == len(g["input_ids"])
    # labels travel with their samples
    label_of = dict(zip(unpadded_rows(batch), batch["labels"].tolist()))
    assert all(label_of[r] == y for g in groups for r, y in zip(unpadded_rows(g), g["labels"].tolist()))
    assert sum(g["input_ids"].numel() for g in groups) < batch["input_ids"].numel()


def test_same_logits_per_sample():
    m, _, batch = padded_batch()
    m.eval()
    with torch.no_grad():
        whole = m(**{k: v for k, v in batch.items() if k != "labels"}).logits
        by_row = dict(zip(unpadded_rows(batch), whole))
        for g in length_groups(batch, "cpu", cost_tokens=8):
            out = m(**{k: v for k, v in g.items() if k != "labels"}).logits
            for r, logit in zip(unpadded_rows(g), out):
                torch.testing.assert_close(logit, by_row[r], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("model,template", [("tiny_modernbert", False), ("tiny_llama", True)])
def test_same_logits_per_sample_for_other_families(model, template):
    # ModernBERT unpads internally; LLaMA's head reads the last real token: grouping changes neither.
    m, tok, spec = tiny_peft_model(model=model)
    batch = next(iter(loader(tok, spec, batch_size=16, template=template)))
    m.eval()
    with torch.no_grad():
        whole = m(**{k: v for k, v in batch.items() if k != "labels"}).logits
        by_row = dict(zip(unpadded_rows(batch), whole))
        groups = length_groups(batch, "cpu", cost_tokens=8)
        assert len(groups) > 1 or tok.padding_side == "left"
        for g in groups:
            out = m(**{k: v for k, v in g.items() if k != "labels"}).logits
            for r, logit in zip(unpadded_rows(g), out):
                torch.testing.assert_close(logit, by_row[r], rtol=1e-4, atol=1e-5)


def test_training_gradient_of_groups_equals_the_whole_batch(monkeypatch):
    monkeypatch.setattr("fishtune.harness.train.group_cost_tokens", lambda model: 8)  # split this tiny model too
    m, spec, batch = padded_batch()
    m.eval()  # dropout off, so both ways compute the same function
    params = [p for p in m.parameters() if p.requires_grad]
    assert len(length_groups(batch, "cpu", 8)) > 1
    loss = _forward_backward(m, batch, spec, TrainSettings(device="cpu"))
    grouped = [p.grad.clone() for p in params]
    m.zero_grad()
    whole = classification_loss(m(**{k: v for k, v in batch.items() if k != "labels"}).logits, batch["labels"], False)
    whole.backward()
    torch.testing.assert_close(loss, whole.detach(), rtol=1e-5, atol=1e-7)
    for g, p in zip(grouped, params):
        torch.testing.assert_close(g, p.grad, rtol=1e-4, atol=1e-7)


def test_left_padding_gpu_and_unpadded_batches_stay_whole():
    _, _, batch = padded_batch()
    (on_gpu,) = length_groups(batch, "cuda", 8)  # only the device type is looked at
    assert all(torch.equal(on_gpu[k], batch[k]) for k in batch)
    left = {k: v.flip(1) if v.dim() == 2 else v for k, v in batch.items()}
    assert len(length_groups(left, "cpu", cost_tokens=8)) == 1
    assert torch.equal(length_groups(left, "cpu", cost_tokens=8)[0]["input_ids"], left["input_ids"])
    same = {k: v[:1] for k, v in batch.items()}
    same = {k: v[:, :int(same["attention_mask"].sum())] if v.dim() == 2 else v for k, v in same.items()}
    (only,) = length_groups(same, "cpu", cost_tokens=8)
    assert all(torch.equal(only[k], same[k]) for k in same)


def test_stsb_float_labels_follow_their_samples():
    m, tok, spec = tiny_peft_model(task="stsb")
    batch = next(iter(loader(tok, get_task("stsb"), batch_size=16)))
    groups = length_groups(batch, "cpu", cost_tokens=8)
    assert torch.equal(torch.sort(torch.cat([g["labels"] for g in groups])).values, torch.sort(batch["labels"]).values)


def test_group_cost_scales_with_width_not_threads():
    from fishtune.batching import COST_TOKENS_BERT_BASE, group_cost_tokens

    m, _, _ = tiny_peft_model()
    tiny = group_cost_tokens(m)
    threads = torch.get_num_threads()
    try:  # the groups decide the dropout draws: the same on every CPU
        torch.set_num_threads(1 if threads > 1 else 2)
        assert group_cost_tokens(m) == tiny
    finally:
        torch.set_num_threads(threads)
    m.config.hidden_size = 768
    assert group_cost_tokens(m) == COST_TOKENS_BERT_BASE
    assert tiny == COST_TOKENS_BERT_BASE * 768 / 32
