"""Fidelity probe (a research tool, not part of the product): train one model with the product's data,
normalisation, batch order and model registry in a plain SGD loop, and score several evaluation
hypotheses on the same weights after every epoch (and once before training, epoch 0).

Evaluation modes (BatchNorm models):
  running      eval mode, running statistics as trained (the model's own BN momentum)
  mom=<m>      eval mode with running statistics re-estimated alongside training at momentum m
               (``none`` = cumulative average), from the same batch statistics (forward hooks)
  batch        BN normalises with the evaluation batch's statistics (train-mode BN under no_grad,
               running statistics restored afterwards); dropout stays off
Training never depends on these choices, so one run scores them all.

The seed's notebook validates *before* each epoch's training, so its "epoch N" validation figure is
the model after N-1 epochs: row ``epoch`` here is after that many epochs (0 = untrained).

Usage:
  taskset -c 1 env OMP_NUM_THREADS=1 PYTHONPATH=. python tools/fidelity_probe.py --out DIR \
      --model resnet --kw batchnorm=true --kw bn_stem=conv_relu_bn --lr 0.003 --epochs 10 \
      --momenta 0.01,none --batch-eval
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import time
from pathlib import Path

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn

from cifar_lab.build import build_data
from cifar_lab.configs import compose
from cifar_lab.data.loaders import EpochBatchSampler
from cifar_lab.data.transforms import normalize
from cifar_lab.models import count_params, create_model
from cifar_lab.plan import SpeedPlan


def parse_value(v: str):
    low = v.lower()
    if low in ("true", "false"):
        return low == "true"
    if low in ("none", "null"):
        return None
    for cast in (int, float):
        try:
            return cast(v)
        except ValueError:
            pass
    return v


class ShadowStats:
    """Extra running statistics for every BatchNorm, updated from each training forward's batch stats."""

    def __init__(self, model: nn.Module, momenta: list[float | None]) -> None:
        self.bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        self.momenta = momenta
        self.state = {}  # (id(bn), key) -> [mean, var, count]
        for bn in self.bns:
            for m in momenta:
                self.state[(id(bn), str(m))] = [torch.zeros(bn.num_features), torch.ones(bn.num_features), 0]
            bn.register_forward_hook(self.hook)

    @torch.no_grad()
    def hook(self, bn, inputs, output) -> None:
        if not bn.training:
            return
        x = inputs[0].detach()
        dims = [0] + list(range(2, x.dim()))
        mean = x.mean(dims)
        n = x.numel() / x.shape[1]
        var = x.var(dims, unbiased=False) * n / max(n - 1, 1)  # running stats use the unbiased variance
        for m in self.momenta:
            s = self.state[(id(bn), str(m))]
            s[2] += 1
            f = 1.0 / s[2] if m is None else m
            s[0].mul_(1 - f).add_(f * mean)
            s[1].mul_(1 - f).add_(f * var)

    def swap_in(self, m) -> list:
        saved = []
        for bn in self.bns:
            saved.append((bn.running_mean.clone(), bn.running_var.clone()))
            s = self.state[(id(bn), str(m))]
            bn.running_mean.copy_(s[0])
            bn.running_var.copy_(s[1])
        return saved

    def restore(self, saved) -> None:
        for bn, (mu, var) in zip(self.bns, saved):
            bn.running_mean.copy_(mu)
            bn.running_var.copy_(var)


@torch.no_grad()
def evaluate(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    mean,
    std,
    bs: int,
    batch_stats: bool = False,
    fmt=torch.contiguous_format,
):
    model.eval()
    saved = None
    if batch_stats:
        bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        saved = [(m, m.running_mean.clone(), m.running_var.clone(), m.num_batches_tracked.clone()) for m in bns]
        for m in bns:
            m.train()
    tot_loss, batch_losses, correct = 0.0, [], 0
    for i in range(0, len(y), bs):
        xb = normalize(x[i : i + bs], mean, std).contiguous(memory_format=fmt)
        yb = y[i : i + bs]
        logits = model(xb)
        loss = F.cross_entropy(logits, yb)
        tot_loss += float(loss) * len(yb)
        batch_losses.append(float(loss))
        correct += int((logits.argmax(1) == yb).sum())
    if saved:
        for m, mu, var, nbt in saved:
            m.running_mean.copy_(mu)
            m.running_var.copy_(var)
            m.num_batches_tracked.copy_(nbt)
    model.train()
    n = len(y)
    return {"loss": tot_loss / n, "loss_bm": sum(batch_losses) / len(batch_losses), "acc": correct / n}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--out", required=True)
    p.add_argument("--model", required=True)
    p.add_argument("--kw", action="append", default=[], help="model option key=value")
    p.add_argument("--lr", type=float, default=0.01)
    p.add_argument("--l2", type=float, default=0.0)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=1024)
    p.add_argument("--momenta", default="", help="extra BN momenta to track, e.g. 0.01,none")
    p.add_argument("--batch-eval", action="store_true", help="also evaluate with batch statistics")
    p.add_argument("--root", required=True, help="the CIFAR-10 image folder (root/train/<class>, root/test/<class>)")
    p.add_argument("--cache-dir", default=None, help="data.cache_dir (default: the config's)")
    p.add_argument("--channels-last", action="store_true", help="as speed.channels_last=true")
    p.add_argument(
        "--full-eval-epochs", default="", help="evaluate the extra modes only after these epochs (default: all)"
    )
    p.add_argument("--max-batches", type=int, default=0, help="timing only: stop each epoch early")
    args = p.parse_args()

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    kwargs = dict(kv.split("=", 1) for kv in args.kw)
    kwargs = {k: parse_value(v) for k, v in kwargs.items()}
    momenta = [parse_value(m) for m in args.momenta.split(",") if m]

    L.seed_everything(args.seed, workers=True, verbose=False)  # as cifar_lab.train.build_parts
    data = [
        "data=image_folder",
        f"data.root={args.root}",
        f"data.batch_size={args.batch_size}",
        "data.num_workers=0",
        f"seed={args.seed}",
    ] + ([f"data.cache_dir={args.cache_dir}"] if args.cache_dir else [])
    dm = build_data(compose(*data), SpeedPlan(device="cpu"))  # the product's data: the same arrays and order
    dm.prepare_data()
    dm.setup("fit")
    xtr, ytr = dm.tensors["train"]
    xva, yva = dm.tensors["val"]
    model = create_model(args.model, **kwargs)
    params = count_params(model)
    fmt = torch.channels_last if args.channels_last else torch.contiguous_format
    if args.channels_last:
        model.to(memory_format=torch.channels_last)
    full = {int(e) for e in args.full_eval_epochs.split(",") if e}
    shadow = ShadowStats(model, momenta) if momenta else None
    opt = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.0)
    sampler = EpochBatchSampler(len(ytr), args.batch_size, True, args.seed)
    mean, std = dm.transform.mean, dm.transform.std
    has_bn = any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    meta = {
        "args": vars(args),
        "kwargs": kwargs,
        "params": params,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "n_train": len(ytr),
        "n_val": len(yva),
    }
    (out / "meta.json").write_text(json.dumps(meta, indent=1, default=str))
    print(json.dumps(meta, default=str), flush=True)

    modes = ["running"] + [f"mom={m}".lower() for m in momenta] + (["batch"] if args.batch_eval and has_bn else [])
    fields = ["epoch", "train_loss", "train_loss_bm", "train_acc", "seconds_train"]
    for m in modes:
        fields += [f"{m}:val_loss", f"{m}:val_loss_bm", f"{m}:val_acc"]
    fields.append("seconds_eval")
    f = open(out / "probe.csv", "w", newline="")
    w = csv.DictWriter(f, fieldnames=fields)
    w.writeheader()

    def eval_all(row):
        t0 = time.perf_counter()
        for m in modes:
            if m != "running" and full and row["epoch"] not in full:
                continue
            if m == "running":
                r = evaluate(model, xva, yva, mean, std, args.batch_size, fmt=fmt)
            elif m == "batch":
                r = evaluate(model, xva, yva, mean, std, args.batch_size, batch_stats=True, fmt=fmt)
            else:
                key = parse_value(m.split("=", 1)[1])
                saved = shadow.swap_in(key)
                r = evaluate(model, xva, yva, mean, std, args.batch_size, fmt=fmt)
                shadow.restore(saved)
            row[f"{m}:val_loss"], row[f"{m}:val_loss_bm"], row[f"{m}:val_acc"] = r["loss"], r["loss_bm"], r["acc"]
        row["seconds_eval"] = round(time.perf_counter() - t0, 2)
        w.writerow(row)
        f.flush()
        print({k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()}, flush=True)

    eval_all({"epoch": 0})
    for epoch in range(args.epochs):
        model.train()
        sampler.set_epoch(epoch)
        t0 = time.perf_counter()
        tot, bl, correct, n = 0.0, [], 0, 0
        for bi, idx in enumerate(sampler):
            if args.max_batches and bi >= args.max_batches:
                break
            xb, yb = normalize(xtr[idx], mean, std).contiguous(memory_format=fmt), ytr[idx]
            logits = model(xb)
            loss = F.cross_entropy(logits, yb)
            obj = loss
            if args.l2:
                obj = loss + args.l2 * torch.stack([q.pow(2).sum() for q in model.parameters()]).sum()
            opt.zero_grad(set_to_none=True)
            obj.backward()
            opt.step()
            tot += float(loss) * len(yb)
            bl.append(float(obj))  # the seed's printed train loss: batch mean of the optimised objective
            correct += int((logits.detach().argmax(1) == yb).sum())
            n += len(yb)
        if not math.isfinite(tot):
            print("diverged", flush=True)
        eval_all(
            {
                "epoch": epoch + 1,
                "train_loss": tot / n,
                "train_loss_bm": sum(bl) / len(bl),
                "train_acc": correct / n,
                "seconds_train": round(time.perf_counter() - t0, 2),
            }
        )
    f.close()


if __name__ == "__main__":
    main()
