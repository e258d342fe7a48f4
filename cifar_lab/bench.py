"""``python -m cifar_lab.bench experiment=p1a [overrides]``: seconds per epoch, side by side.

Four pipelines train the same model on the same arrays in one process, each for warm-up
epochs and then timed epochs (a training epoch plus a validation pass):

- ``seed_style``: the seed's loader: PIL image + ToTensor + Normalize per image, a DataLoader with
  workers, pin_memory and persistent_workers, and a plain PyTorch loop;
- ``classic``: cifar_lab through Lightning with its DataLoader path (``data.loader=classic``);
- ``fast``: cifar_lab through Lightning with the fast path (``data.loader=gpu`` + ``speed``);
- ``raw``: a plain PyTorch loop over the same device-resident data, no Lightning.

The bench data is the configured source (synthetic by default, so it runs anywhere); only
its size matters for timing.
"""

from __future__ import annotations

import copy
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import hydra
import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf, open_dict

from cifar_lab.build import build, build_data, build_module, capturable, seed_and_backends
from cifar_lab.configs import CONF_DIR
from cifar_lab.console import filter_warnings
from cifar_lab.errors import EXIT_USER_ERROR, UserError, print_user_error
from cifar_lab.fast import StepEngine
from cifar_lab.files import write_bytes_atomic
from cifar_lab.plan import SpeedPlan, resolve_plan
from cifar_lab.schema import validate


def sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed_epochs(run_epoch: Callable[[int], None], warmup: int, epochs: int, device) -> float:
    """Mean seconds of ``epochs`` calls of ``run_epoch`` after ``warmup`` untimed ones."""
    for e in range(warmup):
        run_epoch(e)
    sync(device)
    t0 = time.perf_counter()
    for e in range(warmup, warmup + epochs):
        run_epoch(e)
    sync(device)
    return (time.perf_counter() - t0) / epochs


def prepared_data(cfg: DictConfig, plan: SpeedPlan):
    """The datamodule of ``cfg`` for ``plan``, its data loaded (the bench runs in one process)."""
    datamodule = build_data(cfg, plan)
    datamodule.prepare_data()
    datamodule.setup("fit")
    return datamodule


Epoch = Callable[[int], None]


def seed_style(cfg: DictConfig, device) -> tuple[Epoch, int]:
    """The seed's pipeline: per-image PIL + torchvision transforms in DataLoader workers."""
    from PIL import Image
    from torch.utils.data import DataLoader, Dataset
    from torchvision import transforms

    from cifar_lab.data import CIFAR_MEAN, CIFAR_STD
    from cifar_lab.data.loaders import available_cpus

    tf = transforms.Compose([transforms.ToTensor(), transforms.Normalize(CIFAR_MEAN, CIFAR_STD)])

    class PILDataset(Dataset):
        def __init__(self, x, y) -> None:
            self.x, self.y = x, y

        def __len__(self) -> int:
            return len(self.y)

        def __getitem__(self, i: int):
            return tf(Image.fromarray(self.x[i])), int(self.y[i])

    plan = SpeedPlan(device=str(device))  # the seed's own loop: fp32, eager, its own DataLoader
    datamodule = prepared_data(cfg, plan)
    module = build_module(cfg, datamodule.classes, plan)
    cpus = available_cpus()
    loaders = {}
    for split, shuffle, workers in (
        ("train", True, cfg.bench.seed_style_workers[0]),
        ("val", False, cfg.bench.seed_style_workers[1]),
    ):
        x, y = datamodule.tensors[split]
        w = min(workers, cpus)
        loaders[split] = DataLoader(
            PILDataset(x.permute(0, 2, 3, 1).numpy(), y.numpy()),
            batch_size=cfg.data.batch_size,
            shuffle=shuffle,
            num_workers=w,
            pin_memory=device.type == "cuda",
            persistent_workers=w > 0,
        )
    net = module.net.to(device)
    opt = module.configure_optimizers()

    def epoch(e: int) -> None:
        net.train()
        for x, y in loaders["train"]:
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            opt.zero_grad()
            objective, _ = module.loss_fn(net(x), y)
            objective.backward()
            opt.step()
        net.eval()
        with torch.no_grad():
            for x, y in loaders["val"]:
                module.loss_fn(net(x.to(device, non_blocking=True)), y.to(device, non_blocking=True))
        net.train()

    return epoch, images_per_epoch(datamodule)


def raw(cfg: DictConfig, device) -> tuple[Epoch, int]:
    """The fast path's own public pieces with no framework: its plan, datamodule (resident loader,
    device transform), module and StepEngine (K steps per call; a CUDA graph on CUDA), in a plain
    loop. ``fast`` against ``raw`` is then what Lightning costs."""
    import contextlib

    plan = resolve_plan(
        OmegaConf.to_container(cfg.speed), "gpu", device, 1, str(cfg.trainer.precision), capturable(cfg)
    )
    datamodule = prepared_data(cfg, plan)
    module = build_module(cfg, datamodule.classes, plan).to(device)
    engine = StepEngine(module, module.configure_optimizers(), module.loss_fn, plan)
    train, val = datamodule.train_dataloader(), datamodule.val_dataloader()
    # cache_enabled=False: a cached cast would outlive the optimizer step that changes the weights.
    autocast = (
        (lambda: torch.autocast(device.type, dtype=plan.autocast_dtype, cache_enabled=False))
        if plan.autocast_dtype
        else contextlib.nullcontext
    )

    def epoch(e: int) -> None:
        module.train()
        train.sampler.set_epoch(e)
        for chunk in train:
            xs, ys = datamodule.on_after_batch_transfer(chunk, 0)
            with autocast():
                engine.run(xs, ys)
        module.eval()
        with torch.no_grad(), autocast():
            for chunk in val:
                for x, y in module.batches(datamodule.on_after_batch_transfer(chunk, 0)):
                    module.loss_fn(module(x), y)
        module.train()

    return epoch, images_per_epoch(datamodule)


def lightning_pipeline(cfg: DictConfig, loader: str) -> tuple[float, int]:
    """cifar_lab's own Trainer path, as ``python -m cifar_lab`` builds it, minus logging/checkpoints."""
    with open_dict(cfg):
        cfg.data.loader = loader
    seconds, parts = timed_fit(cfg, lambda **extras: build(cfg, **extras))
    return seconds, images_per_epoch(parts.datamodule)


def timed_fit(cfg: DictConfig, make: Callable[..., Any]) -> tuple[float, Any]:
    """``make(**trainer overrides)`` builds the parts (trainer, module, datamodule); fit warm-up and timed
    epochs. Returns the mean seconds of a timed epoch, and the parts."""
    import lightning as L

    marks: list[float] = []

    class EpochClock(L.Callback):
        def on_train_epoch_start(self, trainer, pl_module) -> None:
            sync(trainer.strategy.root_device)
            marks.append(time.perf_counter())

        def on_train_end(self, trainer, pl_module) -> None:
            sync(trainer.strategy.root_device)
            marks.append(time.perf_counter())

    parts = make(
        max_epochs=cfg.bench.warmup_epochs + cfg.bench.epochs,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[EpochClock()],
    )
    parts.trainer.fit(parts.module, datamodule=parts.datamodule)
    timed = marks[cfg.bench.warmup_epochs :]
    return (timed[-1] - timed[0]) / cfg.bench.epochs, parts


def images_per_epoch(datamodule) -> int:
    return len(datamodule.tensors["train"][1]) + len(datamodule.tensors["val"][1])


def run_bench(cfg: DictConfig) -> list[dict[str, Any]]:
    """Time every requested pipeline; one row each."""
    from cifar_lab.recording import device_name

    on_gpu = torch.cuda.is_available() and cfg.trainer.accelerator != "cpu"
    device = torch.device("cuda" if on_gpu else "cpu")
    with open_dict(cfg):
        if cfg.data.source == "synthetic":
            cfg.data.n_train = cfg.data.n_train or (50_000 if on_gpu else 5_000)
            cfg.data.n_test = cfg.data.n_test or (10_000 if on_gpu else 1_000)
    validate(cfg)
    rows = []
    for name in cfg.bench.pipelines:
        seed_and_backends(cfg)
        if name in ("classic", "fast"):
            seconds, n_images = lightning_pipeline(copy.deepcopy(cfg), "classic" if name == "classic" else "gpu")
        else:
            epoch, n_images = (seed_style if name == "seed_style" else raw)(cfg, device)
            seconds = timed_epochs(epoch, cfg.bench.warmup_epochs, cfg.bench.epochs, device)
        rows.append(
            {
                "pipeline": name,
                "s_per_epoch": round(seconds, 4),
                "images_per_s": round(n_images / seconds, 1),
                "device": device_name(device),
                "batch_size": cfg.data.batch_size,
                "experiment": cfg.name,
                "precision": "32-true" if name == "seed_style" else str(cfg.trainer.precision),  # the seed ran fp32
                "images_per_epoch": n_images,
                "data": cfg.data.source,
                "synthetic": cfg.data.source == "synthetic",
            }
        )
        print(f"  {name}: {seconds:.4f} s/epoch", flush=True)
    if cfg.bench.pack:
        from cifar_lab.packing.throughput import packed_rows

        rows += packed_rows(cfg, device)
    return rows


def print_table(rows: list[dict[str, Any]]) -> None:
    from rich.console import Console
    from rich.table import Table

    packed = [r for r in rows if "pack" in r]  # bench.pack: their own table, after this one
    rows = [r for r in rows if "pack" not in r]
    base = {r["pipeline"]: r["s_per_epoch"] for r in rows}
    first = rows[0]
    title = (
        f"{first['experiment']}, batch {first['batch_size']}, {first['images_per_epoch']:,} "
        f"images/epoch (train + val), {first['device']}" + (", SYNTHETIC data" if first["synthetic"] else "")
    )
    table = Table(title=title)
    for col in ("pipeline", "precision", "s/epoch", "images/s", "speed-up over seed_style", "time / raw"):
        table.add_column(col, justify="left" if col in ("pipeline", "precision") else "right")
    for r in rows:
        s = r["s_per_epoch"]
        speedup = f"{base['seed_style'] / s:.2f}x" if "seed_style" in base else "-"
        vs_raw = f"{s / base['raw']:.2f}" if "raw" in base else "-"
        table.add_row(r["pipeline"], r["precision"], f"{s:.4f}", f"{r['images_per_s']:,.0f}", speedup, vs_raw)
    Console(width=120).print(table)  # wide enough that headers never wrap in logs
    if packed:
        from cifar_lab.packing.throughput import print_packed

        print_packed(packed)


filter_warnings()  # as train.py: only warnings a user can act on


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="bench")
def bench_main(cfg: DictConfig) -> None:
    out_dir = Path(HydraConfig.get().runtime.output_dir)
    try:
        rows = run_bench(cfg)
    except UserError as err:
        print_user_error(err)
        raise SystemExit(EXIT_USER_ERROR) from None
    write_bytes_atomic(out_dir / "bench.json", (json.dumps(rows, indent=2) + "\n").encode())
    print_table(rows)
    print(f"bench.json: {out_dir / 'bench.json'}")


if __name__ == "__main__":
    bench_main()
