"""``python -m cifar_lab.evaluate <run dir or .ckpt> [data overrides]``: loss, accuracy, per class, confusion.

Evaluates a trained model on the test split of the data it was trained on (or of other data, with
``data=...`` overrides), prints a table, and writes ``<run>/eval/<checkpoint>-<data>.json`` and
``confusion.png`` beside it.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from cifar_lab.console import filter_warnings
from cifar_lab.errors import UserError, tool_exit
from cifar_lab.files import writable_folder, write_bytes_atomic, write_json_atomic


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m cifar_lab.evaluate",
        description="Evaluate a trained model: loss, accuracy, per-class accuracy and a confusion matrix, on the "
        "test split of the data it was trained on, or of other data given as data overrides "
        "(e.g. data=image_folder data.root=/path).",
    )
    parser.add_argument("path", type=Path, help="a run directory (its best checkpoint is used) or a .ckpt file")
    parser.add_argument("overrides", nargs="*", help="data overrides in Hydra syntax, e.g. data.root=/other/copy")
    parser.add_argument("--device", default="auto", help="auto (a GPU if there is one), cpu or cuda")
    parser.add_argument("--out", type=Path, default=None, help="folder for the results (default: <run dir>/eval)")
    return parser.parse_args(argv)


@torch.no_grad()
def evaluate(module: Any, datamodule: Any, device: torch.device) -> dict[str, Any]:
    """Loss (per-image mean), accuracy, per-class accuracy and the confusion matrix (rows: true class)."""
    x_all, y_all = datamodule.tensors["test"]
    n_classes = len(module.classes)
    confusion = torch.zeros(n_classes, n_classes, dtype=torch.long)
    loss_sum = 0.0
    for start in range(0, len(y_all), datamodule.batch_size):
        x = datamodule.transform(x_all[start : start + datamodule.batch_size].to(device))
        y = y_all[start : start + datamodule.batch_size].to(device)
        logits = module(x)
        loss_sum += float(F.cross_entropy(logits, y, reduction="sum"))
        confusion += torch.bincount(y.cpu() * n_classes + logits.argmax(1).cpu(), minlength=n_classes**2).view(
            n_classes, n_classes
        )
    per_class = confusion.diag() / confusion.sum(1).clamp(min=1)
    n = int(confusion.sum())
    return {
        "images": n,
        "loss": loss_sum / n,
        "acc": float(confusion.diag().sum()) / n,
        "per_class_acc": dict(zip(module.classes, per_class.tolist())),
        "per_class_images": dict(zip(module.classes, confusion.sum(1).tolist())),
        "confusion": confusion.tolist(),
        "classes": list(module.classes),
    }


def confusion_png(result: dict[str, Any], title: str) -> bytes:
    """The confusion matrix, each row as a share of its true class (percent in the cells)."""
    from cifar_lab.plots import plt, png

    counts = torch.tensor(result["confusion"], dtype=torch.float64)
    shares = (counts / counts.sum(1, keepdim=True).clamp(min=1)).numpy() * 100
    classes = result["classes"]
    fig, ax = plt.subplots(figsize=(1.0 + 0.6 * len(classes), 0.8 + 0.55 * len(classes)), dpi=100)
    image = ax.imshow(shares, cmap="Blues", vmin=0, vmax=100)
    ax.set_xticks(range(len(classes)), classes, rotation=45, ha="right")
    ax.set_yticks(range(len(classes)), classes)
    ax.set_xlabel("Predicted class")
    ax.set_ylabel("True class")
    for i in range(len(classes)):
        for j in range(len(classes)):
            ax.text(j, i, f"{shares[i, j]:.0f}", ha="center", va="center", fontsize=7,
                    color="white" if shares[i, j] > 50 else "black")  # fmt: skip
    fig.colorbar(image, ax=ax, label="% of the true class")
    ax.set_title(textwrap.fill(title, 70), fontsize=9)  # a long path wraps instead of leaving the figure
    fig.tight_layout()
    return png(fig)


def print_table(result: dict[str, Any], title: str) -> None:
    from rich.console import Console
    from rich.table import Table

    print(title)
    table = Table()
    for column in ("class", "images", "accuracy %"):
        table.add_column(column, justify="left" if column == "class" else "right")
    for name in result["classes"]:
        table.add_row(name, f"{result['per_class_images'][name]:,}", f"{100 * result['per_class_acc'][name]:.2f}")
    table.add_section()
    table.add_row("all", f"{result['images']:,}", f"{100 * result['acc']:.2f}")
    Console(width=100).print(table)
    print(f"loss {result['loss']:.4f}")


IO_FIX = "Free space or fix the permissions, or write the results into another folder with --out DIR."


def main(argv: list[str] | None = None) -> int:
    filter_warnings()
    args = parse_args(argv)
    try:
        return run(args)
    except Exception as err:  # a user error (exit 2) or a full or read-only disk (exit 4): one paragraph
        return tool_exit(err, IO_FIX)


def run(args: argparse.Namespace) -> int:
    from cifar_lab import inference
    from cifar_lab.build import build_data
    from cifar_lab.console import quiet_lightning
    from cifar_lab.plan import SpeedPlan
    from cifar_lab.rundir import refuse_links
    from cifar_lab.schema import validate

    quiet_lightning()
    device = inference.device_for(args.device)
    ckpt = inference.find_checkpoint(args.path)
    if args.out is None:  # into the run directory: none of its folders may lead elsewhere
        refuse_links(inference.run_dir_of(ckpt))
    out = writable_folder(args.out or inference.run_dir_of(ckpt) / "eval")  # before the work, not after it
    module, identity, epoch = inference.load(ckpt, device)
    cfg = inference.data_config(identity, args.overrides)
    validate(cfg)
    datamodule = build_data(cfg, SpeedPlan(device=str(device)))
    datamodule.prepare_data()
    datamodule.setup("test")
    if datamodule.classes != module.classes:
        raise UserError(
            f"the data's classes {datamodule.classes} are not the model's {module.classes}: the model can only "
            "be evaluated on data with the classes it was trained on (same names, same order)."
        )
    result = evaluate(module, datamodule, device)
    data = datamodule.describe()
    synthetic = " [SYNTHETIC DATA]" if data["synthetic"] else ""
    result.update(checkpoint=str(ckpt), epoch=epoch, data={k: data[k] for k in ("source", "root", "synthetic")},
                  device=str(device), evaluated=time.strftime("%Y-%m-%dT%H:%M:%S"))  # fmt: skip
    stem = f"{ckpt.stem}-{data['source']}"
    if args.overrides:  # other data than the run's: its own file
        stem += "-" + hashlib.sha1(" ".join(args.overrides).encode()).hexdigest()[:8]
        result["overrides"] = args.overrides
    title = f"{ckpt} (epoch {result['epoch']}), {data['source']} test split{synthetic}"
    write_json_atomic(out / f"{stem}.json", result)
    write_bytes_atomic(out / f"{stem}-confusion.png", confusion_png(result, title))
    print_table(result, title)
    print(f"written: {out / f'{stem}.json'}\n         {out / f'{stem}-confusion.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
