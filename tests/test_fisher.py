import pytest
import torch

from conftest import loader, tiny_peft_model
from fishtune import fisher as fisher_module
from fishtune.fisher import empirical_fisher
from fishtune.fisher import classification_loss


def reference_fisher(model, dl, n):
    """The definition, slowly: one padded sample at a time, squared gradient, summed."""
    params = {k: p for k, p in model.named_parameters() if p.requires_grad}
    ref = {k: torch.zeros_like(p) for k, p in params.items()}
    model.eval()
    seen = 0
    for batch in dl:
        for i in range(len(batch["labels"])):
            if seen == n:
                return ref
            seen += 1
            logits = model(**{k: v[i:i + 1] for k, v in batch.items() if k != "labels"}).logits
            loss = classification_loss(logits, batch["labels"][i:i + 1], model.config.num_labels == 1)
            for k, g in zip(params, torch.autograd.grad(loss, list(params.values()))):
                ref[k] += g ** 2
    return ref


def assert_fisher_close(f, ref):
    assert f.keys() == ref.keys()
    for k in ref:
        scale = ref[k].abs().max().item()
        torch.testing.assert_close(f[k], ref[k], rtol=1e-4, atol=1e-7 * scale + 1e-30, msg=k)


@pytest.mark.parametrize("model,task", [("tiny_bert", "rte"), ("tiny_bert", "stsb"), ("tiny_modernbert", "mrpc"),
                                        ("tiny_llama", "cola")])
@pytest.mark.parametrize("method", ["hooks", "loop"])
def test_fisher_equals_batch_size_one_reference(model, task, method):
    m, tok, spec = tiny_peft_model(model, task)
    dl = loader(tok, spec, batch_size=8, template=model == "tiny_llama")
    f = empirical_fisher(m, dl, num_samples=20, method=method)  # 20: the third batch is cut to 4
    assert_fisher_close(f, reference_fisher(m, dl, 20))
    assert all(v.shape == p.shape for (k, v), p in zip(f.items(), [p for p in m.parameters() if p.requires_grad]))


@pytest.mark.parametrize("method,path", [("lora", "hooks"), ("ia3", "loop")])
def test_auto_picks_the_path_by_parameter_kind_and_matches_the_reference(monkeypatch, method, path):
    """auto takes the batched Linear hooks when every trainable tensor is a Linear weight or bias
    (LoRA's A and B) and the per-sample loop otherwise (IA3's scaling vectors are not): spy on both
    paths to see which one ran (the values alone cannot tell, both are exact), and check the result
    against the slow definition, not against the other path."""
    calls = []

    def spy(name):
        real = getattr(fisher_module, name)

        def recorded(*args, **kwargs):
            calls.append(name)
            return real(*args, **kwargs)
        monkeypatch.setattr(fisher_module, name, recorded)

    spy("_fisher_linear_hooks")
    spy("_fisher_loop")
    m, tok, spec = tiny_peft_model(method=method, layers=1 if method == "ia3" else 3)
    dl = loader(tok, spec)
    f = empirical_fisher(m, dl, num_samples=12)
    assert calls == [{"hooks": "_fisher_linear_hooks", "loop": "_fisher_loop"}[path]]
    assert all(v.abs().sum() > 0 for v in f.values())  # a match of zeros would prove nothing
    assert_fisher_close(f, reference_fisher(m, dl, 12))


def test_pissa_gives_lora_a_nonzero_fisher_and_plain_init_does_not():
    for init, nonzero in (("pissa", True), ("default", False)):
        m, tok, spec = tiny_peft_model(init=init)
        f = empirical_fisher(m, loader(tok, spec), num_samples=16)
        lora_a = [v for k, v in f.items() if "lora_A" in k]
        assert lora_a and all(bool(v.abs().sum() > 0) == nonzero for v in lora_a)
        assert all(v.abs().sum() > 0 for k, v in f.items() if "lora_B" in k)


def test_fisher_leaves_model_state_alone():
    m, tok, spec = tiny_peft_model()
    m.train()
    before = {k: p.detach().clone() for k, p in m.named_parameters()}
    empirical_fisher(m, loader(tok, spec), num_samples=8)
    assert m.training
    assert all(p.grad is None for p in m.parameters())
    assert all(torch.equal(before[k], p) for k, p in m.named_parameters())
