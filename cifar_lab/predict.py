"""``python -m cifar_lab.predict <run dir or .ckpt> <images or folders>...``: a CSV of predictions.

One row per image: the file, the predicted class and the probability of each class. Images are read
as training reads them (8-bit RGB, 32x32; ``--resize`` for other sizes) and normalised the same way.
"""

from __future__ import annotations

import argparse
import csv
import io
import logging
import os
import sys
from pathlib import Path

import numpy as np
import torch

from cifar_lab.console import filter_warnings
from cifar_lab.errors import UserError, tool_exit
from cifar_lab.files import writable_folder, write_bytes_atomic

log = logging.getLogger("cifar_lab")


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1 (argparse turns the error into its one-line usage message)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m cifar_lab.predict",
        description="Predict the class of images with a trained model; writes a CSV: file, predicted class, and "
        "the probability of each class.",
    )
    parser.add_argument("path", type=Path, help="a run directory (its best checkpoint is used) or a .ckpt file")
    parser.add_argument("images", nargs="+", type=Path, help="image files, or folders to search for images")
    parser.add_argument(
        "--out", type=Path, default=Path("predictions.csv"), help="the CSV (default: ./predictions.csv)"
    )
    parser.add_argument("--overwrite", action="store_true", help="replace --out if it exists (else an error)")
    parser.add_argument("--resize", action="store_true", help="resize images that are not 32x32 (else an error)")
    parser.add_argument("--batch-size", type=positive_int, default=256, help="images per forward pass")
    parser.add_argument("--device", default="auto", help="auto (a GPU if there is one), cpu or cuda")
    return parser.parse_args(argv)


def image_files(paths: list[Path]) -> list[Path]:
    """The files given, and the image files under the folders given (listed as training lists a class folder:
    sub-folders too, hidden files skipped), each once."""
    from cifar_lab.data.sources import IMAGE_SUFFIXES, list_images

    found: list[Path] = []
    for path in paths:
        if path.is_dir():
            found += list_images(path)
        elif path.is_file():
            found.append(path)
        else:
            raise UserError(f"{path} does not exist. Give image files or folders of images.")
    if not found:
        raise UserError(f"no image files ({', '.join(sorted(IMAGE_SUFFIXES))}) under {', '.join(map(str, paths))}.")
    return list(dict.fromkeys(found))


def output_file(out: Path, overwrite: bool = False) -> Path:
    """``--out``, checked before any work: its folder is created and must be writable, it is no folder, and it
    is no file already there unless ``overwrite`` (earlier predictions are not replaced silently)."""
    out = Path(os.path.abspath(out))  # `sub/../x.csv` is x.csv, whether or not sub exists yet
    if out.is_dir():
        raise UserError(f"--out {out} is a folder; give the CSV's file name, e.g. --out {out / 'predictions.csv'}.")
    if out.exists() and not overwrite:
        raise UserError(
            f"{out} already exists (earlier predictions?) and is left as it is. Write elsewhere with --out FILE, "
            "or replace it with --overwrite."
        )
    writable_folder(out.parent)
    return out


@torch.no_grad()
def predict(module, files: list[Path], resize: bool, batch_size: int, device: torch.device) -> torch.Tensor:
    """Class probabilities (N, classes), in the order of ``files``."""
    from cifar_lab.data.sources import decode_image
    from cifar_lab.data.transforms import DeviceTransform

    transform = DeviceTransform()
    out = []
    for start in range(0, len(files), batch_size):
        batch = np.stack([decode_image(f, resize, "--resize") for f in files[start : start + batch_size]])
        x = torch.from_numpy(batch).permute(0, 3, 1, 2).contiguous().to(device)
        out.append(module(transform(x)).softmax(1).cpu())
    return torch.cat(out)


IO_FIX = "Free space or fix the permissions, or write the CSV elsewhere with --out FILE."


def main(argv: list[str] | None = None) -> int:
    filter_warnings()
    args = parse_args(argv)
    try:
        return run(args)
    except Exception as err:  # a user error (exit 2) or a full or read-only disk (exit 4): one paragraph
        return tool_exit(err, IO_FIX)


def run(args: argparse.Namespace) -> int:
    from cifar_lab import inference

    out = output_file(args.out, args.overwrite)  # a missing folder is made, a read-only one refused, before the work
    device = inference.device_for(args.device)
    module, _, _ = inference.load(inference.find_checkpoint(args.path), device)
    if module.hparams["net"].get("bn_eval") == "batch":
        log.warning(
            "this model normalises with each batch's own BatchNorm statistics (model.bn_eval=batch), so a "
            "prediction depends on which images share its batch (--batch-size %d); one image alone is "
            "normalised by its own statistics.",
            args.batch_size,
        )
    files = image_files(args.images)
    probs = predict(module, files, args.resize, args.batch_size, device)
    text = io.StringIO()
    writer = csv.writer(text)
    writer.writerow(["file", "predicted", *(f"p_{c}" for c in module.classes)])
    for f, p in zip(files, probs):
        writer.writerow([str(f), module.classes[int(p.argmax())], *(f"{v:.6f}" for v in p.tolist())])
    write_bytes_atomic(out, text.getvalue().encode())
    counts = {c: int((probs.argmax(1) == i).sum()) for i, c in enumerate(module.classes)}
    print(f"{len(files):,} images -> {out}")
    print("predicted: " + ", ".join(f"{c} {n}" for c, n in counts.items() if n))
    return 0


if __name__ == "__main__":
    sys.exit(main())
