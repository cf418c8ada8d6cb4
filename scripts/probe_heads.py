"""Frozen-feature probe: what a head alone can read off the embedded MiniLM, per head choice.

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
import os
import time
from pathlib import Path

import numpy as np


def features(model, tokenizer, examples: list[dict], task, batch_size: int = 256) -> dict[str, np.ndarray]:
    """{head: (n, hidden) array} of the frozen model, in the order of `examples`."""
    import torch

    from fishtune.harness import data as glue
    from fishtune.harness.models import pool

    encoded = glue.encode(examples, tokenizer, task)
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]["input_ids"]))  # little padding
    loader = glue.make_loader([encoded[i] for i in order], tokenizer, batch_size)
    out: dict[str, list] = {"pooler": [], "cls": [], "mean": []}
    with torch.no_grad():
        for batch in loader:
            batch.pop("labels")
            h = model.bert(**batch).last_hidden_state
            out["pooler"].append(model.bert.pooler(h))
            out["cls"].append(pool(h, batch["attention_mask"], "cls"))
            out["mean"].append(pool(h, batch["attention_mask"], "mean"))
    back = np.argsort(order)
    return {k: torch.cat(v).numpy()[back] for k, v in out.items()}


def fit_score(task, x_train, y_train, x_dev, y_dev) -> tuple[float, float, str]:
    """(dev score x100, weight norm, the chosen penalty) of the closed-form head on frozen features."""
    from sklearn.linear_model import LogisticRegressionCV, RidgeCV

    from fishtune.harness.metrics import glue_metrics

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
    args = parser.parse_args(argv)

    import pandas as pd
    import torch

    from fishtune.harness import data as glue
    from fishtune.harness.models import load_model, load_tokenizer
    from fishtune.harness.tasks import get_task

    torch.manual_seed(0)
    cfg = {"name": "minilm", "family": "bert", "source": "embedded", "path": None, "head": "pooler"}
    tokenizer = load_tokenizer(cfg)
    model = load_model(cfg, 2, tokenizer).eval()  # the pooler as shipped; the classifier is not used
    rows = []
    for name in args.tasks.split(","):
        task = get_task(name)
        t0 = time.perf_counter()
        train = glue.load_split(task, "train", args.glue_dir)
        dev = glue.load_split(task, "dev", args.glue_dir)
        f_train, f_dev = features(model, tokenizer, train, task), features(model, tokenizer, dev, task)
        y_train = np.array([e["label"] for e in train])
        y_dev = np.array([e["label"] for e in dev])
        print(f"{name}: features of {len(train)} + {len(dev)} examples in {time.perf_counter() - t0:.0f} s")
        index = {id(e): i for i, e in enumerate(train)}
        subsets = [(f"{args.subsample} (seed {s})", [index[id(e)] for e in glue.subsample(train, args.subsample, int(s))])
                   for s in args.seeds.split(",")] + [(f"all {len(train)}", list(range(len(train))))]
        for head in ("pooler", "cls", "mean"):
            spread = f_train[head].std(axis=0).mean()
            for label, keep in subsets:
                score, norm, penalty = fit_score(task, f_train[head][keep], y_train[keep], f_dev[head], y_dev)
                rows.append({"task": name, "head": head, "train": label, "dev_score": round(score, 1),
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
