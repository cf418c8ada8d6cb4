"""FISH-Tuning of a causal LM with transformers.Trainer: SmolLM2-135M-Instruct + peft LoRA answers GLUE prompts.

    python examples/sft_fish.py                                     # SST-2 from $GLUE_DIR or ../shared/glue_data
    python examples/sft_fish.py --train-samples 48 --dev-samples 32 --fisher-samples 16

Supervised fine-tuning: each example is a chat turn whose user message is the task's prompt template
(fishtune's task table, Zhong et al. 2023) plus "Answer with one word: negative or positive." and whose
assistant reply is the answer word ("positive" / "negative" for SST-2). The loss is the causal LM's on the
reply alone: labels are -100 on the prompt and on padding. The model is the embedded SmolLM2 (4-bit Q4_1
weights dequantised to fp32, converted once into a cache folder: docs/SMOLLM2.md), as a LlamaForCausalLM.

LoRA (rank --rank, alpha 2 x rank, PiSSA init) on W_O (o_proj, the LLaMA family's target) of the bottom
--fish-layers layers. The budget k is what LoRA on the bottom --budget-layers layers trains (or --k);
fishtune.fish_masks keeps exactly k entries trainable, those with the largest empirical Fisher of the
answer's log-likelihood, -log p(answer | prompt), on --fisher-samples training examples; FishMaskCallback
keeps every other entry fixed while the Trainer trains. Dev accuracy is that of greedy answers (the first
answer word the reply names), before and after training. About 6 minutes of CPU time with --train-samples 48
--dev-samples 32 --fisher-samples 16 (docs/SMOLLM2.md has the figures).
"""
from __future__ import annotations

import argparse
import os
import re
import tempfile
from pathlib import Path

import torch
from peft import LoraConfig, get_peft_model
from torch.utils.data import DataLoader
from transformers import AutoTokenizer, LlamaForCausalLM, Trainer, TrainingArguments, set_seed

import fishtune
from fishtune.harness import data, smollm2
from fishtune.harness.tasks import get_task

GLUE_DIR = os.environ.get("GLUE_DIR") or str(Path(__file__).resolve().parents[2] / "shared" / "glue_data")
# The reply per label id (the hub's ids: RTE and WNLI 0 = entailment) for the classification tasks.
ANSWERS = {"sst2": ("negative", "positive"), "cola": ("no", "yes"), "mrpc": ("no", "yes"),
           "rte": ("yes", "no"), "wnli": ("no", "yes")}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=None, help="a LLaMA-family causal LM folder (default: the embedded SmolLM2)")
    p.add_argument("--task", default="sst2", choices=sorted(ANSWERS))
    p.add_argument("--glue-dir", default=GLUE_DIR, help="GLUE in its download layout (SST-2/train.tsv, dev.tsv)")
    p.add_argument("--train-samples", type=int, default=1000, help="seeded subsample of the train split (0: all)")
    p.add_argument("--dev-samples", type=int, default=256, help="seeded subsample of the dev split (0: all)")
    p.add_argument("--epochs", type=float, default=1)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--rank", type=int, default=8, help="LoRA rank")
    p.add_argument("--fish-layers", type=int, default=None, help="LoRA on these bottom layers, masked (default: all)")
    p.add_argument("--budget-layers", type=int, default=1, help="k = what LoRA on these bottom layers trains")
    p.add_argument("--k", type=int, default=None, help="the budget k itself (instead of --budget-layers)")
    p.add_argument("--fisher-samples", type=int, default=128)
    p.add_argument("--seed", type=int, default=42)
    args = p.parse_args(argv)
    for name in ("train_samples", "dev_samples", "fisher_samples", "budget_layers"):
        if getattr(args, name) < 0:
            p.error(f"--{name.replace('_', '-')}={getattr(args, name)}: must be 0 or more")
    if args.rank < 1 or (args.k is not None and args.k < 1) or args.epochs <= 0:
        p.error(f"--rank {args.rank}, --k {args.k}, --epochs {args.epochs}: rank and k must be 1 or more, epochs above 0")
    return args


def prompt(task_name: str, example: dict) -> list[dict]:
    """The chat turn that asks for one example's answer: the task's template and the allowed answers."""
    template = get_task(task_name).template.format(text_a=example["text_a"], text_b=example["text_b"])
    return [{"role": "user", "content": f"{template} Answer with one word: {' or '.join(ANSWERS[task_name])}."}]


def encode(tok, task_name: str, examples: list[dict], max_length: int = 256) -> list[dict]:
    """input_ids = prompt + answer + <|im_end|>, labels = the answer's tokens and <|im_end|>, -100 on the prompt."""
    rows = []
    for ex in examples:
        head = tok.apply_chat_template(prompt(task_name, ex), add_generation_prompt=True)
        answer = tok(ANSWERS[task_name][ex["label"]] + tok.eos_token, add_special_tokens=False)["input_ids"]
        head = head[-(max_length - len(answer)):]  # a long sentence loses its start, never the answer
        rows.append({"input_ids": head + answer, "labels": [-100] * len(head) + answer})
    return rows


def collate(pad_id: int):
    """Right-pads input_ids with the pad token and labels with -100 (a padded position has no loss)."""
    def fn(rows: list[dict]) -> dict[str, torch.Tensor]:
        width = max(len(r["input_ids"]) for r in rows)
        batch = {"input_ids": [], "attention_mask": [], "labels": []}
        for r in rows:
            pad = width - len(r["input_ids"])
            batch["input_ids"].append(r["input_ids"] + [pad_id] * pad)
            batch["attention_mask"].append([1] * len(r["input_ids"]) + [0] * pad)
            batch["labels"].append(r["labels"] + [-100] * pad)
        return {k: torch.tensor(v) for k, v in batch.items()}
    return fn


@torch.no_grad()
def answer_accuracy(model, tok, task_name: str, examples: list[dict], batch_size: int = 32) -> float:
    """Percent of examples whose greedy reply names the right answer first: the first of the reply's words
    that is an allowed answer (the untrained instruct model answers in a sentence, "The sentiment in this
    sentence is negative."; a reply that names no allowed answer counts as wrong)."""
    model.eval()
    side, tok.padding_side = tok.padding_side, "left"  # generation continues from each prompt's last token
    correct = 0
    try:
        for i in range(0, len(examples), batch_size):
            chunk = examples[i:i + batch_size]
            texts = [tok.apply_chat_template(prompt(task_name, ex), add_generation_prompt=True, tokenize=False)
                     for ex in chunk]
            enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False)
            out = model.generate(**enc, max_new_tokens=10, do_sample=False, pad_token_id=tok.pad_token_id)
            for ex, reply in zip(chunk, tok.batch_decode(out[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)):
                named = [w for w in re.findall(r"[a-z]+", reply.lower()) if w in ANSWERS[task_name]]
                correct += bool(named) and named[0] == ANSWERS[task_name][ex["label"]]
    finally:
        tok.padding_side = side
    return 100 * correct / len(examples)


def lora(rank: int, layers: int) -> LoraConfig:
    # PiSSA starts B != 0, so lora_A has a gradient (and a Fisher) from the first step.
    return LoraConfig(task_type="CAUSAL_LM", r=rank, lora_alpha=2 * rank, lora_dropout=0.0, target_modules=["o_proj"],
                      layers_to_transform=list(range(layers)), init_lora_weights="pissa")


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    set_seed(args.seed)
    folder = args.model or smollm2.path()
    tok = AutoTokenizer.from_pretrained(folder)
    spec = get_task(args.task)
    split = {s: data.subsample(data.load_split(spec, s, args.glue_dir), n or None, args.seed)
             for s, n in (("train", args.train_samples), ("dev", args.dev_samples))}
    train = encode(tok, args.task, split["train"])
    pad = collate(tok.pad_token_id)

    base = LlamaForCausalLM.from_pretrained(folder, dtype=torch.float32)
    depth = base.config.num_hidden_layers
    fish_layers = args.fish_layers or depth
    if not 1 <= args.budget_layers <= fish_layers <= depth:
        raise SystemExit(f"--budget-layers {args.budget_layers}, --fish-layers {fish_layers}: need "
                         f"1 <= budget layers <= fish layers <= {depth} (the model's layers)")
    k = args.k or fishtune.original_k(lambda: get_peft_model(LlamaForCausalLM(base.config),
                                                             lora(args.rank, args.budget_layers)))
    before = answer_accuracy(base, tok, args.task, split["dev"])
    print(f"dev accuracy before training (greedy answers, {len(split['dev'])} examples): {before:.2f}")

    model = get_peft_model(base, lora(args.rank, fish_layers))
    fisher_batches = DataLoader(train, batch_size=8, shuffle=True, collate_fn=pad,
                                generator=torch.Generator().manual_seed(args.seed))
    masks = fishtune.fish_masks(model, fisher_batches, k, num_samples=args.fisher_samples, seed=args.seed)
    trainable = fishtune.apply_masks(model, masks)
    total = sum(p.numel() for p in model.parameters())
    print(f"trainable entries: {trainable} (k = {k}) of {total}, chosen among LoRA r{args.rank} on W_O of "
          f"{fish_layers} layers")

    with tempfile.TemporaryDirectory() as out:
        targs = TrainingArguments(
            output_dir=out, per_device_train_batch_size=args.batch_size, learning_rate=args.lr,
            lr_scheduler_type="constant", weight_decay=0.0, num_train_epochs=args.epochs, save_strategy="no",
            logging_steps=max(1, len(train) // args.batch_size // 4), report_to=[], seed=args.seed,
            disable_tqdm=True, remove_unused_columns=False, dataloader_pin_memory=False)
        trainer = Trainer(model=model, args=targs, train_dataset=train, data_collator=pad,
                          callbacks=[fishtune.FishMaskCallback(masks)])
        result = trainer.train()
    after = answer_accuracy(model, tok, args.task, split["dev"])
    seconds = result.metrics["train_runtime"] / max(1, result.global_step)
    print(f"dev accuracy after training: {after:.2f} (before {before:.2f}); {result.global_step} steps, "
          f"{seconds:.2f} s per step; {trainable} trainable entries (k = {k})")
    return {"trainable": trainable, "k": k, "before": before, "accuracy": after, "steps": result.global_step}


if __name__ == "__main__":
    main()
