"""fishtune benchmarks: Fisher estimation and masked training, each against a reference, side by side.

    python benchmarks/bench.py [--glue-dir DIR] [--out results]    (or: make bench)

Every figure is a ratio of two loops run in this process on the same model, data and settings,
alternating step by step (benchmarks/timing.py), so load from other processes hits both alike:

  fisher_speedup      batch-size-1 loop padded to max length (the paper code's way) / our
                      empirical_fisher, 128 RTE samples, LoRA on 5 layers; both Fishers must agree
                      (norm of difference / norm of reference <= 1e-4)
  fisher_floor_ratio  our empirical_fisher / one plain forward+backward over the same groups of
                      samples (fishtune.batching), without the per-sample work
  mask_overhead       training step with a fish mask / the same step without a mask (SST-2)
  trainer_ratio       our training throughput / transformers.Trainer's (same model, data order,
                      collator, batch size, optimiser maths, precision)
  padding_gain        training step padded to max length / dynamically padded (SST-2, whole batches)
  length_group_gain   step on a dynamically padded whole batch / fishtune.harness.train's step, which
                      computes the batch as groups of similar length (CPU; fishtune.batching)
  cpu_bf16_speedup    (CPU) fishtune.harness.train's masked LoRA step in fp32 / the same step under bf16 autocast,
                      SST-2, on the embedded MiniLM; cpu_bf16_speedup_bert_base_random the same on
                      bert-base-sized random weights; each side's peak memory beside it (`--only bf16`
                      runs just these). On a CPU without native bf16 (no AVX512-BF16 or AMX: torch
                      emulates it) only a short probe instead:
  cpu_bf16_emulated_slowdown  a forward+backward under bf16 autocast / the same in fp32, a few steps
Every figure is labelled with the CPU's torch capability (bench.json: machine.cpu)

Writes results/bench.json and results/bench.md. See docs/BENCH.md.
"""
from __future__ import annotations

import os

for _k, _v in (("HF_HUB_OFFLINE", "1"), ("TRANSFORMERS_OFFLINE", "1"), ("HF_DATASETS_OFFLINE", "1"),
               ("TOKENIZERS_PARALLELISM", "false"), ("WANDB_MODE", "disabled")):
    os.environ.setdefault(_k, _v)

import argparse
import copy
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
from omegaconf import OmegaConf
from torch.utils.data import DataLoader
from transformers import DataCollatorWithPadding, set_seed
from transformers.utils import logging as hf_logging

from fishtune.harness import data as glue
from fishtune.batching import group_cost_tokens, length_groups
from fishtune.fisher import empirical_fisher
from fishtune.masks import build_mask
from fishtune.harness import CONF_DIR
from fishtune.harness.methods import insert_method, split_trainable
from fishtune.harness.models import load_model, load_tokenizer
from fishtune.harness.results import package_versions
from fishtune.harness.tasks import get_task
from fishtune.masks import apply_masks
from fishtune.harness.train import (TrainSettings, bf16_slowdown, choose_precision, cpu_capability,
                                    cpu_has_native_bf16, train)

sys.path.insert(0, str(Path(__file__).resolve().parent))
from baselines import (RecordingCollator, padded_loop_fisher, plain_backward, plain_train,  # noqa: E402
                       run_hf_trainer)
from timing import TickLoader, Turns, no_tick, peak_memory  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
TARGETS = {  # figure: (comparison, bound) from the issue
    "fisher_speedup": (">=", 4.0), "fisher_floor_ratio": ("<=", 1.3), "mask_overhead": ("<=", 1.05),
    "trainer_ratio": (">=", 1.0), "fisher_rel_err": ("<=", 1e-4), "cpu_bf16_speedup": (">=", 1.8),
}



def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def load_avg() -> float:
    return round(os.getloadavg()[0], 2)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--glue-dir", default=os.environ.get("GLUE_DIR", str(ROOT.parent / "shared" / "glue_data")))
    p.add_argument("--model", default="bert_base_random", help="a config in conf/model/")
    p.add_argument("--peft", default="lora", help="a config in conf/peft/ (LoRA-style: Linear hooks apply)")
    p.add_argument("--fisher-samples", type=int, default=128)
    p.add_argument("--chunk-size", type=int, default=32, help="samples per Fisher batch (conf fisher.chunk_size)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--train-steps", type=int, default=12, help="training steps per loop (incl. warm-up)")
    p.add_argument("--fixed-steps", type=int, default=4, help="steps of the padding comparison (fixed is slow)")
    p.add_argument("--warmup", type=int, default=1, help="first steps of each training loop left out")
    p.add_argument("--with-unpadded-loop", action="store_true",
                   help="also time empirical_fisher(method='loop') (batch size 1, padding trimmed)")
    p.add_argument("--precision", choices=("auto", "bf16", "fp32"), default="auto",
                   help="training steps' autocast: auto = bf16 on a CUDA GPU or a CPU that has it, else fp32")
    p.add_argument("--only", choices=("bf16",), help="run only these figures (bf16: cpu_bf16_speedup*)")
    p.add_argument("--emulated-steps", type=int, default=3,
                   help="steps each side of the short probe on a CPU without native bf16 (default 3)")
    p.add_argument("--bf16-models", default="minilm,bert_base_random",
                   help="configs in conf/model/ for cpu_bf16_speedup (the first) and cpu_bf16_speedup_NAME")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--out", default=str(ROOT / "results"))
    return p.parse_args(argv)


def ratio_stats(num: list[float], den: list[float], skip: int = 0) -> dict:
    """Ratios of paired steps (same batch, neighbouring in time): median of the per-step ratios
    (the headline: robust to a load spike in one step) and the ratio of the sums (throughput)."""
    n = min(len(num), len(den))
    a, b = num[skip:n], den[skip:n]
    return {"median": statistics.median(x / y for x, y in zip(a, b)), "of_sums": sum(a) / sum(b), "steps": len(a),
            "per_step": [round(x / y, 4) for x, y in zip(a, b)]}


def mb(n_bytes: int) -> float:
    return round(n_bytes / 2**20, 1)


def fisher_section(args, model, tok, device) -> dict:
    """Our empirical_fisher vs the padded batch-size-1 loop vs one plain forward+backward, on RTE."""
    task = get_task("rte")
    examples = glue.subsample(glue.load_split(task, "train", args.glue_dir), args.fisher_samples, args.seed)
    encoded = glue.encode(examples, tok, task)
    # As fishtune.run does it: length-sorted chunks, each padded to its own longest sample.
    loader = lambda: glue.make_loader(encoded, tok, args.chunk_size, sort_by_length=True)  # noqa: E731
    # The paper code's way: every sample padded to the task's max length, fed one at a time.
    pad_max = DataCollatorWithPadding(tok, padding="max_length", max_length=task.max_length)
    padded = [pad_max([e]) for e in encoded]
    n = len(encoded)
    tokens = sum(len(e["input_ids"]) for e in encoded)
    chunks = list(loader())
    dyn_tokens = sum(b["input_ids"].numel() for b in chunks)
    cost = group_cost_tokens(model)
    groups = [g for b in chunks for g in length_groups(b, device, cost)]
    group_tokens = sum(g["input_ids"].numel() for g in groups)
    log(f"fisher: RTE, {n} samples, {tokens} tokens ({dyn_tokens} in length-sorted chunks of {args.chunk_size}, "
        f"{group_tokens} in their {len(groups)} length groups, {n * task.max_length} padded to {task.max_length}); "
        f"trainable: "
        f"{sum(p.numel() for p in model.parameters() if p.requires_grad)} LoRA entries")

    models = {"ours": model, "floor": copy.deepcopy(model), "padded_loop": copy.deepcopy(model)}
    # Peak memory first, each alone on its largest input (also warms every loop up).
    largest = chunks[-1]
    probes = {
        "ours": lambda: empirical_fisher(models["ours"], [largest], len(largest["labels"])),
        "floor": lambda: plain_backward(models["floor"], [largest], no_tick),
        "padded_loop": lambda: padded_loop_fisher(models["padded_loop"], padded[:1], no_tick),
    }
    peak = {k: mb(peak_memory(fn, device)[1]) for k, fn in probes.items()}
    log(f"fisher: peak MB on the largest chunk {tuple(largest['input_ids'].shape)}: {peak}")

    loops = {
        "ours": lambda tick: empirical_fisher(models["ours"], TickLoader(loader(), tick), n),
        "floor": lambda tick: plain_backward(models["floor"], loader(), tick),
        "padded_loop": lambda tick: padded_loop_fisher(models["padded_loop"], padded, tick, args.chunk_size),
    }
    if args.with_unpadded_loop:
        models["unpadded_loop"] = copy.deepcopy(model)
        loops["unpadded_loop"] = lambda tick: empirical_fisher(models["unpadded_loop"], TickLoader(loader(), tick),
                                                               n, method="loop")
    turns = Turns(device)
    out = turns.run(loops)
    secs = {k: sum(v) for k, v in turns.steps.items()}
    cpu = {k: sum(v) for k, v in turns.cpu.items()}

    ours, ref = out["ours"], out["padded_loop"]
    diff = torch.sqrt(sum(((ours[k] - ref[k]).double() ** 2).sum() for k in ref))
    norm = torch.sqrt(sum((ref[k].double() ** 2).sum() for k in ref))
    rel_err = float(diff / norm)
    log(f"fisher: ours {secs['ours']:.1f} s, floor {secs['floor']:.1f} s, padded loop {secs['padded_loop']:.1f} s; "
        f"relative error {rel_err:.2e}")
    result = {
        "task": "rte", "samples": n, "chunk_size": args.chunk_size, "max_length": task.max_length,
        "tokens": {"unpadded": tokens, "dynamic_sorted_chunks": dyn_tokens, "length_groups": group_tokens,
                   "padded_to_max": n * task.max_length},
        "length_groups": [list(g["input_ids"].shape) for g in groups],
        "seconds": {k: round(v, 3) for k, v in secs.items()},
        "cpu_seconds": {k: round(v, 3) for k, v in cpu.items()},
        "turn_seconds": {k: [round(x, 3) for x in v] for k, v in turns.steps.items()},
        "peak_mb": peak, "peak_mb_input": {"ours": list(largest["input_ids"].shape),
                                           "floor": list(largest["input_ids"].shape), "padded_loop": [1, task.max_length]},
        "fisher_speedup": secs["padded_loop"] / secs["ours"],
        "fisher_floor_ratio": secs["ours"] / secs["floor"],
        "cpu_time_ratios": {"fisher_speedup": cpu["padded_loop"] / cpu["ours"],
                            "fisher_floor_ratio": cpu["ours"] / cpu["floor"]},
        "fisher_rel_err": rel_err,
        "fisher_max_abs_err_over_max": float(max((ours[k] - ref[k]).abs().max() for k in ref)
                                             / max(ref[k].abs().max() for k in ref)),
    }
    if "unpadded_loop" in out:
        result["unpadded_loop_speedup"] = secs["padded_loop"] / secs["unpadded_loop"]
    for name in list(models):
        if name != "ours":
            del models[name]
    return result


def fish_mask(args, model, tok, peft_cfg, family) -> tuple[dict, dict]:
    """A fish mask for SST-2 as fishtune.run builds it: Fisher of the method's parameters (head
    frozen meanwhile) on 128 samples; budget = the original LoRA run's count at budget level 1."""
    task = get_task("sst2")
    head, candidates = split_trainable(model, family)
    examples = glue.subsample(glue.load_split(task, "train", args.glue_dir), args.fisher_samples, args.seed)
    loader = glue.make_loader(glue.encode(examples, tok, task), tok, args.chunk_size, sort_by_length=True)
    t0 = time.perf_counter()
    for q in head.values():
        q.requires_grad_(False)
    scores = empirical_fisher(model, loader, args.fisher_samples)
    for q in head.values():
        q.requires_grad_(True)
    seconds = time.perf_counter() - t0
    total = sum(c.numel() for c in candidates.values())
    k = total * int(peft_cfg["budget_layers"][0]) // int(peft_cfg["fish_layers"])
    masks = build_mask({n: scores[n] for n in candidates}, k, "fish", args.seed)
    info = {"fisher_seconds": round(seconds, 3), "candidates": total, "k": k,
            "tensors": len(masks), "tensors_frozen": sum(int(m.sum()) == 0 for m in masks.values()),
            "tensors_partial": sum(0 < int(m.sum()) < m.numel() for m in masks.values())}
    return masks, info


def train_section(args, model, tok, masks, device, bf16) -> dict:
    """Training steps over the same SST-2 batches (same samples, same order).

    In turns: fishtune.harness.train without and with the fish mask; fishtune.harness.train and transformers.Trainer;
    the textbook step on whole batches padded to max length ("fixed") and to their longest sample
    ("dynamic") and fishtune.harness.train ("ours": dynamic padding, then length groups inside each batch on
    CPU). Peak memory: each alone, one step on the largest batch."""
    task = get_task("sst2")
    examples = glue.subsample(glue.load_split(task, "train", args.glue_dir), args.batch_size * args.train_steps,
                              args.seed)
    encoded = glue.encode(examples, tok, task)
    dev = glue.encode(glue.subsample(glue.load_split(task, "dev", args.glue_dir), 32, args.seed), tok, task)
    dev_loader = glue.make_loader(dev, tok, 32, sort_by_length=True)
    settings = TrainSettings(lr=task.lr, weight_decay=0.0, max_epochs=1, patience=1, device=device, bf16=bf16,
                             progress=False)
    fixed_collator = DataCollatorWithPadding(tok, padding="max_length", max_length=task.max_length)

    def dynamic_loader(data, record=None):
        loader = glue.make_loader(data, tok, args.batch_size, shuffle=True, seed=args.seed)
        if record is not None:
            loader.collate_fn = RecordingCollator(loader.collate_fn, record)
        return loader

    def fixed_loader(data):  # the same sample order as make_loader's
        return DataLoader(data, batch_size=args.batch_size, shuffle=True, collate_fn=fixed_collator,
                          generator=torch.Generator().manual_seed(args.seed))

    models = {"none": model}
    for name in ("fish", "trainer", "fixed", "dynamic"):
        models[name] = copy.deepcopy(model)
    apply_masks(models["fish"], masks)

    def ours(name, loader, limit=None, masks=None):
        return lambda tick: train(models[name], TickLoader(loader, tick, limit), dev_loader, task, settings, masks)

    def trainer(data, steps, record=None):
        collator = DataCollatorWithPadding(tok)
        if record is not None:
            collator = RecordingCollator(collator, record)
        return lambda tick: run_hf_trainer(models["trainer"], data, collator, args.batch_size, task.lr, args.seed,
                                           device, bf16, steps, tick)

    def plain(name, loader, limit=None):
        return lambda tick: plain_train(models[name], loader, task.lr, tick, limit)

    # Peak memory: the batch holding the longest sample has the largest padded shape (batch x longest).
    longest = sorted(encoded, key=lambda e: len(e["input_ids"]))[-args.batch_size:]
    probes = {
        "none": ours("none", dynamic_loader(longest)),
        "fish": ours("fish", dynamic_loader(longest), masks=masks),
        "trainer": trainer(longest, 1),
        "dynamic": plain("dynamic", dynamic_loader(longest)),
        "fixed": plain("fixed", fixed_loader(longest)),
    }
    peak = {k: mb(peak_memory(lambda: fn(no_tick), device)[1]) for k, fn in probes.items()}
    log(f"train: peak MB of one step on the largest batch: {peak}")

    # Sessions of two loops each: with two, each follows the other as often as itself (A B, B A,
    # A B, ...), so whatever a step leaves behind for the next (allocator state after a big batch)
    # weighs on both sides alike. The Trainer session also checks that both saw the same batches.
    seen = {"none": [], "trainer": []}
    sessions = {
        "mask": {"none": ours("none", dynamic_loader(encoded)),
                 "fish": ours("fish", dynamic_loader(encoded), masks=masks)},
        "trainer": {"none": ours("none", dynamic_loader(encoded, seen["none"])),
                    "trainer": trainer(encoded, args.train_steps, seen["trainer"])},
    }
    steps, cpu = {}, {}

    def in_turns(session: str, loops: dict, what: str) -> None:
        log(f"train: {what}, in turns: {', '.join(loops)}")
        turns = Turns(device)
        turns.run(loops)
        steps.update({f"{session}_{k}": v for k, v in turns.steps.items()})
        cpu.update({f"{session}_{k}": v for k, v in turns.cpu.items()})

    for session, loops in sessions.items():
        in_turns(session, loops, f"SST-2, batch {args.batch_size}, {args.train_steps} steps each "
                                 f"(first {args.warmup} left out)")
    if seen["none"] != seen["trainer"]:
        raise RuntimeError(f"Trainer saw other batches than fishtune: {seen['none'][:3]} vs {seen['trainer'][:3]}")

    # Padding, three loops: "ours" goes on training the no-mask model; the others train copies of it.
    in_turns("padding", {
        "fixed": plain("fixed", fixed_loader(encoded), args.fixed_steps),
        "dynamic": plain("dynamic", dynamic_loader(encoded), args.fixed_steps),
        "ours": ours("none", dynamic_loader(encoded), limit=args.fixed_steps),
    }, f"padding to max length {task.max_length} vs to the batch's longest vs fishtune.harness.train, "
       f"{args.fixed_steps} steps each")
    w = args.warmup

    def throughput(name):
        s = steps[name][w:]
        return args.batch_size * len(s) / sum(s)

    return {
        "task": "sst2", "batch_size": args.batch_size, "steps": {k: len(v) for k, v in steps.items()}, "warmup": w,
        "step_seconds": {k: [round(x, 3) for x in v] for k, v in steps.items()},
        "step_cpu_seconds": {k: [round(x, 3) for x in v] for k, v in cpu.items()},
        "median_step_seconds": {k: round(statistics.median(v[w:]), 3) for k, v in steps.items()},
        "samples_per_second": {k: round(throughput(k), 2) for k in steps},
        "peak_mb": {**peak, "padding_fixed": peak["fixed"], "padding_dynamic": peak["dynamic"],
                    "padding_ours": peak["none"]},
        "peak_mb_batch": {"dynamic": [args.batch_size, len(longest[-1]["input_ids"])],
                          "fixed": [args.batch_size, task.max_length]},
        "same_batches_as_trainer": True,
        "mask_overhead": ratio_stats(steps["mask_fish"], steps["mask_none"], w),
        "trainer_ratio": ratio_stats(steps["trainer_trainer"], steps["trainer_none"], w),
        "padding_gain": ratio_stats(steps["padding_fixed"], steps["padding_dynamic"], w),
        "length_group_gain": ratio_stats(steps["padding_dynamic"], steps["padding_ours"], w),
        "padding_gain_ours": ratio_stats(steps["padding_fixed"], steps["padding_ours"], w),
        "cpu_time_ratios": {"mask_overhead": ratio_stats(cpu["mask_fish"], cpu["mask_none"], w),
                            "trainer_ratio": ratio_stats(cpu["trainer_trainer"], cpu["trainer_none"], w),
                            "padding_gain": ratio_stats(cpu["padding_fixed"], cpu["padding_dynamic"], w),
                            "length_group_gain": ratio_stats(cpu["padding_dynamic"], cpu["padding_ours"], w)},
    }


def bf16_section(args) -> dict:
    """fishtune.harness.train's masked LoRA steps in fp32 and under bf16 autocast, in turns over the same SST-2
    batches, on each model of --bf16-models (CPU): LoRA on peft.fish_layers, a rand mask of the budget
    level 1 count (which entries does not change the cost). Peak memory: each side alone, one step on
    the largest batch."""
    task, out = get_task("sst2"), {}
    peft_cfg = OmegaConf.to_container(OmegaConf.load(CONF_DIR / "peft" / f"{args.peft}.yaml"))
    for i, name in enumerate(args.bf16_models.split(",")):
        figure = "cpu_bf16_speedup" + (f"_{name}" if i else "")
        model_cfg = OmegaConf.to_container(OmegaConf.load(CONF_DIR / "model" / f"{name}.yaml"))
        family, layers = model_cfg["family"], int(peft_cfg["fish_layers"])
        tok = load_tokenizer(model_cfg)
        set_seed(args.seed)
        model = insert_method(load_model(model_cfg, 2, tok), peft_cfg, layers, family)
        _, candidates = split_trainable(model, family)
        k = sum(c.numel() for c in candidates.values()) * int(peft_cfg["budget_layers"][0]) // layers
        masks = build_mask({n: torch.zeros_like(c) for n, c in candidates.items()}, k, "rand", args.seed)
        models = {"fp32": model, "bf16": copy.deepcopy(model)}
        for m in models.values():
            apply_masks(m, masks)
        examples = glue.encode(glue.subsample(glue.load_split(task, "train", args.glue_dir),
                                              args.batch_size * args.train_steps, args.seed), tok, task)
        dev = glue.encode(glue.subsample(glue.load_split(task, "dev", args.glue_dir), 32, args.seed), tok, task)
        dev_loader = glue.make_loader(dev, tok, 32, sort_by_length=True)
        settings = {p: TrainSettings(lr=task.lr, max_epochs=1, patience=1, bf16=p == "bf16", progress=False)
                    for p in models}

        def loop(p, data):
            loader = glue.make_loader(data, tok, args.batch_size, shuffle=True, seed=args.seed)
            return lambda tick: train(models[p], TickLoader(loader, tick), dev_loader, task, settings[p], masks)

        if not cpu_has_native_bf16():
            # Emulated bf16 is many times slower than fp32 (a MiniLM step 16x): a few steps say by how much,
            # where the full comparison would not finish in the bench's time.
            batch = next(iter(glue.make_loader(examples, tok, args.batch_size, shuffle=True, seed=args.seed)))
            probe = bf16_slowdown(models["bf16"], batch, task, steps=args.emulated_steps)
            log(f"bf16: {name}, emulated on this CPU: a step {probe['slowdown']:.1f}x as long as in fp32")
            out["cpu_bf16_emulated_slowdown"] = {"model": name, "k": k, "median": probe["slowdown"],
                                                 "steps": args.emulated_steps, **probe, "native_bf16": False}
            break
        longest = sorted(examples, key=lambda e: len(e["input_ids"]))[-args.batch_size:]
        peak = {p: mb(peak_memory(lambda: loop(p, longest)(no_tick))[1]) for p in models}
        log(f"bf16: {name}, fp32 vs bf16 autocast, SST-2 batch {args.batch_size}, {args.train_steps} steps each")
        turns = Turns("cpu")
        turns.run({p: loop(p, examples) for p in models})
        w = args.warmup
        out[figure] = {"model": name, "k": k, **ratio_stats(turns.steps["fp32"], turns.steps["bf16"], w),
                       # CPU seconds of the process per step: what a loaded machine's wall clock hides
                       "cpu_time_ratio": ratio_stats(turns.cpu["fp32"], turns.cpu["bf16"], w)["median"],
                       "median_step_seconds": {p: round(statistics.median(v[w:]), 3) for p, v in turns.steps.items()},
                       "samples_per_second": {p: round(args.batch_size * len(v[w:]) / sum(v[w:]), 2)
                                              for p, v in turns.steps.items()},
                       "peak_mb": peak, "native_bf16": cpu_has_native_bf16()}
    return out


def bf16_markdown(bf16: dict) -> list[str]:
    """The table rows of the bf16 figures."""
    rows = []
    for figure, r in bf16.items():
        if figure == "cpu_bf16_emulated_slowdown":
            rows.append(f"| {figure} | {r['median']:.2f} | | | {r['model']} forward+backward under bf16 autocast "
                        f"{r['bf16_seconds']:.2f} s (emulated: no AVX512-BF16 or AMX) | fp32 {r['fp32_seconds']:.2f} s "
                        f"(median of {r['steps']}) | | |")
            continue
        target, ok = fmt_check(figure, r["median"]) if figure in TARGETS else ("", "")
        sps = r["samples_per_second"]
        rows.append(f"| {figure} | {r['median']:.3f} | {target} | {ok} | {r['model']} bf16 autocast "
                    f"{sps['bf16']:.1f} samples/s | fp32 {sps['fp32']:.1f} samples/s (CPU-time ratio "
                    f"{r['cpu_time_ratio']:.2f}) | {r['peak_mb']['bf16']} | {r['peak_mb']['fp32']} |")
    return rows


def optimizer_step_overhead(model, masks, repeats: int = 200) -> dict:
    """The masked Adam step with and without the masks on the same gradients: the mask's own cost (ms)."""
    from fishtune.harness.train import masked_adam

    params = [p for p in model.parameters() if p.requires_grad]
    for p in params:
        p.grad = torch.randn_like(p) * 1e-3
    named = {n: p for n, p in model.named_parameters() if p.requires_grad}
    settings, trainable_masks = TrainSettings(lr=1e-8), {n: m for n, m in masks.items() if n in named}
    opts = {"none": masked_adam(model, {}, settings), "masked": masked_adam(model, trainable_masks, settings)}
    times = {k: [] for k in opts}
    saved = [p.detach().clone() for p in params]
    grads = [p.grad.clone() for p in params]
    for _ in range(repeats):
        for name, opt in opts.items():
            for p, g in zip(params, grads):
                p.grad.copy_(g)
            t0 = time.perf_counter()
            opt.step()
            times[name].append(time.perf_counter() - t0)
    with torch.no_grad():
        for p, s in zip(params, saved):
            p.copy_(s)
            p.grad = None
    med = {k: statistics.median(v) * 1e3 for k, v in times.items()}
    return {"median_ms": {k: round(v, 4) for k, v in med.items()}, "masked_minus_none_ms": round(med["masked"] - med["none"], 4),
            "params": len(params), "masked_params": len(trainable_masks)}


def cpu_label(cpu: dict) -> str:
    """The CPU's kind in a few words, beside every figure: figures of two kinds never compare as one."""
    return (f"torch CPU capability {cpu['capability']}, "
            f"{'native bf16' if cpu['native_bf16'] else 'no native bf16'}")


def fmt_check(name: str, value: float) -> str:
    op, bound = TARGETS[name]
    ok = value >= bound if op == ">=" else value <= bound
    return f"{op} {bound:g}", "yes" if ok else "**no**"


def markdown(r: dict) -> str:
    f, t, fig = r["fisher"], r["train"], r["figures"]
    fs, fp = f["seconds"], f["peak_mb"]
    ms, sps, tp = t["median_step_seconds"], t["samples_per_second"], t["peak_mb"]
    rows = [  # figure, ours, the other side, peak MB ours, peak MB other
        ("fisher_speedup", f"empirical_fisher {fs['ours']:.1f} s", f"padded bs-1 loop {fs['padded_loop']:.1f} s",
         fp["ours"], fp["padded_loop"]),
        ("fisher_floor_ratio", f"empirical_fisher {fs['ours']:.1f} s", f"plain fwd+bwd {fs['floor']:.1f} s",
         fp["ours"], fp["floor"]),
        ("fisher_rel_err", "empirical_fisher", "padded bs-1 loop", "", ""),
        ("mask_overhead", f"fish mask {ms['mask_fish']:.2f} s/step", f"no mask {ms['mask_none']:.2f} s/step",
         tp["fish"], tp["none"]),
        ("trainer_ratio", f"fishtune.harness.train {sps['trainer_none']:.2f} samples/s",
         f"HF Trainer {sps['trainer_trainer']:.2f} samples/s", tp["none"], tp["trainer"]),
        ("padding_gain", f"dynamic padding {ms['padding_dynamic']:.2f} s/step",
         f"padded to {t['peak_mb_batch']['fixed'][1]} {ms['padding_fixed']:.2f} s/step", tp["dynamic"], tp["fixed"]),
        ("length_group_gain", f"fishtune.harness.train {ms['padding_ours']:.2f} s/step",
         f"dynamic padding {ms['padding_dynamic']:.2f} s/step", tp["none"], tp["dynamic"]),
    ]
    lines = ["| figure | value | target | met | ours | compared with | peak MB ours | peak MB other |",
             "|---|---:|---|---|---|---|---:|---:|"]
    for name, ours, other, m_ours, m_other in rows:
        target, ok = fmt_check(name, fig[name]) if name in TARGETS else ("", "")
        shown = f"{fig[name]:.2e}" if name == "fisher_rel_err" else f"{fig[name]:.3f}"
        lines.append(f"| {name} | {shown} | {target} | {ok} | {ours} | {other} | {m_ours} | {m_other} |")
    lines += bf16_markdown(r.get("bf16", {}))
    m, st = r["machine"], r["settings"]
    lines += [
        "",
        f"{st['model']} + {st['peft']} (rank {st['rank']}) on {st['layers']} layers; {m['device']} "
        f"({cpu_label(m['cpu'])}), "
        f"{m['threads']} threads, {'bf16 autocast' if st['bf16'] else 'fp32'}; torch {m['versions'].get('torch')}, "
        f"transformers {m['versions'].get('transformers')}. Load average {m['load_before']} at the start, "
        f"{m['load_after']} at the end; the whole run took {r['total_seconds']:.0f} s.",
        "",
        f"- Fisher: {f['samples']} RTE samples in length-sorted chunks of {f['chunk_size']}; ratios of total seconds, "
        f"the loops taking turns chunk by chunk. CPU-time ratios: speedup "
        f"{f['cpu_time_ratios']['fisher_speedup']:.3f}, floor {f['cpu_time_ratios']['fisher_floor_ratio']:.3f}.",
        f"- Training: SST-2, batch {t['batch_size']}, the same batches on every side; median over "
        f"{t['mask_overhead']['steps']} paired steps (same batch, run back to back; padding rows: "
        f"{t['padding_gain']['steps']}). Ratio of sums: mask {t['mask_overhead']['of_sums']:.3f}, trainer "
        f"{t['trainer_ratio']['of_sums']:.3f}, padding {t['padding_gain']['of_sums']:.3f}, length groups "
        f"{t['length_group_gain']['of_sums']:.3f}. fishtune.harness.train runs each batch as length groups on CPU "
        f"(fishtune.batching); padding rows: the textbook step on whole batches; padded to max length vs "
        f"fishtune.harness.train: {t['padding_gain_ours']['median']:.3f}.",
        f"- Fish mask: k = {r['mask']['k']} of {r['mask']['candidates']} LoRA entries; {r['mask']['tensors_frozen']} of "
        f"{r['mask']['tensors']} tensors frozen, {r['mask']['tensors_partial']} partly masked. The masked Adam step with "
        f"masks minus without: {r['optimizer_step']['masked_minus_none_ms']:.3f} ms.",
        "- Peak MB: working memory on top of the model, each loop alone on its largest input "
        f"({'CUDA max_memory_allocated' if st['device'] == 'cuda' else 'CPU: sampled RSS after malloc_trim'}).",
    ]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    args = parse_args(argv)
    hf_logging.set_verbosity_error()
    t_start = time.perf_counter()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    bf16, _ = choose_precision(args.precision, device)
    cpu = cpu_capability()
    machine = {"device": torch.cuda.get_device_name() if device == "cuda" else cpu["model"] or platform.processor() or "cpu",
               "cpu": cpu, "cpus": os.cpu_count(), "threads": torch.get_num_threads(), "load_before": load_avg(),
               "versions": package_versions(), "python": platform.python_version()}
    log(f"{device}, {machine['threads']} threads, load average {machine['load_before']}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.only == "bf16":  # the bf16 figures alone, beside the full benchmark's files
        bf16_figures = bf16_section(args)
        lines = ["| figure | value | target | met | ours | compared with | peak MB ours | peak MB other |",
                 "|---|---:|---|---|---|---|---:|---:|", *bf16_markdown(bf16_figures), "",
                 f"{machine['device']} ({cpu_label(cpu)}), {machine['threads']} threads, load average {machine['load_before']} -> "
                 f"{load_avg()}; {time.perf_counter() - t_start:.0f} s."]
        (out / "bench_bf16.json").write_text(json.dumps({"bf16": bf16_figures, "machine": machine}, indent=2) + "\n")
        (out / "bench_bf16.md").write_text("\n".join(lines) + "\n")
        print("\n".join(lines))
        return 0

    model_cfg = OmegaConf.to_container(OmegaConf.load(CONF_DIR / "model" / f"{args.model}.yaml"))
    peft_cfg = OmegaConf.to_container(OmegaConf.load(CONF_DIR / "peft" / f"{args.peft}.yaml"))
    family, layers = model_cfg["family"], int(peft_cfg["fish_layers"])
    tok = load_tokenizer(model_cfg)
    t0 = time.perf_counter()
    set_seed(args.seed)
    model = insert_method(load_model(model_cfg, 2, tok), peft_cfg, layers, family).to(device)
    log(f"model {args.model} + {args.peft} on {layers} layers built in {time.perf_counter() - t0:.1f} s")
    head, _ = split_trainable(model, family)

    # Fisher as fishtune.run computes it: the method's parameters only, the head frozen meanwhile.
    for q in head.values():
        q.requires_grad_(False)
    fisher = fisher_section(args, model, tok, device)
    for q in head.values():
        q.requires_grad_(True)

    masks, mask_info = fish_mask(args, model, tok, peft_cfg, family)
    log(f"fish mask for SST-2: k={mask_info['k']} of {mask_info['candidates']}, "
        f"{mask_info['tensors_frozen']} tensors frozen, Fisher {mask_info['fisher_seconds']:.1f} s")
    trained = train_section(args, model, tok, masks, device, bf16)
    opt_step = optimizer_step_overhead(model, masks)
    bf16_figures = bf16_section(args) if device == "cpu" else {}

    figures = {
        "fisher_speedup": fisher["fisher_speedup"], "fisher_floor_ratio": fisher["fisher_floor_ratio"],
        "fisher_rel_err": fisher["fisher_rel_err"], "mask_overhead": trained["mask_overhead"]["median"],
        "trainer_ratio": trained["trainer_ratio"]["median"], "padding_gain": trained["padding_gain"]["median"],
        "length_group_gain": trained["length_group_gain"]["median"],
        **{name: r["median"] for name, r in bf16_figures.items()},
    }
    result = {
        "figures": figures,
        "checks": {k: fmt_check(k, figures[k])[1] == "yes" for k in TARGETS if k in figures},
        "settings": {"model": args.model, "peft": args.peft, "rank": peft_cfg.get("rank"), "layers": layers,
                     "device": device, "bf16": bf16, "seed": args.seed, "glue_dir": str(args.glue_dir)},
        "machine": machine, "fisher": fisher, "mask": mask_info, "train": trained, "optimizer_step": opt_step,
        "bf16": bf16_figures,
    }
    machine["load_after"] = load_avg()
    result["total_seconds"] = time.perf_counter() - t_start
    (out / "bench.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / "bench.md").write_text(markdown(result))
    print(markdown(result))
    log(f"wrote {out / 'bench.json'} and {out / 'bench.md'} in {result['total_seconds']:.0f} s")
    failed = [k for k, ok in result["checks"].items() if not ok]
    if failed:
        log(f"targets missed: {', '.join(failed)}")
    return 1 if not result["checks"]["fisher_rel_err"] else 0


if __name__ == "__main__":
    sys.exit(main())
