"""fishtune's own loop vs transformers.Trainer + FishMaskCallback on the same FISH mask.

    OMP_NUM_THREADS=1 python scripts/compare_trainer.py     # 47 min on one thread of a busy 2-core machine

Per seed: one harness run (`python -m fishtune.run model=minilm task=sst2 mask=fish budget=1`,
LoRA r1 on 5 layers, lr 5e-3, batch 32, 3 epochs, 2000 training examples, the full dev set); then
the same model (same seed, same head initialisation, same LoRA insertion) with the mask that run
saved, trained by the Trainer with the same learning rate, batch size and epochs, and otherwise as
fishtune trains: Adam(W) without weight decay, a constant learning rate, no gradient clipping. The
mean dev accuracies of the two must lie within 2.5 points. Writes results/compare_trainer.json.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"):
    os.environ.setdefault(var, "1")

import torch  # noqa: E402
from hydra import compose, initialize_config_dir  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402
from transformers import DataCollatorWithPadding, Trainer, TrainingArguments, set_seed  # noqa: E402

from fishtune import FishMaskCallback, apply_masks  # noqa: E402
from fishtune.harness import CONF_DIR  # noqa: E402
from fishtune.harness import data as glue  # noqa: E402
from fishtune.harness.results import load_mask_file, mask_path  # noqa: E402
from fishtune.harness.methods import insert_method  # noqa: E402
from fishtune.harness.models import load_model, load_tokenizer  # noqa: E402
from fishtune.harness.run import plan, run  # noqa: E402
from fishtune.harness.tasks import get_task  # noqa: E402


def harness_run(args, seed: int, runs_dir: str) -> tuple[dict, dict]:
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("config", overrides=[
            "model=minilm", "task=sst2", "peft=lora", "mask=fish", "budget=1", f"seed={seed}",
            f"data.glue_dir={args.glue_dir}", f"data.train_samples={args.train_samples}",
            f"train.lr={args.lr}", f"train.batch_size={args.batch_size}", f"train.max_epochs={args.epochs}",
            f"train.patience={args.epochs}", f"paths.runs_dir={runs_dir}", "force=true"])
    cfg = OmegaConf.to_container(cfg, resolve=True)
    return cfg, run(cfg, progress=False)


def trainer_run(args, cfg: dict, seed: int, out: str) -> list[float]:
    """The harness run's model and mask, trained by transformers.Trainer with FishMaskCallback."""
    task, p = get_task("sst2"), plan(cfg)
    tok = load_tokenizer(cfg["model"])
    train = glue.encode(glue.subsample(glue.load_split(task, "train", args.glue_dir), args.train_samples, seed), tok, task)
    dev = glue.encode(glue.load_split(task, "dev", args.glue_dir), tok, task)
    set_seed(seed)  # as fishtune.run: the head's initialisation and the insertion follow from the seed
    model = insert_method(load_model(cfg["model"], task.num_labels, tok), cfg["peft"], p.layers, p.family)
    masks, _ = load_mask_file(mask_path(p.path))  # the method's entries; the head trains in full
    apply_masks(model, masks)
    targs = TrainingArguments(
        output_dir=out, per_device_train_batch_size=args.batch_size, per_device_eval_batch_size=128,
        learning_rate=args.lr, lr_scheduler_type="constant", weight_decay=0.0, max_grad_norm=0.0,
        num_train_epochs=args.epochs, eval_strategy="epoch", save_strategy="no", logging_strategy="no",
        report_to=[], seed=seed, disable_tqdm=True, use_cpu=True)
    trainer = Trainer(model=model, args=targs, train_dataset=train, eval_dataset=dev,
                      data_collator=DataCollatorWithPadding(tok), callbacks=[FishMaskCallback(masks)],
                      compute_metrics=lambda e: {"accuracy": 100 * float((e.predictions.argmax(-1) == e.label_ids).mean())})
    trainer.train()
    return [h["eval_accuracy"] for h in trainer.state.log_history if "eval_accuracy" in h]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--glue-dir", default=os.environ.get("GLUE_DIR") or str(ROOT.parent / "shared" / "glue_data"))
    ap.add_argument("--train-samples", type=int, default=2000)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--lr", type=float, default=5e-3)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--seeds", default="1,2,3")
    ap.add_argument("--tolerance", type=float, default=2.5)
    ap.add_argument("--out", default=str(ROOT / "results" / "compare_trainer.json"))
    args = ap.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for seed in map(int, args.seeds.split(",")):
            cfg, result = harness_run(args, seed, f"{tmp}/runs")
            loop = [h["score"] for h in result["history"]]
            hf = trainer_run(args, cfg, seed, f"{tmp}/trainer")
            rows.append({"seed": seed, "trainable": result["trainable"], "fishtune_loop": loop, "trainer": hf})
            print(f"seed {seed}: trainable {result['trainable']}; dev accuracy per epoch: fishtune loop "
                  f"{', '.join(f'{a:.2f}' for a in loop)}; Trainer {', '.join(f'{a:.2f}' for a in hf)}", flush=True)
    summary = {}
    for which in ("final", "best"):
        pick = (lambda h: h[-1]) if which == "final" else max
        loop, hf = [pick(r["fishtune_loop"]) for r in rows], [pick(r["trainer"]) for r in rows]
        summary[which] = {"fishtune_loop": loop, "trainer": hf, "fishtune_loop_mean": statistics.mean(loop),
                          "trainer_mean": statistics.mean(hf), "diff": statistics.mean(loop) - statistics.mean(hf)}
        print(f"{which} epoch: fishtune loop mean {statistics.mean(loop):.2f}, Trainer mean {statistics.mean(hf):.2f}, "
              f"difference {summary[which]['diff']:+.2f} (tolerance {args.tolerance})")
    ok = all(abs(s["diff"]) <= args.tolerance for s in summary.values())
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"settings": {k: v for k, v in vars(args).items() if k != "out"}, "runs": rows,
                                          "summary": summary, "within_tolerance": ok,
                                          "torch_threads": torch.get_num_threads()}, indent=1) + "\n")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
