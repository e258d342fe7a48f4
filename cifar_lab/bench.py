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
from pathlib import Path
from typing import Any, Callable

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf, open_dict

from cifar_lab.errors import EXIT_USER_ERROR, UserError, print_user_error
from cifar_lab.train import CONF_DIR


def sync(device) -> None:
    import torch

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


def plain_loop(module, device, batches: Callable[[str, int], Any], prepare: Callable[[Any], Any]) -> Callable[[int], None]:
    """One epoch of the seed's hand-written loop: SGD steps over 'train' batches, then an eval pass over 'val'."""
    import torch

    net = module.net.to(device)
    opt = module.configure_optimizers()

    def epoch(e: int) -> None:
        net.train()
        for batch in batches("train", e):
            x, y = prepare(batch)
            opt.zero_grad()
            objective, _ = module.loss_fn(net(x), y)
            objective.backward()
            opt.step()
        net.eval()
        with torch.no_grad():
            for batch in batches("val", e):
                x, y = prepare(batch)
                module.loss_fn(net(x), y)
        net.train()

    return epoch


def seed_style(cfg: DictConfig, datamodule, module, device) -> Callable[[int], None]:
    """The seed's pipeline: per-image PIL + torchvision transforms in DataLoader workers."""
    from PIL import Image
    from torch.utils.data import DataLoader, Dataset
    from torchvision import transforms

    from cifar_lab.data import CIFAR_MEAN, CIFAR_STD
    from cifar_lab.data.datamodule import available_cpus

    tf = transforms.Compose([transforms.ToTensor(), transforms.Normalize(CIFAR_MEAN, CIFAR_STD)])

    class PILDataset(Dataset):
        def __init__(self, x, y) -> None:
            self.x, self.y = x, y

        def __len__(self) -> int:
            return len(self.y)

        def __getitem__(self, i: int):
            return tf(Image.fromarray(self.x[i])), int(self.y[i])

    cpus = available_cpus()
    loaders = {}
    for split, shuffle, workers in (("train", True, cfg.bench.seed_style_workers[0]), ("val", False, cfg.bench.seed_style_workers[1])):
        x, y = datamodule.tensors[split]
        w = min(workers, cpus)
        loaders[split] = DataLoader(PILDataset(x.permute(0, 2, 3, 1).numpy(), y.numpy()), batch_size=cfg.data.batch_size,
                                    shuffle=shuffle, num_workers=w, pin_memory=device.type == "cuda",
                                    persistent_workers=w > 0)
    prepare = lambda b: (b[0].to(device, non_blocking=True), b[1].to(device, non_blocking=True))  # noqa: E731
    return plain_loop(module, device, lambda split, e: loaders[split], prepare)


def raw(cfg: DictConfig, datamodule, module, device) -> Callable[[int], None]:
    """The fast path's steps with no framework: the same device-resident data and sampler, the same
    StepEngine (K steps per call; a CUDA graph on CUDA), precision and memory format, in a plain loop.
    ``fast`` against ``raw`` is then what Lightning costs."""
    import contextlib

    import torch

    from cifar_lab.data.datamodule import EpochBatchSampler, LazyBatches, ResidentLoader, normalize
    from cifar_lab.fast import StepEngine, resolve

    _, options = resolve(OmegaConf.to_container(cfg.speed), "gpu", device, 1, str(cfg.trainer.precision))
    net = module.net.to(device)
    fmt = torch.channels_last if cfg.speed.channels_last else torch.contiguous_format
    if cfg.speed.channels_last:
        net.to(memory_format=torch.channels_last)
    mean, std = datamodule.mean.to(device), datamodule.std.to(device)
    prepare = lambda b: normalize(b, mean, std).contiguous(memory_format=fmt)  # noqa: E731
    loaders = {}
    for split, shuffle in (("train", True), ("val", False)):
        x, y = datamodule.tensors[split]
        sampler = EpochBatchSampler(len(y), cfg.data.batch_size, shuffle, cfg.seed)
        loaders[split] = ResidentLoader(x, y, sampler, device, options.steps_per_call if shuffle else None)
    engine = StepEngine(net, module.configure_optimizers(), module.loss_fn, options)
    autocast = ((lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if options.autocast_dtype
                else contextlib.nullcontext)

    def epoch(e: int) -> None:
        net.train()
        loaders["train"].sampler.set_epoch(e)
        for xs, ys in loaders["train"]:
            with autocast():
                engine.run(LazyBatches(xs, prepare), ys)
        net.eval()
        with torch.no_grad(), autocast():
            for x, y in loaders["val"]:
                module.loss_fn(net(prepare(x)), y)
        net.train()

    return epoch


PIPELINES = ("seed_style", "classic", "fast", "raw")


def lightning_pipeline(cfg: DictConfig, loader: str) -> tuple[float, int]:
    """cifar_lab's own Trainer path, as ``python -m cifar_lab`` builds it, minus logging/checkpoints."""
    import lightning as L

    from cifar_lab.train import build_parts, instantiate, setup_speed

    with open_dict(cfg):
        cfg.data.loader = loader
    datamodule, module = build_parts(cfg)
    n = cfg.bench.warmup_epochs + cfg.bench.epochs
    marks: list[float] = []

    class EpochClock(L.Callback):
        def on_train_epoch_start(self, trainer, pl_module) -> None:
            sync(trainer.strategy.root_device)
            marks.append(time.perf_counter())

        def on_train_end(self, trainer, pl_module) -> None:
            sync(trainer.strategy.root_device)
            marks.append(time.perf_counter())

    trainer = instantiate(cfg.trainer, max_epochs=n, logger=False, enable_checkpointing=False,
                          enable_progress_bar=False, enable_model_summary=False, callbacks=[EpochClock()])
    setup_speed(cfg, trainer, datamodule, module)
    trainer.fit(module, datamodule=datamodule)
    timed = marks[cfg.bench.warmup_epochs:]
    n_images = len(datamodule.tensors["train"][1]) + len(datamodule.tensors["val"][1])
    return (timed[-1] - timed[0]) / cfg.bench.epochs, n_images


def run_bench(cfg: DictConfig) -> list[dict[str, Any]]:
    """Time every requested pipeline; one row each."""
    import torch

    from cifar_lab.recording import device_name
    from cifar_lab.train import build_parts

    unknown = set(cfg.bench.pipelines) - set(PIPELINES)
    if unknown:
        raise UserError(f"unknown bench pipeline(s) {sorted(unknown)}; valid: {', '.join(PIPELINES)}.")
    on_gpu = torch.cuda.is_available() and cfg.trainer.accelerator != "cpu"
    device = torch.device("cuda" if on_gpu else "cpu")
    with open_dict(cfg):
        if cfg.data.source == "synthetic":
            cfg.data.n_train = cfg.data.n_train or (50_000 if on_gpu else 5_000)
            cfg.data.n_test = cfg.data.n_test or (10_000 if on_gpu else 1_000)
    rows = []
    for name in cfg.bench.pipelines:
        if name in ("classic", "fast"):
            seconds, n_images = lightning_pipeline(copy.deepcopy(cfg), "classic" if name == "classic" else "gpu")
        else:
            datamodule, module = build_parts(cfg)
            epoch = (seed_style if name == "seed_style" else raw)(cfg, datamodule, module, device)
            seconds = timed_epochs(epoch, cfg.bench.warmup_epochs, cfg.bench.epochs, device)
            n_images = len(datamodule.tensors["train"][1]) + len(datamodule.tensors["val"][1])
        rows.append({
            "pipeline": name, "s_per_epoch": round(seconds, 4), "images_per_s": round(n_images / seconds, 1),
            "device": device_name(device), "batch_size": cfg.data.batch_size, "experiment": cfg.name,
            "precision": "32-true" if name == "seed_style" else str(cfg.trainer.precision),  # the seed ran fp32
            "images_per_epoch": n_images, "data": cfg.data.source,
            "synthetic": cfg.data.source == "synthetic",
        })
        print(f"  {name}: {seconds:.4f} s/epoch", flush=True)
    return rows


def print_table(rows: list[dict[str, Any]]) -> None:
    from rich.console import Console
    from rich.table import Table

    base = {r["pipeline"]: r["s_per_epoch"] for r in rows}
    first = rows[0]
    title = (f"{first['experiment']}, batch {first['batch_size']}, {first['images_per_epoch']:,} "
             f"images/epoch (train + val), {first['device']}" + (", SYNTHETIC data" if first["synthetic"] else ""))
    table = Table(title=title)
    for col in ("pipeline", "precision", "s/epoch", "images/s", "speed-up over seed_style", "time / raw"):
        table.add_column(col, justify="left" if col in ("pipeline", "precision") else "right")
    for r in rows:
        s = r["s_per_epoch"]
        speedup = f"{base['seed_style'] / s:.2f}x" if "seed_style" in base else "-"
        vs_raw = f"{s / base['raw']:.2f}" if "raw" in base else "-"
        table.add_row(r["pipeline"], r["precision"], f"{s:.4f}", f"{r['images_per_s']:,.0f}", speedup, vs_raw)
    Console(width=120).print(table)  # wide enough that headers never wrap in logs


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="bench")
def bench_main(cfg: DictConfig) -> None:
    out_dir = Path(HydraConfig.get().runtime.output_dir)
    try:
        rows = run_bench(cfg)
    except UserError as err:
        print_user_error(err)
        raise SystemExit(EXIT_USER_ERROR) from None
    (out_dir / "bench.json").write_text(json.dumps(rows, indent=2) + "\n")
    print_table(rows)
    print(f"bench.json: {out_dir / 'bench.json'}")


if __name__ == "__main__":
    bench_main()
