"""The Fisher under every loss the library knows, and under the user's own (issue 39).

Each default loss is checked against a reference written here, independently of fishtune: one sample
at a time, unpadded, plain `model(input_ids=..., attention_mask=...)`, the loss written out by hand,
torch.autograd.grad, squared, summed. Tiny random models (32 wide, 2 layers) with peft inserted."""
import warnings

import pytest
import torch
from torch import nn

import fishtune
from fishtune import fisher as fisher_module
from fishtune.batching import length_groups, right_aligned

VOCAB = 64
TINY = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
            max_position_embeddings=64, vocab_size=VOCAB)


def causal_lm(family):
    """A tiny random causal LM with LoRA (B initialised non-zero, so that lora_A's Fisher is too)."""
    from peft import LoraConfig, get_peft_model
    from transformers import (GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM, Qwen2Config,
                              Qwen2ForCausalLM)

    torch.manual_seed(0)
    if family == "gpt2":  # c_attn is a Conv1D: peft's LoRA on it still adds nn.Linear A and B
        model = GPT2LMHeadModel(GPT2Config(n_embd=32, n_layer=2, n_head=4, n_positions=64, vocab_size=VOCAB))
        targets = ["c_attn"]
    else:
        config, cls = {"qwen2": (Qwen2Config, Qwen2ForCausalLM), "llama": (LlamaConfig, LlamaForCausalLM)}[family]
        model = cls(config(num_key_value_heads=2, **TINY))
        targets = ["q_proj", "v_proj"]
    return get_peft_model(model, LoraConfig(task_type="CAUSAL_LM", r=2, lora_alpha=4, target_modules=targets,
                                            init_lora_weights=False, fan_in_fan_out=family == "gpt2"))


def samples(n=10, seed=0, answer_ends=True):
    """(input_ids, labels) of n SFT samples of different lengths: labels -100 on the prompt."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        prompt, answer = int(torch.randint(1, 8, (1,), generator=g)), int(torch.randint(1, 9, (1,), generator=g))
        ids = torch.randint(1, VOCAB, (prompt + answer,), generator=g)
        labels = ids.clone()
        labels[:prompt] = -100
        out.append((ids, labels))
    return out


def collate(rows, side, extra=None):
    """Pad a list of (input_ids, labels) to one batch: pad id 0, labels -100 on padding."""
    width = max(len(ids) for ids, _ in rows)
    batch = {"input_ids": torch.zeros(len(rows), width, dtype=torch.long),
             "attention_mask": torch.zeros(len(rows), width, dtype=torch.long),
             "labels": torch.full((len(rows), width), -100, dtype=torch.long)}
    for i, (ids, labels) in enumerate(rows):
        cols = slice(0, len(ids)) if side == "right" else slice(width - len(ids), width)
        batch["input_ids"][i, cols], batch["labels"][i, cols], batch["attention_mask"][i, cols] = ids, labels, 1
    return batch


def batches_of(rows, side, size=4):
    return [collate(rows[i:i + size], side) for i in range(0, len(rows), size)]


def reference(model, rows, loss_of):
    """sum over samples of (d loss_n / d theta)^2, one unpadded sample at a time."""
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    ref = {n: torch.zeros_like(p) for n, p in params.items()}
    model.eval()
    for ids, labels in rows:
        logits = model(input_ids=ids[None], attention_mask=torch.ones(1, len(ids), dtype=torch.long)).logits[0]
        for n, g in zip(params, torch.autograd.grad(loss_of(logits, labels), list(params.values()), allow_unused=True)):
            if g is not None:
                ref[n] += g ** 2
    return ref


def shifted_ce(logits, labels):
    """Causal LM: the logits at t predict the label at t + 1; -100 ignored; summed over the tokens."""
    return nn.functional.cross_entropy(logits[:-1], labels[1:], ignore_index=-100, reduction="sum")


def token_ce(logits, labels):
    return nn.functional.cross_entropy(logits, labels, ignore_index=-100, reduction="sum")


def assert_fisher_close(f, ref, factor=1.0):
    assert f.keys() == ref.keys()
    for n in ref:
        scale = ref[n].abs().max().item()
        torch.testing.assert_close(f[n], factor * ref[n], rtol=1e-4, atol=1e-6 * scale + 1e-30, msg=n)
    assert all(v.abs().sum() > 0 for v in ref.values())  # a match of zeros would prove nothing


@pytest.fixture
def split_tiny_models(monkeypatch):
    """Make the CPU length groups split even a 32-wide model (it would practically never be split)."""
    monkeypatch.setattr(fisher_module, "group_cost_tokens", lambda model: 4)


# --- causal LM ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("family", ["gpt2", "qwen2", "llama"])
@pytest.mark.parametrize("side", ["right", "left"])
@pytest.mark.parametrize("method,split", [("hooks", False), ("hooks", True), ("loop", False)])
def test_causal_lm_fisher_equals_the_unpadded_reference(family, side, method, split, monkeypatch):
    if split:
        monkeypatch.setattr(fisher_module, "group_cost_tokens", lambda model: 4)
        groups = length_groups(right_aligned(collate(samples(), side)), "cpu", 4)
        assert len(groups) > 1  # the split really happens, labels cut with input_ids
        assert all(g["labels"].shape == g["input_ids"].shape for g in groups)
    model, rows = causal_lm(family), samples()
    f = fishtune.empirical_fisher(model, batches_of(rows, side), num_samples=9, method=method)  # third batch cut
    assert_fisher_close(f, reference(model, rows[:9], shifted_ce))


def test_auto_takes_the_hooks_for_lora_and_the_loop_for_a_trainable_conv1d(monkeypatch):
    """LoRA's A and B on GPT-2 are nn.Linear (hooks); GPT-2's own Conv1D weights are not: a model with
    one left trainable takes the loop, refuses hooks, and still matches the reference."""
    taken = []
    for name in ("_fisher_linear_hooks", "_fisher_loop"):
        real = getattr(fisher_module, name)
        monkeypatch.setattr(fisher_module, name, lambda *a, real=real, name=name: taken.append(name) or real(*a))
    model, rows = causal_lm("gpt2"), samples(6)
    fishtune.empirical_fisher(model, batches_of(rows, "right"))
    model.get_base_model().transformer.h[1].mlp.c_fc.weight.requires_grad_(True)
    with pytest.raises(ValueError, match="method='hooks' needs every trainable parameter to be an nn.Linear"):
        fishtune.empirical_fisher(model, batches_of(rows, "right"), method="hooks")
    f = fishtune.empirical_fisher(model, batches_of(rows, "left"))
    assert taken == ["_fisher_linear_hooks", "_fisher_loop"]
    assert_fisher_close(f, reference(model, rows, shifted_ce))


def test_a_sample_counts_its_own_label_tokens_summed():
    """default_loss gives each sample of a padded batch its own loss: the cross-entropy summed (not
    averaged) over its own label tokens, as the sample alone."""
    model = causal_lm("llama").eval()
    rows = samples(4)
    batch = collate(rows, "right")
    losses = fishtune.default_loss(model, batch)
    assert losses.shape == (4,)
    for i, (ids, labels) in enumerate(rows):
        logits = model(input_ids=ids[None]).logits[0]
        torch.testing.assert_close(losses[i], shifted_ce(logits, labels), rtol=1e-5, atol=1e-6)


# --- token classification ------------------------------------------------------------------------------

def token_classifier():
    from peft import LoraConfig, get_peft_model
    from transformers import BertConfig, BertForTokenClassification

    torch.manual_seed(0)
    model = BertForTokenClassification(BertConfig(num_labels=5, **TINY))
    return get_peft_model(model, LoraConfig(task_type="TOKEN_CLS", r=2, lora_alpha=4, target_modules=["query", "value"],
                                            init_lora_weights=False))


def tagged(n=10, seed=1):
    """(input_ids, labels) with a tag per token, -100 on some (e.g. sub-word continuations)."""
    g = torch.Generator().manual_seed(seed)
    rows = []
    for _ in range(n):
        t = int(torch.randint(2, 12, (1,), generator=g))
        labels = torch.randint(0, 5, (t,), generator=g)
        labels[torch.rand(t, generator=g) < 0.3] = -100
        rows.append((torch.randint(1, VOCAB, (t,), generator=g), labels))
    return rows


@pytest.mark.parametrize("side", ["right", "left"])
@pytest.mark.parametrize("method", ["hooks", "loop"])
def test_token_classification_fisher_equals_the_reference(side, method, split_tiny_models):
    model, rows = token_classifier(), tagged()
    assert fisher_module.token_task(model) == "token_classification"
    f = fishtune.empirical_fisher(model, batches_of(rows, side), method=method)
    assert_fisher_close(f, reference(model, rows, token_ce))


# --- the user's own loss ------------------------------------------------------------------------------

@pytest.mark.parametrize("method", ["hooks", "loop"])
def test_own_loss_fn_is_used(method):
    model, rows = causal_lm("qwen2"), samples(8)
    f = fishtune.empirical_fisher(model, batches_of(rows, "left"), method=method,
                                  loss_fn=lambda m, batch: 2 * fishtune.default_loss(m, batch))
    assert_fisher_close(f, reference(model, rows, shifted_ce), factor=4.0)


class Bare(nn.Module):
    """A model of the user's own: returns a tensor of token scores, no `.logits`."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.embed = nn.Embedding(VOCAB, 16)
        self.embed.weight.requires_grad_(False)
        self.hidden, self.out = nn.Linear(16, 16), nn.Linear(16, 3)

    def forward(self, input_ids, attention_mask):
        h = torch.tanh(self.hidden(self.embed(input_ids))) * attention_mask[..., None]
        return self.out(h.sum(1))  # (batch, 3): a bag-of-words classifier


def bare_loss(model, batch):
    """The user's per-sample loss: cross-entropy with a label-smoothing of 0.1."""
    return nn.functional.cross_entropy(model(batch["input_ids"], batch["attention_mask"]), batch["target"],
                                       label_smoothing=0.1, reduction="none")


@pytest.mark.parametrize("method", ["hooks", "loop"])
def test_own_loss_fn_on_a_model_the_default_refuses(method):
    model, rows = Bare(), tagged(9)
    targets = torch.arange(9) % 3
    data = [{k: v for k, v in collate(rows[i:i + 4], "right").items() if k != "labels"} | {"target": targets[i:i + 4]}
            for i in range(0, 9, 4)]
    with pytest.raises(ValueError, match=r"the batch has no labels .*pass loss_fn="):
        fishtune.empirical_fisher(model, data)
    f = fishtune.empirical_fisher(model, data, method=method, loss_fn=bare_loss)
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    ref = {n: torch.zeros_like(p) for n, p in params.items()}
    for (ids, _), y in zip(rows, targets):
        loss = nn.functional.cross_entropy(model(ids[None], torch.ones(1, len(ids))), y[None], label_smoothing=0.1)
        for n, g in zip(params, torch.autograd.grad(loss, list(params.values()))):
            ref[n] += g ** 2
    assert_fisher_close(f, ref)


def test_fish_masks_passes_loss_fn_on():
    """fish_masks ranks by the Fisher of the loss it is given: here one that counts the first sample's
    tokens only, whose Fisher is that of the first sample alone."""
    model, rows = causal_lm("gpt2"), samples(4)
    batches, k = [collate(rows, "right")], 40
    first_only = lambda m, batch: fishtune.default_loss(m, batch) * (torch.arange(len(batch["input_ids"])) == 0)
    f = fishtune.empirical_fisher(model, batches, loss_fn=first_only)
    assert_fisher_close(f, reference(model, rows[:1], shifted_ce))
    masks = fishtune.fish_masks(model, batches, k, num_samples=4, loss_fn=first_only)
    assert sum(int(m.sum()) for m in masks.values()) == k
    expected = fishtune.build_mask(f, k, "fish")
    assert all(torch.equal(masks[n], expected[n]) for n in masks)
    default = fishtune.fish_masks(model, batches, k, num_samples=4)
    assert not all(torch.equal(masks[n], default[n]) for n in masks)


# --- refusals -------------------------------------------------------------------------------------------

def one_line_value_error(fn, *pattern):
    with pytest.raises(ValueError) as err:
        fn()
    text = str(err.value)
    assert "\n" not in text and all(p in text for p in pattern), text


def test_unsupported_outputs_are_refused_in_one_line():
    from transformers import BertConfig, BertForMaskedLM

    torch.manual_seed(0)
    mlm = BertForMaskedLM(BertConfig(**TINY))  # (B, T, V) logits, but no causal LM or token classifier
    batch = collate(samples(4), "right")
    one_line_value_error(lambda: fishtune.empirical_fisher(mlm, [batch]),  # the loop (its embeddings train): 1 sample
                         "logits (1, ", f", {VOCAB}), labels (1, ", "from BertForMaskedLM", "loss_fn=")
    lm = causal_lm("llama")
    wrong = dict(batch, labels=torch.zeros(4, dtype=torch.long))  # sequence labels on a causal LM
    one_line_value_error(lambda: fishtune.empirical_fisher(lm, [wrong]), "labels (4,)", "a causal LM needs labels shaped "
                         "like input_ids", "loss_fn=")
    one_line_value_error(lambda: fishtune.empirical_fisher(Bare(), [{**batch, "labels": batch["labels"][:, 0]}]),
                         "its output (Tensor) has no logits tensor", "loss_fn=")
    summed = lambda m, b: fishtune.default_loss(m, b).sum()  # one number for the batch
    one_line_value_error(lambda: fishtune.empirical_fisher(lm, [batch], loss_fn=summed),
                         "loss_fn must return one loss per sample, shape (4,); it returned ()")
    one_line_value_error(lambda: fishtune.fish_masks(lm, [batch], 10, loss_fn="ce"), "loss_fn must be callable")


# --- the default head, and trainable tensors outside it and the method -----------------------------------

def distilbert():
    from transformers import DistilBertConfig, DistilBertForSequenceClassification

    torch.manual_seed(0)
    return DistilBertForSequenceClassification(DistilBertConfig(vocab_size=VOCAB, dim=32, n_layers=2, n_heads=4,
                                                                hidden_dim=64, max_position_embeddings=64))


def distilbert_lora():
    from peft import LoraConfig, get_peft_model

    return get_peft_model(distilbert(), LoraConfig(task_type="SEQ_CLS", r=2, lora_alpha=4, target_modules=["q_lin", "v_lin"],
                                            init_lora_weights=False))


def sentences():
    rows = tagged(8, seed=2)
    return [dict(collate(rows[i:i + 4], "right"), labels=torch.tensor([0, 1, 1, 0])) for i in (0, 4)]


def stray_warnings(call):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = call()
    return result, [w.message for w in caught if issubclass(w.category, fishtune.StrayTrainableWarning)]


def test_distilbert_pre_classifier_is_head_and_the_rest_of_k_goes_to_lora():
    model = distilbert_lora()
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    head = fishtune.head_names(model)
    # peft trains a copy of pre_classifier (its name ends like classifier) and of classifier in full
    assert sorted(head) == sorted(n for n in trainable if ".modules_to_save." in n)
    assert {n.split(".")[2] for n in head} == {"pre_classifier", "classifier"}
    head_size = sum(trainable[n].numel() for n in head)
    assert head_size == 32 * 32 + 32 + 32 * 2 + 2
    masks, stray = stray_warnings(lambda: fishtune.fish_masks(model, sentences(), head_size + 50, num_samples=8))
    assert not stray
    assert sum(int(m.sum()) for m in masks.values()) == head_size + 50
    assert all(masks[n].all() for n in head)
    lora = [n for n in trainable if n not in head]
    assert lora and all("lora_" in n for n in lora) and sum(int(masks[n].sum()) for n in lora) == 50
    # the rule reads peft's modules_to_save, not a list of names: a head module no family names counts too
    assert all("modules_to_save" in n for n in head)


def test_a_base_weight_left_trainable_is_warned_by_name():
    model = distilbert_lora()
    base = "base_model.model.distilbert.transformer.layer.0.ffn.lin1.weight"
    model.get_parameter(base).requires_grad_(True)
    head_size = sum(p.numel() for n, p in model.named_parameters() if n in fishtune.head_names(model))
    masks, stray = stray_warnings(lambda: fishtune.fish_masks(model, sentences(), head_size + 50, num_samples=8))
    assert len(stray) == 1 and stray[0].names == [base] and base in str(stray[0])
    assert base in masks  # still a candidate, as before: only the user is told
    # a model with no method in it, its trainable parameters chosen by hand: nothing to warn about
    plain = distilbert()
    for n, p in plain.named_parameters():
        p.requires_grad_(n.endswith(".bias"))
    _, stray = stray_warnings(lambda: fishtune.fish_masks(plain, sentences(), 100, num_samples=8))
    assert not stray


def test_right_aligned_moves_left_padding_and_leaves_other_batches_alone():
    rows = samples(5)
    left, right = collate(rows, "left"), collate(rows, "right")
    moved = right_aligned(left)
    assert all(torch.equal(moved[k], right[k]) for k in right)
    assert all(torch.equal(right_aligned(right)[k], right[k]) for k in right)
