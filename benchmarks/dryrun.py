"""Dry run of the paper's models at their true size: every PEFT method each family takes, through the
harness's own code path, with random weights and small sizes, on CPU.

    python benchmarks/dryrun.py [--models bert_base,modernbert_base,llama32_1b] [--out results/dryrun.csv]

bert-base, ModernBERT-base and LLaMA-3.2-1B are built from the architecture configs kept in the repo
(conf/model/arch/*.json, written into a temporary model folder as the hub's config.json) with random
fp32 weights: the hub is out of reach, and shapes, memory and time do not depend on the weights. Each
model x method (SUPPORT_MATRIX) runs in a fresh subprocess, so that its peak RSS is its own, through:

  plan()          (fishtune/harness/run.py) the run's config composed from conf/ like the CLI (profile paper,
                  mask fish, budget 1), validated, the method's fish layers and the budget: k = the trainable
                  count of the budget-1 original run (schedules.py, count_on_meta)
  insert_method   on those layers of the randomly initialised model (build_model, with the random model in
                  place of load_model's from_pretrained)
  choose_mask     fish_masks / empirical_fisher on --fisher-samples samples
  apply_masks, train()   --steps MaskedOptimizer steps at --batch, then evaluate() on --eval examples

Inputs are random token ids within the model's own vocab_size (the pad id left out), every sequence the
task's max length (RTE: 384, the longest of the paper's tasks; --length cuts it), random labels: honest for shapes, memory
and time, meaningless for scores (none is recorded). The tokenizer only collates: the embedded MiniLM's
(fishtune.harness.models.embedded_path()) for every model, since no sequence needs padding.

GPU estimate (gpu_est_mb, fp32 as measured; the harness autocasts to bf16 on a GPU, which shrinks the
activations): weights and buffers + gradients and Adam's two moments of every trainable tensor (3 x its
fp32 bytes: a mask keeps masked entries at zero, it does not shrink Adam's state) + the masks + the
activations saved for backward at batch `gpu_batch` and the task's max length. Those are measured on one
sample at the run's length (act_mb_per_sample: every tensor autograd saves in one forward pass, counted once
per storage, parameters left out) and scaled linearly in the batch, which is exact (no sample's
activations depend on another's). At the max length (the default) no length scaling is needed; a run at a
shorter --length scales the linear part by max/length and the L x L part by its square. attn_quadratic_mb_per_sample is the part of
it shaped (..., L, L) (L + P keys under a prefix of P): attention probabilities (and their dropout masks) that eager attention saves, and
CPU sdpa too where it falls back to its math kernel (BERT's attention dropout). The estimate assumes the
GPU's sdpa kernels (flash, memory-efficient), which save no L x L tensor: it leaves that part out unless
the model runs eager attention (LLaMA's prefix methods, families.py), where it is kept.
Not counted: the transient gradients of the activations during backward (about one layer's worth),
the CUDA context (~0.5 GB) and the allocator's fragmentation.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

import pandas as pd

from fishtune.harness import CONF_DIR
from fishtune.harness.checks import ConfigError

PAPER_MODELS = ("bert_base", "modernbert_base", "llama32_1b")
ROOT = CONF_DIR.parent
# plan() insists on a GLUE folder holding the task's files; the dry run reads none (its inputs are random).
GLUE_STANDIN = ROOT / "tests" / "fixtures" / "glue"
COLUMNS = ["model", "method", "status", "task", "max_length", "length", "layers", "k", "trainable", "total", "ratio_pct",
           "budget_ratio_pct", "paper_ratio_pct", "build_seconds", "fisher_samples", "fisher_seconds",
           "zero_fisher_filled", "batch", "steps", "seconds_per_step", "eval_examples", "eval_seconds",
           "peak_rss_mb", "weights_mb", "train_state_mb", "act_mb_per_sample", "attn_quadratic_mb_per_sample",
           "attn_implementation", "gpu_batch", "gpu_est_mb", "threads", "wall_seconds"]
MB = 2**20


def _model_yaml(name: str) -> dict:
    from omegaconf import OmegaConf

    path = CONF_DIR / "model" / f"{name}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in (CONF_DIR / "model").glob("*.yaml"))
        raise ConfigError(f"unknown model {name!r}; choose one of: {', '.join(known)}")
    return OmegaConf.to_container(OmegaConf.load(path), resolve=True)


def model_folder(cfg: dict, folder: Path) -> dict:
    """The model config a dry run uses: a tiny (random) model as it is; a hub model as a local folder
    holding its architecture config (conf/model/arch/) as config.json, what the hub would give minus the
    weights. LLaMA ships without a pad token: the harness pads with EOS (load_tokenizer), so the
    folder's config says so, as the real tokenizer would make it."""
    if cfg["source"] == "tiny":
        return cfg
    if not cfg.get("arch"):
        raise ConfigError(f"model {cfg['name']!r} has no `arch` (a config.json under {CONF_DIR / 'model' / 'arch'}) "
                          f"and is not tiny: the dry run cannot build it")
    values = json.loads((CONF_DIR / "model" / "arch" / cfg["arch"]).read_text())
    if values.get("pad_token_id") is None:
        eos = values.get("eos_token_id")
        values["pad_token_id"] = eos[0] if isinstance(eos, list) else eos
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(values, indent=1))
    from fishtune.harness.models import embedded_path

    return {**cfg, "source": "hub", "path": str(folder), "tokenizer": embedded_path()}


def random_model(conf):
    """Random fp32 weights in the class load_model builds (models._from_config: the head it reads). The hub's
    config.json may name bf16 (LLaMA's does); a real run loads fp32 (load_model's dtype=float32)."""
    import torch

    from fishtune.harness.models import _from_config

    conf.dtype = torch.float32
    return _from_config(conf)


def random_examples(n: int, length: int, conf, num_labels: int, seed: int) -> list[dict]:
    """n encoded examples as glue.encode makes them: `length` random ids in 0..vocab_size-1 but the pad
    id, all attended; a sentence pair's token types (0 then 1) where the model has token types; random
    labels (a float score for a regression task)."""
    import torch

    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, conf.vocab_size, (n, length), generator=g)
    if conf.pad_token_id is not None:  # a pad id would end a decoder's sequence early (its pooling)
        ids[ids == conf.pad_token_id] = (conf.pad_token_id + 1) % conf.vocab_size
    labels = torch.rand(n, generator=g) * 5 if num_labels == 1 else torch.randint(0, num_labels, (n,), generator=g)
    out = []
    for row, y in zip(ids.tolist(), labels.tolist()):
        item = {"input_ids": row, "attention_mask": [1] * length}
        if getattr(conf, "type_vocab_size", 0):
            item["token_type_ids"] = [0] * (length // 2) + [1] * (length - length // 2)
        item["labels"] = y
        out.append(item)
    return out


def saved_activation_bytes(model, batch: dict, device: str, prefix: int = 0) -> tuple[int, int]:
    """(bytes, bytes of (..., L, L..L+prefix) tensors) that autograd saves for backward in one forward pass
    of `batch` (L its length; `prefix`: virtual tokens a prefix method puts before the keys): each storage
    once, the model's parameters and buffers left out. The graph is dropped."""
    import torch

    from fishtune.batching import model_inputs

    own = {t.untyped_storage().data_ptr() for t in [*model.parameters(), *model.buffers()]}
    length = batch["input_ids"].shape[1]
    seen: dict[int, tuple[int, bool]] = {}

    def pack(t: torch.Tensor):
        storage = t.untyped_storage()
        ptr = storage.data_ptr()
        if ptr not in own and ptr not in seen and storage.nbytes():
            seen[ptr] = (storage.nbytes(), t.dim() >= 2 and t.shape[-2] == length
                         and length <= t.shape[-1] <= length + prefix)
        return t

    inputs, _ = model_inputs(batch, device)
    model.train()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        logits = model(**inputs).logits
    del logits
    return sum(b for b, _ in seen.values()), sum(b for b, q in seen.values() if q)


def gpu_estimate(weights: int, state: int, act: int, act_quadratic: int, attention: str | None, batch: int,
                 scale: float = 1.0) -> int:
    """Bytes a GPU run at `batch` needs at `scale` times the measured length: weights + training state +
    batch x one sample's activations, their linear part x scale and their (..., L, L) part x scale^2. The
    L x L part counts only under eager attention: the GPU's sdpa kernels (flash, memory-efficient) save
    none, whatever CPU sdpa saved."""
    quadratic = act_quadratic if attention == "eager" else 0
    return round(weights + state + batch * ((act - act_quadratic) * scale + quadratic * scale**2))


def one(model_name: str, method: str, args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """Dry-run one model x method in this process; returns its CSV row."""
    t_start = time.perf_counter()
    import torch
    from transformers import set_seed

    from fishtune.harness import data as glue
    from fishtune.harness.methods import count_parameters, insert_method, split_trainable
    from fishtune.harness.models import load_tokenizer, model_config
    from fishtune.harness.run import Data, choose_mask, peak_memory, plan, reset_peak_memory
    from fishtune.harness.sweeps import compose_run
    from fishtune.harness.train import TrainSettings, train
    from fishtune.masks import apply_masks
    from fishtune.reports.ratios import PAPER_RATIOS

    device = "cpu"
    torch.set_num_threads(args.threads)
    source = reset_peak_memory(device)
    model_cfg = model_folder(_model_yaml(model_name), work / "model")
    config = compose_run([f"model={model_name}", f"peft={method}", "mask=fish", "budget=1", f"task={args.task}",
                          "profile=paper", f"fisher.samples={args.fisher_samples}", f"train.batch_size={args.batch}",
                          "train.max_epochs=1", "train.precision=fp32", "train.device=cpu",
                          f"data.glue_dir={GLUE_STANDIN}", f"paths.runs_dir={work / 'runs'}", "claim.enabled=false"])
    config["model"] = model_cfg
    p = plan(config)
    p.path.parent.mkdir(parents=True, exist_ok=True)   # as execute does: the mask file goes beside the result's
    seed, length = int(config["seed"]), args.length or p.task.max_length

    tokenizer = load_tokenizer(model_cfg)
    conf = model_config(model_cfg, p.task.num_labels, tokenizer)
    n_train = max(args.fisher_samples, args.steps * args.batch)
    train_set = random_examples(n_train, length, conf, p.task.num_labels, seed)
    dev_set = random_examples(args.eval, length, conf, p.task.num_labels, seed + 1)
    for i, example in enumerate(dev_set):
        example["idx"] = i
    data = Data(tokenizer, train_set, dev_set,
                glue.make_loader(train_set[:args.steps * args.batch], tokenizer, args.batch, shuffle=True, seed=seed),
                glue.make_loader(dev_set, tokenizer, int(config["train"]["eval_batch_size"]), sort_by_length=True))

    # build_model (run.py), with the random model in place of load_model's from_pretrained.
    t0 = time.perf_counter()
    set_seed(seed)
    model = insert_method(random_model(conf), config["peft"], p.layers, p.family)
    model.to(device)
    head, candidates = split_trainable(model, p.family)
    build_seconds = time.perf_counter() - t0

    masks, fisher_seconds, zero_filled = choose_mask(p, model, head, candidates, data)
    trainable = apply_masks(model, masks)
    if trainable != p.k:
        raise AssertionError(f"{trainable} entries train, the budget is k={p.k}")
    _, total = count_parameters(model)

    one_sample = next(iter(glue.make_loader(train_set[:1], tokenizer, 1)))
    act, act_quadratic = saved_activation_bytes(model, one_sample, device, int(config["peft"].get("prefix_length") or 0))
    model.zero_grad(set_to_none=True)

    settings = TrainSettings(lr=float(config["train"]["lr"] or p.task.lr), max_epochs=1, patience=1, device=device,
                             bf16=False, progress=False)
    t0 = time.perf_counter()
    outcome = train(model, data.train_loader, data.dev_loader, p.task, settings, masks)
    train_call = time.perf_counter() - t0

    attention = getattr(model.config, "_attn_implementation", None)
    weights = sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()])
    state = 3 * sum(q.numel() * q.element_size() for q in model.parameters() if q.requires_grad) \
        + sum(m.numel() * m.element_size() for m in masks.values())
    paper = pd.read_csv(PAPER_RATIOS)
    printed = paper[(paper.model == model_name) & (paper.method == method) & (paper.budget == 1)].paper_ratio_pct
    return {
        "model": model_name, "method": method, "status": "ok", "task": p.task.name, "max_length": p.task.max_length, "length": length,
        "layers": p.layers, "k": p.k, "trainable": trainable, "total": total,
        "ratio_pct": round(100 * trainable / total, 6), "budget_ratio_pct": round(100 * trainable / p.budget_total, 6),
        "paper_ratio_pct": float(printed.iloc[0]) if len(printed) else None,
        "build_seconds": round(build_seconds, 2), "fisher_samples": args.fisher_samples,
        "fisher_seconds": round(fisher_seconds, 2), "zero_fisher_filled": zero_filled, "batch": args.batch,
        "steps": args.steps, "seconds_per_step": round(outcome.train_seconds / args.steps, 3),
        "eval_examples": args.eval, "eval_seconds": round(train_call - outcome.train_seconds, 2),
        "peak_rss_mb": round(peak_memory(device, source)["peak_rss_mb"]), "weights_mb": round(weights / MB),
        "train_state_mb": round(state / MB, 1), "act_mb_per_sample": round(act / MB, 1),
        "attn_quadratic_mb_per_sample": round(act_quadratic / MB, 1),
        "attn_implementation": attention,
        "gpu_batch": args.gpu_batch, "gpu_est_mb": round(gpu_estimate(weights, state, act, act_quadratic, attention,
                                                                      args.gpu_batch, p.task.max_length / length) / MB),
        "threads": torch.get_num_threads(), "wall_seconds": round(time.perf_counter() - t_start, 1),
    }


def combinations(models: Sequence[str], methods: Sequence[str] | None) -> list[tuple[str, str]]:
    """(model, method) for every method each model's family takes (SUPPORT_MATRIX), narrowed to `methods`."""
    from fishtune.harness.methods import METHODS, SUPPORT_MATRIX

    if methods:
        for m in methods:
            if m not in METHODS:
                raise ConfigError(f"unknown PEFT method {m!r}; choose one of: {', '.join(METHODS)}")
    return [(name, method) for name in models for method in SUPPORT_MATRIX[_model_yaml(name)["family"]]
            if not methods or method in methods]


def _child(model: str, method: str, args: argparse.Namespace, argv: Sequence[str]) -> dict[str, Any]:
    """One combination in a fresh interpreter (its own peak RSS); a failure becomes its row's status."""
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="dryrun-") as tmp:
        out = Path(tmp) / "row.json"
        cmd = [sys.executable, str(Path(__file__).resolve()), *argv, "--only", f"{model}:{method}",
               "--row-file", str(out)]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout)
        except subprocess.TimeoutExpired:
            return {"model": model, "method": method, "status": f"failed: timed out after {args.timeout} s"}
        if out.exists():
            return json.loads(out.read_text())
        lines = [line for line in (proc.stderr or proc.stdout).strip().splitlines() if line.strip()]
        reason = lines[-1] if lines else f"exit {proc.returncode}"
        sys.stderr.write(proc.stderr[-4000:])
        return {"model": model, "method": method, "status": f"failed: {reason}",
                "wall_seconds": round(time.perf_counter() - t0, 1)}


def merge(out: Path, rows: list[dict]) -> pd.DataFrame:
    """The CSV's rows with these rows in place of their (model, method, task), in model then method order."""
    from fishtune.harness.methods import METHODS

    new = pd.DataFrame(rows).reindex(columns=COLUMNS)
    if out.exists():
        old = pd.read_csv(out).reindex(columns=COLUMNS)
        keys = set(zip(new.model, new.method, new.task))
        new = pd.concat([old[[k not in keys for k in zip(old.model, old.method, old.task)]], new])
    models = list(dict.fromkeys([*PAPER_MODELS, *new.model]))
    order = new.model.map(models.index) * 100 + new.method.map(list(METHODS).index)
    return new.iloc[order.argsort(kind="stable")].reset_index(drop=True)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default=",".join(PAPER_MODELS), help="comma list of conf/model/ names")
    ap.add_argument("--methods", default="", help="comma list narrowing each family's methods (default: all)")
    ap.add_argument("--task", default="rte", help="the task whose max length and labels are used (rte: 384)")
    ap.add_argument("--length", type=int, default=None,
                    help="tokens per sequence (default: the task's max length); the GPU estimate is at the max length")
    ap.add_argument("--fisher-samples", type=int, default=8)
    ap.add_argument("--steps", type=int, default=2, help="masked optimiser steps")
    ap.add_argument("--batch", type=int, default=4, help="batch size of the steps")
    ap.add_argument("--eval", type=int, default=16, help="dev examples evaluated")
    ap.add_argument("--gpu-batch", type=int, default=32, help="batch size of the GPU memory estimate (the paper's)")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads (default 1: on a busy shared machine more threads spin and run slower)")
    ap.add_argument("--timeout", type=float, default=None, help="seconds one combination may take")
    ap.add_argument("--in-process", action="store_true",
                    help="run every combination in this process (tests): peak RSS then is not each one's own")
    ap.add_argument("--out", default="results/dryrun.csv")
    ap.add_argument("--only", help=argparse.SUPPRESS)       # MODEL:METHOD, in a child process
    ap.add_argument("--row-file", help=argparse.SUPPRESS)   # where the child writes its row
    args = ap.parse_args(argv)
    try:
        from fishtune.harness.tasks import get_task

        get_task(args.task)
        for key in ("fisher_samples", "steps", "batch", "eval", "gpu_batch", "threads"):
            if getattr(args, key) < 1:
                raise ConfigError(f"--{key.replace('_', '-')}={getattr(args, key)}: must be an integer >= 1")
        todo = [tuple(args.only.split(":"))] if args.only else \
            combinations([m for m in args.models.split(",") if m], [m for m in args.methods.split(",") if m])
    except (ConfigError, ValueError) as e:
        print(f"dryrun: error: {e}", file=sys.stderr)
        return 2
    if args.length is not None and args.length < 2:
        print(f"dryrun: error: --length={args.length}: must be an integer >= 2", file=sys.stderr)
        return 2
    if args.only:  # the child: one combination, its row to --row-file
        with tempfile.TemporaryDirectory(prefix="dryrun-") as tmp:
            row = one(*todo[0], args, Path(tmp))
        Path(args.row_file).write_text(json.dumps(row))
        return 0

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    failed = 0
    for model, method in todo:
        print(f"dryrun: {model} {method} ...", flush=True)
        if args.in_process:
            try:
                with tempfile.TemporaryDirectory(prefix="dryrun-") as tmp:
                    row = one(model, method, args, Path(tmp))
            except Exception as e:  # noqa: BLE001 - recorded as the row's status, the others go on
                row = {"model": model, "method": method, "status": f"failed: {type(e).__name__}: {e}".splitlines()[0]}
        else:
            row = _child(model, method, args, argv)
        row.setdefault("task", args.task)
        failed += row["status"] != "ok"
        merge(out, [row]).to_csv(out, index=False)   # after each: a long run keeps what it measured
        print("  " + ", ".join(f"{k}={row.get(k)}" for k in ("status", "trainable", "budget_ratio_pct",
              "paper_ratio_pct", "fisher_seconds", "seconds_per_step", "peak_rss_mb", "gpu_est_mb")), flush=True)
    print(f"dryrun: wrote {out}; {len(todo) - failed} of {len(todo)} combinations ok")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
