"""Frozen-feature probe: what a head alone can read off an embedded model (MiniLM, SmolLM2), per head choice.

For SST-2 and STS-B, the frozen model's features of each head choice (`pooler`: tanh(pooler(h_CLS)),
transformers' default; `cls`: the [CLS] state; `mean`: the masked mean of the last hidden states) are
fitted in closed form by scikit-learn (STS-B: ridge, its penalty chosen by cross-validation on the
training features; SST-2: logistic regression, likewise) on the study's 1,000-example training
subsamples (seeds 1 and 2) and on the whole training set, then scored on the whole dev set with the
task's metric (x100). It is the ceiling of a model whose body is frozen, and the evidence for the
embedded model's `head: mean` (docs/STUDY.md, "The stand-in's head").

    python scripts/probe_heads.py --out results/probe      # or: make probe
"""
from __future__ import annotations

import argparse
import itertools
import os
import time
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm


# The embedded models and the head choices read off each: MiniLM's three (the study's `model.head`), and for
# SmolLM2 the last prompt token's final hidden state (what LlamaForSequenceClassification's `score` reads, right
# padding) beside the prompt's mean.
MODELS = {
    "minilm": ({"name": "minilm", "family": "bert", "source": "embedded", "path": None, "head": "pooler"},
               ("pooler", "cls", "mean")),
    "smollm2": ({"name": "smollm2", "family": "llama", "source": "embedded", "path": None, "head": "pooler"},
                ("last", "mean")),
}


def features(model, tokenizer, examples: list[dict], task, batch_size: int = 256) -> dict[str, np.ndarray]:
    """{head: (n, hidden) array} of the frozen model, in the order of `examples`."""
    import torch

    from fishtune.harness import data as glue
    from fishtune.harness.models import pool

    decoder = not hasattr(model, "bert")
    encoded = glue.encode(examples, tokenizer, task, use_template=decoder)
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]["input_ids"]))  # little padding
    loader = glue.make_loader([encoded[i] for i in order], tokenizer, batch_size)
    out: dict[str, list] = {}
    with torch.no_grad():
        for batch in tqdm(loader, desc="features", leave=False):
            batch.pop("labels")
            mask = batch["attention_mask"]
            if decoder:
                h = model.model(**batch).last_hidden_state
                heads = {"last": pool(h, mask, "last"), "mean": pool(h, mask, "mean")}
            else:
                h = model.bert(**batch).last_hidden_state
                heads = {"pooler": model.bert.pooler(h), "cls": pool(h, mask, "cls"), "mean": pool(h, mask, "mean")}
            for k, v in heads.items():
                out.setdefault(k, []).append(v.float())
    back = np.argsort(order)
    return {k: torch.cat(v).numpy()[back] for k, v in out.items()}


def fit_score(task, x_train, y_train, x_dev, y_dev, scale: bool = False) -> tuple[float, float, str]:
    """(dev score x100, weight norm, the chosen penalty) of the closed-form head on frozen features; `scale`
    first z-scores each feature on the training features (still a linear head: the scaling folds into it), for
    a decoder's few outsized hidden dimensions, which otherwise dominate one penalty for all weights."""
    from sklearn.linear_model import LogisticRegressionCV, RidgeCV
    from sklearn.preprocessing import StandardScaler

    from fishtune.harness.metrics import glue_metrics

    if scale:
        scaler = StandardScaler().fit(x_train)
        x_train, x_dev = scaler.transform(x_train), scaler.transform(x_dev)
    if task.num_labels == 1:
        fit = RidgeCV(alphas=np.logspace(-4, 3, 15)).fit(x_train, y_train)
        penalty = f"alpha {fit.alpha_:.3g}"
    else:
        fit = LogisticRegressionCV(Cs=np.logspace(-3, 3, 7), cv=5, max_iter=3000).fit(x_train, y_train)
        penalty = f"C {fit.C_[0]:.3g}"
    score = glue_metrics(task, fit.predict(x_dev), y_dev)["score"]
    return score, float(np.linalg.norm(fit.coef_)), penalty


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="results/probe", help="folder for heads.csv and heads.md")
    parser.add_argument("--glue-dir", default=os.environ.get("GLUE_DIR", "../shared/glue_data"))
    parser.add_argument("--tasks", default="sst2,stsb")
    parser.add_argument("--subsample", type=int, default=1000, help="training examples of the small fits")
    parser.add_argument("--seeds", default="1,2", help="the subsamples' seeds (the study's)")
    parser.add_argument("--model", default="minilm", choices=sorted(MODELS))
    parser.add_argument("--large", type=int, default=None,
                        help="cap the large fit at this many training examples (seed 0); default: all of them")
    parser.add_argument("--dev-samples", type=int, default=None, help="dev examples scored (seed 0); default: all")
    args = parser.parse_args(argv)

    import pandas as pd
    import torch

    from fishtune.harness import data as glue
    from fishtune.harness.models import load_model, load_tokenizer
    from fishtune.harness.tasks import get_task

    torch.manual_seed(0)
    cfg, heads = MODELS[args.model]
    tokenizer = load_tokenizer(cfg)
    model = load_model(cfg, 2, tokenizer).eval()  # the pooler as shipped; the classifier is not used
    rows = []
    for name in args.tasks.split(","):
        task = get_task(name)
        t0 = time.perf_counter()
        full = glue.load_split(task, "train", args.glue_dir)
        # the study's subsamples are drawn from the whole training set, then joined with the large fit's
        small = {s: glue.subsample(full, args.subsample, int(s)) for s in args.seeds.split(",")}
        large = glue.subsample(full, args.large, 0)
        train = list({id(e): e for part in [large, *small.values()] for e in part}.values())
        dev = glue.subsample(glue.load_split(task, "dev", args.glue_dir), args.dev_samples, 0)
        f_train, f_dev = features(model, tokenizer, train, task), features(model, tokenizer, dev, task)
        y_train = np.array([e["label"] for e in train])
        y_dev = np.array([e["label"] for e in dev])
        print(f"{name}: features of {len(train)} + {len(dev)} examples in {time.perf_counter() - t0:.0f} s")
        index = {id(e): i for i, e in enumerate(train)}
        large_label = f"all {len(full)}" if len(large) == len(full) else f"{len(large)} of {len(full)} (seed 0)"
        subsets = [(f"{args.subsample} (seed {s})", [index[id(e)] for e in part]) for s, part in small.items()]
        subsets.append((large_label, [index[id(e)] for e in large]))
        for head in heads:
            spread = f_train[head].std(axis=0).mean()
            for (label, keep), scale in itertools.product(subsets, (False, True) if args.model != "minilm" else (False,)):
                score, norm, penalty = fit_score(task, f_train[head][keep], y_train[keep], f_dev[head], y_dev, scale)
                rows.append({"task": name, "head": head, **({"features": "z-scored" if scale else "raw"}
                                                             if args.model != "minilm" else {}), "dev": len(dev), "train": label, "dev_score": round(score, 1),
                             "weight_norm": round(norm, 1), "penalty": penalty,
                             "feature_std": round(float(spread), 3)})
                print(rows[-1])
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    table = pd.DataFrame(rows)
    table.to_csv(out / "heads.csv", index=False)
    lines = ["| " + " | ".join(table.columns) + " |", "|" + "---|" * len(table.columns)]
    lines += ["| " + " | ".join(map(str, r)) + " |" for r in table.itertuples(index=False)]
    (out / "heads.md").write_text("\n".join(lines) + "\n")
    print(f"wrote {out / 'heads.csv'} and heads.md")


if __name__ == "__main__":
    main()
