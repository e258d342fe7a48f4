"""``python -m cifar_lab.bench experiment=p1a [overrides]``: the bench, one table of pipelines (:data:`PIPELINES`).

Each pipeline trains the same model on the same arrays in this process, for warm-up epochs and
then timed epochs (a training epoch plus a validation pass), and gives its rows:

- ``seed_style``: the seed's loader: PIL image + ToTensor + Normalize per image, a DataLoader with
  workers, pin_memory and persistent_workers, and a plain PyTorch loop;
- ``classic``: cifar_lab through Lightning with its DataLoader path (``data.loader=classic``);
- ``fast``: cifar_lab through Lightning with the fast path (``data.loader=gpu`` + ``speed``);
- ``raw``: a plain PyTorch loop over the same device-resident data, no Lightning;
- ``packed`` (added by ``bench.pack=N``): N runs (seeds seed..seed+N-1) one after another through
  Lightning on the fast path, then the same N as one pack: runs·epochs per second both ways;
- ``steps``: the packed numerical core's micro-bench, no Lightning and no data loading: N solo
  optimizer steps one after another against one packed step (member or grouped convolutions, with
  and without isolation), member-steps per second, the fastest of ``bench.epochs`` steps.

The bench data is the configured source (synthetic by default, so it runs anywhere); only
its size matters for timing. The clocks are in :mod:`cifar_lab.timing`.
"""

from __future__ import annotations

import copy
import json
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
from cifar_lab.distributed import placement
from cifar_lab.errors import EXIT_USER_ERROR, UserError, print_user_error
from cifar_lab.fast import StepEngine
from cifar_lab.files import write_bytes_atomic
from cifar_lab.plan import SpeedPlan, resolve_plan
from cifar_lab.schema import validate
from cifar_lab.timing import fastest, images_per_epoch, timed_epochs, timed_fit

Epoch = Callable[[int], None]
Row = dict[str, Any]


def prepared_data(cfg: DictConfig, plan: SpeedPlan):
    """The datamodule of ``cfg`` for ``plan``, its data loaded (the bench runs in one process)."""
    datamodule = build_data(cfg, plan)
    datamodule.prepare_data()
    datamodule.setup("fit")
    return datamodule


def seed_style(cfg: DictConfig, device: torch.device) -> tuple[Epoch, int]:
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


def raw(cfg: DictConfig, device: torch.device) -> tuple[Epoch, int]:
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


def lightning_pipeline(cfg: DictConfig, loader: str) -> tuple[float, Any]:
    """cifar_lab's own Trainer path, as ``python -m cifar_lab`` builds it, minus logging/checkpoints."""
    with open_dict(cfg):
        cfg.data.loader = loader
    return timed_fit(cfg, lambda **extras: build(cfg, **extras))


def common(cfg: DictConfig, device: torch.device) -> Row:
    from cifar_lab.recording import device_name

    return {"device": device_name(device), "batch_size": cfg.data.batch_size, "experiment": cfg.name,
            "precision": str(cfg.trainer.precision), "data": cfg.data.source,
            "synthetic": cfg.data.source == "synthetic"}  # fmt: skip


def epoch_row(cfg: DictConfig, device: torch.device, name: str) -> list[Row]:
    """One row of the main table: seconds per epoch of pipeline ``name``."""
    if name in ("classic", "fast"):
        seconds, parts = lightning_pipeline(copy.deepcopy(cfg), "classic" if name == "classic" else "gpu")
        n_images = images_per_epoch(parts.datamodule)
    else:
        epoch, n_images = (seed_style if name == "seed_style" else raw)(cfg, device)
        seconds = timed_epochs(epoch, cfg.bench.warmup_epochs, cfg.bench.epochs, device)
    print(f"  {name}: {seconds:.4f} s/epoch", flush=True)
    row = {"pipeline": name, "s_per_epoch": round(seconds, 4), "images_per_s": round(n_images / seconds, 1),
           "images_per_epoch": n_images, **common(cfg, device)}  # fmt: skip
    if name == "seed_style":
        row["precision"] = "32-true"  # the seed ran fp32
    return [row]


def members(cfg: DictConfig, n: int) -> list[DictConfig]:
    """The bench's config N times, with seeds seed .. seed+N-1, on the fast path."""
    out = []
    for k in range(n):
        member = copy.deepcopy(cfg)
        with open_dict(member):
            member.seed, member.data.loader = int(cfg.seed) + k, "gpu"
        out.append(member)
    return out


def packed(cfg: DictConfig, device: torch.device) -> list[Row]:
    """``sequential xN`` and ``packed xN``: the N runs one after another, then as one pack (``bench.pack=N``);
    ``s_per_epoch`` is one epoch of all N runs; ``member_steps`` the optimizer steps the pack's members took."""
    from cifar_lab.configs import flatten
    from cifar_lab.packing.build import build_pack
    from cifar_lab.packing.grouping import unpackable

    n = int(cfg.bench.pack)
    if n < 1:
        raise UserError("bench.pipelines names packed: set bench.pack=N (N >= 1), the runs to pack.")
    reason = unpackable(flatten(OmegaConf.to_container(cfg, resolve=True)), {})
    if reason is not None:  # the launcher would run these one by one; a packed row would time something else
        raise UserError(f"bench.pack={n}: these settings do not pack ({reason}). Time a packable configuration.")
    runs, sequential, steps = members(cfg, n), 0.0, {"sequential": 0, "packed": 0}
    for member in runs:
        seconds, parts = lightning_pipeline(copy.deepcopy(member), "gpu")
        sequential, steps["sequential"] = sequential + seconds, steps["sequential"] + parts.trainer.global_step
    n_images = images_per_epoch(parts.datamodule)
    print(f"  sequential x{n}: {sequential:.4f} s/epoch (all {n} runs)", flush=True)
    pack_seconds, parts = timed_fit(cfg, lambda **extras: build_pack(runs, **extras))
    print(f"  packed x{n}: {pack_seconds:.4f} s/epoch (all {n} runs)", flush=True)
    steps["packed"] = parts.module.net.n * parts.trainer.global_step  # optimizer steps, counted by Lightning
    return [
        {"pipeline": f"{name} x{n}", "pack": n, "s_per_epoch": round(s, 4), "images_per_s": round(n * n_images / s, 1),
         "runs_epochs_per_s": round(n / s, 4), "vs_sequential": round(sequential / s, 3), "member_steps": steps[name],
         "images_per_epoch": n_images, **common(cfg, device)}
        for name, s in (("sequential", sequential), ("packed", pack_seconds))
    ]  # fmt: skip


def steps(cfg: DictConfig, device: torch.device) -> list[Row]:
    """The micro-bench: member-steps per second of N = ``bench.pack`` (5 if 0) members of the experiment's model,
    random float32 batches, SGD momentum 0.9: solo steps one after another against packed steps."""
    from cifar_lab.packing.loss import PackedLoss
    from cifar_lab.packing.stack import PackedNet
    from cifar_lab.packing.step import PackedStepEngine, member_param_groups

    n, batch, plan = int(cfg.bench.pack) or 5, int(cfg.data.batch_size), SpeedPlan(device=str(device))
    nets = []
    for member in members(cfg, n):
        seed_and_backends(member)
        nets.append(build_module(member, [str(c) for c in range(10)], plan).net.to(device).float())
    x, y = torch.randn(n, batch, 3, 32, 32, device=device), torch.randint(0, 10, (n, batch), device=device)

    def solo() -> Callable[[], None]:
        def loss(logits: torch.Tensor, t: torch.Tensor):
            return (torch.nn.functional.cross_entropy(logits, t),) * 2

        engines = [StepEngine(m, torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.9), loss, plan)
                   for m in copy.deepcopy(nets)]  # fmt: skip
        return lambda: [e.step(x[k], y[k]) for k, e in enumerate(engines)] and None

    def pack(isolate: bool, conv: str = "member") -> Callable[[], None]:
        net = PackedNet(nets, conv=conv).to(device).train()
        opt = torch.optim.SGD(member_param_groups(net, lr=[0.01] * n, momentum=[0.9] * n))
        engine = PackedStepEngine(net, opt, PackedLoss([0.0] * n), isolate=isolate)
        return lambda: engine.step(x, y) and None

    timings = {"solo": solo(), "member": pack(True), "grouped": pack(True, "grouped"), "bare": pack(False)}
    rate = {k: round(n / fastest(f, max(cfg.bench.warmup_epochs, 1), cfg.bench.epochs, device), 2)
            for k, f in timings.items()}  # fmt: skip
    print(f"  steps: {rate} member-steps/s", flush=True)
    return [{"pipeline": "steps", "pack": n, **{f"{k}_member_steps_per_s": v for k, v in rate.items()},
             **common(cfg, device), "precision": "32-true"}]  # fmt: skip


# The bench's pipelines, in the order of bench.pipelines (bench.pack=N adds ``packed`` unless it names packed or
# steps): name -> rows.
PIPELINES: dict[str, Callable[[DictConfig, torch.device], list[Row]]] = {
    "seed_style": lambda cfg, device: epoch_row(cfg, device, "seed_style"),
    "classic": lambda cfg, device: epoch_row(cfg, device, "classic"),
    "fast": lambda cfg, device: epoch_row(cfg, device, "fast"),
    "raw": lambda cfg, device: epoch_row(cfg, device, "raw"),
    "packed": packed,
    "steps": steps,
}


def run_bench(cfg: DictConfig) -> list[Row]:
    """Time every requested pipeline on the one device of ``cfg.trainer``; their rows."""
    where = placement(cfg.trainer)
    if not where.one_device:
        raise UserError("the bench times one device: set trainer.devices=1 (no strategy, one node), e.g. trainer=cpu.")
    on_gpu = torch.cuda.is_available() and where.accelerator != "cpu"
    device = torch.device("cuda" if on_gpu else "cpu")
    with open_dict(cfg):
        if cfg.data.source == "synthetic":
            cfg.data.n_train = cfg.data.n_train or (50_000 if on_gpu else 5_000)
            cfg.data.n_test = cfg.data.n_test or (10_000 if on_gpu else 1_000)
    validate(cfg)
    rows, names = [], list(cfg.bench.pipelines)
    if cfg.bench.pack and not {"packed", "steps"} & set(names):  # bench.pack=N alone asks for the packed rows
        names.append("packed")
    for name in names:
        seed_and_backends(cfg)
        rows += PIPELINES[name](cfg, device)
    return rows


def print_table(rows: list[Row]) -> None:
    """The epoch pipelines' table, then the packed rows' and the micro-bench's."""
    from rich.console import Console
    from rich.table import Table

    console = Console(width=120)  # wide enough that headers never wrap in logs
    epochs = [r for r in rows if "pack" not in r]
    if epochs:
        base, first = {r["pipeline"]: r["s_per_epoch"] for r in epochs}, epochs[0]
        synthetic = ", SYNTHETIC data" if first["synthetic"] else ""
        table = Table(title=f"{first['experiment']}, batch {first['batch_size']}, {first['images_per_epoch']:,} "
                      f"images/epoch (train + val), {first['device']}{synthetic}")  # fmt: skip
        for col in ("pipeline", "precision", "s/epoch", "images/s", "speed-up over seed_style", "time / raw"):
            table.add_column(col, justify="left" if col in ("pipeline", "precision") else "right")
        for r in epochs:
            s = r["s_per_epoch"]
            speedup = f"{base['seed_style'] / s:.2f}x" if "seed_style" in base else "-"
            vs_raw = f"{s / base['raw']:.2f}" if "raw" in base else "-"
            table.add_row(r["pipeline"], r["precision"], f"{s:.4f}", f"{r['images_per_s']:,.0f}", speedup, vs_raw)
        console.print(table)
    packs = [r for r in rows if "vs_sequential" in r]
    if packs:
        first = packs[0]
        synthetic = ", SYNTHETIC data" if first["synthetic"] else ""
        table = Table(title=f"{first['experiment']} x{first['pack']} runs (seeds), fast path, "
                      f"batch {first['batch_size']}, {first['device']}{synthetic}")  # fmt: skip
        for col in ("pipeline", "s per epoch of all runs", "runs·epochs/s", "packed / sequential"):
            table.add_column(col, justify="left" if col == "pipeline" else "right")
        for r in packs:
            table.add_row(r["pipeline"], f"{r['s_per_epoch']:.4f}", f"{r['runs_epochs_per_s']:.3f}",
                          f"{r['vs_sequential']:.2f}x")  # fmt: skip
        console.print(table)
    for r in (r for r in rows if r["pipeline"] == "steps"):
        solo, member, grouped, bare = (r[f"{k}_member_steps_per_s"] for k in ("solo", "member", "grouped", "bare"))
        print(f"{r['experiment']} x{r['pack']}, batch {r['batch_size']}, {r['device']}, float32, SGD momentum 0.9, "
              "member-steps/s\n| preset | batch | solo, one after another | pack, member convs | pack, grouped convs "
              "| pack, member convs, no isolation | member / solo | grouped / solo |\n"
              "|---|---|---|---|---|---|---|---|\n"
              f"| {r['experiment']} | {r['batch_size']} | {solo:.2f} | {member:.2f} | {grouped:.2f} | {bare:.2f} "
              f"| {member / solo:.2f}x | {grouped / solo:.2f}x |")  # fmt: skip


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
