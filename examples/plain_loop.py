"""FISH-Tuning in a plain PyTorch loop: the model, data and masks of trainer_fish.py, trained with
MaskedOptimizer(AdamW(...), model, masks).

    python examples/plain_loop.py --train-samples 2000 --epochs 3
"""
from __future__ import annotations

import torch
from torch.utils.data import DataLoader

import fishtune
from trainer_fish import parse_args, setup  # noqa: E402 - the same model, data and masks


@torch.no_grad()
def dev_accuracy(model, dev, collate) -> float:
    model.eval()
    right = 0
    for batch in DataLoader(dev, batch_size=128, collate_fn=collate):
        labels = batch.pop("labels")
        right += int((model(**batch).logits.argmax(-1) == labels).sum())
    return 100 * right / len(dev)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    model, masks, trainable, train, dev, collate = setup(args)
    # Any optimizer: masked-out entries never change, decoupled weight decay included.
    opt = fishtune.MaskedOptimizer(torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay),
                                   model, masks)
    loader = DataLoader(train, batch_size=args.batch_size, shuffle=True, collate_fn=collate,
                        generator=torch.Generator().manual_seed(args.seed))
    per_epoch = []
    for epoch in range(1, args.epochs + 1):
        model.train()
        for batch in loader:
            model(**batch).loss.backward()  # the model's own loss from `labels`
            opt.step()
            opt.zero_grad()
        per_epoch.append(dev_accuracy(model, dev, collate))
        print(f"epoch {epoch}: dev accuracy {per_epoch[-1]:.2f}")
    return {"trainable": trainable, "accuracy": per_epoch[-1], "per_epoch": per_epoch}


if __name__ == "__main__":
    main()
